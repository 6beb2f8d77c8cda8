"""The remote-use table of ``docs/api.md`` against the CLI itself: every command is in the table, and
with ``--server`` each one does what its row says.

The server named is a closed port on loopback, so the three kinds of answer cannot be confused:
a command that goes through the server fails with ``ServiceUnavailable: server unreachable``; one
that is refused names itself and says it runs on this machine only; a client-side one succeeds
without either. Each run has its own empty home and a database file that does not exist: a
command that quietly acted on this machine would create it, and that is checked too.
"""

from __future__ import annotations

import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, CliResult
from PIL import Image

DOCS = REPO / "docs" / "api.md"
KINDS = {"server", "refused", "client-side"}

# Arguments that get each command past its own checks of its input ({tmp}: a folder with the files below).
ARGS: dict[str, list[str]] = {
    "up": [], "serve": [], "worker": [], "demo": [],
    "db upgrade": [], "db downgrade": ["base"], "db current": [],
    "users create": ["--email", "erin@example.com", "--role", "submitter", "--team", "design"], "users list": [],
    "tokens create": [], "tokens revoke": ["1"],
    "jobs list": [], "jobs show": ["1"], "jobs watch": ["1"], "jobs cancel": ["1"], "jobs retry": ["1"], "jobs logs": ["1"],
    "models list": [], "models show": ["tiny"], "models import": ["tiny", "--name", "tiny"],
    "models grant": ["tiny", "--action", "use", "--team", "design"],
    "models revoke": ["tiny", "--action", "use", "--team", "design"], "models grants": ["tiny"],
    "models access": ["tiny", "--action", "use"], "models remove": ["tiny"], "models bootstrap-demo": [],
    "models create-tiny": ["--out", "{tmp}/tiny", "--family", "sd1"], "models train-demo": ["--out", "{tmp}/demo"],
    "audit verify": [], "audit checkpoint": [], "audit export": ["--out", "{tmp}/trail.jsonl"],
    "audit evidence": ["--from", "2026-01-01", "--to", "2026-02-01", "--out", "{tmp}/pack.zip"], "audit query": [],
    "audit prove": ["1"], "audit consistency": ["1", "2"], "audit public-key": [], "audit integrate": [],
    "audit rotate-key": [], "audit erase": ["user:1"], "audit retention": [],
    "witness init": ["--name", "witness.example/w1"], "witness key": [],
    "witness serve": ["--log", "latentops.example/audit/x={tmp}/log.vkey"], "witness log-key": [],
    "policy eval": ["--path", "prompt", "--input", '{"prompt": "a cat"}'], "policy check-prompt": ["a cat"],
    "policy revision": [], "policy test": [], "policy bundle": ["--output", "{tmp}/bundle.tar.gz"], "policy reload": [],
    "policy set-data": ["prompt.max_length", "500"], "policy history": [], "policy diff": ["1"],
    "policy rollback": ["0", "--note", "back"],
    "screen": ["{tmp}/images/cat.png"], "screening status": [],
    "screening import-clip": ["--arch", "ViT-B-32", "--weights", "{tmp}/clip.pt"], "screening detector": ["nudenet"],
    "screening calibrate": ["--images", "{tmp}/images", "--labels", "{tmp}/labels.csv"],
    "copyright add": ["{tmp}/images", "--owner", "Acme", "--licence", "all rights reserved"], "copyright list": [],
    "copyright grant": ["--team", "design", "--owner", "Acme"],
    "provenance verify": ["{tmp}/images/cat.png"], "provenance use-chain": ["--chain", "{tmp}/c.pem", "--key", "{tmp}/k.pem"],
    "quarantine list": [], "quarantine release": ["1", "--reason", "fine"], "quarantine reject": ["1", "--reason", "no"],
    "finetune submit": ["--model", "tiny", "--instance-dir", "{tmp}/images", "--instance-prompt", "a sks cat",
                        "--attest-licence", "--attest-consent"],
    "finetune run": ["--model", "tiny", "--instance-dir", "{tmp}/images", "--instance-prompt", "a sks cat",
                     "--out", "{tmp}/run"],
    "finetune validate-images": ["{tmp}/images"], "finetune adapters": [], "finetune promote": ["pattern", "--version", "1"],
    "generate": ["--model", "tiny", "--prompt", "a cat", "--out", "{tmp}/generated"],
    "datasets generate": ["--spec", "{tmp}/spec.yaml", "--submit"], "datasets submit": ["--spec", "{tmp}/spec.yaml"],
    "datasets list": [], "datasets show": ["1"], "datasets package": ["1"], "datasets import-classifier": ["{tmp}/images/cat.png"],
}

# Options that only mean something on this machine: refused by commands that otherwise go to the server.
REFUSED_OPTIONS: list[tuple[list[str], str]] = [
    (["audit", "verify", "--public-key", "{tmp}/k.pem"], "--public-key"),
    (["audit", "verify", "--sink", "{tmp}/sink.jsonl"], "--sink"),
    (["audit", "checkpoint", "--key", "{tmp}/key.pem"], "--key"),
    (["audit", "export", "--out", "{tmp}/trail.jsonl", "--sink", "{tmp}/sink.jsonl"], "--sink"),
    (["audit", "public-key", "--key", "{tmp}/key.pem"], "--key"),
    (["models", "list", "--all"], "--all"),
    (["models", "import", "tiny.ckpt", "--name", "tiny", "--allow-pickle"], "--allow-pickle"),
    (["generate", "--model", "tiny", "--prompt", "a cat", "--out", "{tmp}/generated", "--as", "bob@example.com"], "--as"),
    (["datasets", "submit", "--spec", "{tmp}/spec.yaml", "--as", "bob@example.com"], "--as"),
    (["datasets", "generate", "--spec", "{tmp}/spec.yaml", "--out", "{tmp}/dataset"], "--out"),
]


def documented() -> dict[str, str]:
    """``{command: kind}`` from the table under ``## Remote CLI``."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Remote CLI"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z][a-z -]*)` \| ([a-z-]+) \|", section, flags=re.MULTILINE)
    table = dict(rows)
    assert len(table) == len(rows), "a command is listed twice"
    assert set(table.values()) <= KINDS, set(table.values()) - KINDS
    return table


def commands() -> list[str]:
    """Every command the CLI has, as ``group command``."""
    import typer

    from latentops.platform.cli.main import app

    found: list[str] = []

    def walk(command: object, prefix: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children is None:
            found.append(" ".join(prefix))
            return
        for name, child in children.items():
            walk(child, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return sorted(found)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    images = folder / "images"
    images.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "cat.png")
    (folder / "labels.csv").write_text("file,sexual\ncat.png,0\n", encoding="utf-8")
    (folder / "spec.yaml").write_text("name: cats\nmodel: tiny\nper_class: 2\nclasses:\n"
                                      "  - name: cat\n    prompts: [\"a photo of a cat\"]\n", encoding="utf-8")
    return folder


def test_every_command_is_in_the_table() -> None:
    table, cli = documented(), commands()
    assert sorted(set(cli) - set(table)) == [], "commands missing from the table in docs/api.md"
    assert sorted(set(table) - set(cli)) == [], "the table in docs/api.md lists commands the CLI does not have"
    assert sorted(ARGS) == cli


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_command_with_a_server_does_what_the_table_says(cli, workspace: Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is: nothing listens
    home = workspace / "client-home"
    home.mkdir()
    absent = home / "absent.db"
    env = {"LATENTOPS_HOME": str(home), "LATENTOPS_DATABASE_URL": f"sqlite:///{absent}",
           "LATENTOPS_SERVER": server, "LATENTOPS_TOKEN": "lat_x"}

    def run(args: list[str]) -> CliResult:
        return cli(*[a.replace("{tmp}", str(workspace)) for a in args], env=env, timeout=120)

    table = documented()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(table, pool.map(run, [[*name.split(), *ARGS[name]] for name in table]), strict=True))
        refusals = list(pool.map(run, [args for args, _ in REFUSED_OPTIONS]))

    wrong = []
    for name, kind in table.items():
        result = results[name]
        line = result.stderr.strip()
        if kind == "server":
            ok = result.returncode == 1 and line.startswith(f"ServiceUnavailable: server unreachable at {server}")
        elif kind == "refused":
            # Named by the command, or by its group where the whole group is local (``db``).
            named = [f"InvalidInput: latentops {n} runs on this machine only" for n in (name, name.split()[0])]
            ok = (result.returncode == 1 and len(line.splitlines()) == 1 and result.stdout == ""
                  and line.startswith(tuple(named)) and f"not against --server {server}" in line)
        else:
            ok = result.returncode == 0 and "ServiceUnavailable" not in line
        if not ok:
            wrong.append(f"{name} ({kind}): exit {result.returncode}: {line or result.stdout.strip()[:200]}")
    assert wrong == [], "\n".join(wrong)

    for (args, option), result in zip(REFUSED_OPTIONS, refusals, strict=True):
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.strip().startswith(f"InvalidInput: {option}: not available with --server"), (args, result.stderr)
    assert not absent.exists()  # nothing opened this machine's database
    assert sorted(p.name for p in workspace.iterdir()) == ["client-home", "images", "labels.csv", "spec.yaml"]  # nor wrote files here
