"""A home whose database was never migrated: every command says so in one line and names the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# Commands a new user runs first, each reading a different part of the schema.
COMMANDS = [("policy", "check-prompt", "a watercolour of a lighthouse"), ("models", "list"), ("audit", "verify"),
            ("jobs", "list")]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "latentops.platform.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)


@pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)
def test_commands_on_an_unmigrated_database_print_one_line_naming_db_upgrade(empty_database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_") or k.startswith("LATENTOPS_TEST_")}
    env.update(LATENTOPS_HOME=str(tmp_path / "home"), LATENTOPS_DATABASE_URL=empty_database_url, COLUMNS="200")
    for command in COMMANDS:
        done = _run(env, *command)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, (command, done.stderr)
        assert lines[0].startswith("SchemaNotMigrated: the database at ") and "run `latentops db upgrade`" in lines[0]
    assert _run(env, "db", "upgrade").returncode == 0
    done = _run(env, "policy", "check-prompt", "a watercolour of a lighthouse")
    assert done.returncode == 0 and "allow" in done.stdout.lower(), done.stdout + done.stderr
