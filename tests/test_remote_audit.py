"""``latentops --server URL --token T audit ...`` against a real API server (uvicorn on loopback).

The CLI process is pointed at a database of its own that holds nothing, so whatever it reports
can only have come from the server: the server's chain status (and damage done to the server's
database), the server's export (byte for byte what a local export of the same database writes),
the server's keys. Commands that act on this machine's database or key files refuse ``--server``
in one line and leave nothing behind.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import api_server, make_user
from conftest import POSTGRES_URL, _pg_admin, _pg_url_for
from sqlalchemy.engine import make_url
from test_audit_proofs import run_verifier
from test_audit_verify import append, checkpoint, tamper

from latentops.core.settings import Settings
from latentops.governance import checkpoints, identities, integration
from latentops.platform.database import dispose_all, session_scope
from latentops.platform.tables import AuditCheckpoint, AuditEntry


@pytest.fixture
def officer(settings_env: Settings) -> str:
    """A compliance officer's token, and a trail of 11 entries (3 of them the officer's account) under a checkpoint."""
    token = make_user(settings_env.database_url, "olga@example.com", "compliance_officer", "compliance")
    append(settings_env.database_url, 8)
    checkpoint(settings_env)
    return token


@pytest.fixture
def elsewhere(tmp_path: Path) -> dict[str, str]:
    """The CLI's own configuration for remote runs: an empty home and a database that does not exist."""
    home = tmp_path / "client-home"
    home.mkdir()
    return {"LATENTOPS_HOME": str(home), "LATENTOPS_DATABASE_URL": f"sqlite:///{home / 'absent.db'}",
            "LATENTOPS_AUDIT_SIGNING_KEY": str(home / "keys" / "audit-signing.pem"),
            "LATENTOPS_AUDIT_SINK": str(home / "sink.jsonl")}


@pytest.fixture
def database_copy(settings_env: Settings, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Takes a copy of the test's database as it is now (SQLite: the file; PostgreSQL: a template copy)."""
    made: list[str] = []

    def take() -> str:
        dispose_all()  # no open connections: PostgreSQL copies only an idle database
        parsed = make_url(settings_env.database_url)
        if parsed.get_backend_name() == "sqlite":
            assert parsed.database is not None
            target = tmp_path / f"copy-{len(made)}.db"
            shutil.copy(parsed.database, target)
            made.append("")
            return f"sqlite:///{target}"
        name = f"{parsed.database}_c{len(made)}"
        with _pg_admin(POSTGRES_URL) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"')
        made.append(name)
        return _pg_url_for(POSTGRES_URL, name)

    yield take
    dispose_all()
    for name in filter(None, made):
        with _pg_admin(POSTGRES_URL) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def last_entry(database_url: str) -> tuple[str, str]:
    with session_scope(database_url) as db:
        integration.catch_up(db)
    with session_scope(database_url) as db:
        row = db.execute(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        # People are stored as pseudonyms; the identity behind one is what the test checks.
        return identities.reveal(db, [row.actor]).get(row.actor) or row.actor, row.action


def test_remote_verify_reports_the_servers_chain_and_finds_damage_done_to_its_database(  # type: ignore[no-untyped-def]
        settings_env: Settings, officer: str, elsewhere: dict[str, str], cli, tmp_path: Path) -> None:
    with api_server(tmp_path / "uvicorn.log") as (server, _):
        def remote(*args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", officer, *args, env=elsewhere)

        intact = remote("audit", "verify")
        assert intact.returncode == 0, intact.stderr
        assert ("audit trail intact: 11 entries, 1 checkpoints (1 in the sink) verified; tree size 11"
                in " ".join(intact.stdout.split())), intact.stdout
        report = json.loads(remote("audit", "verify", "--json").stdout)
        # The same shape as a local report (run on the server's machine), which also counts the two
        # verifications the server recorded.
        local = cli("audit", "verify", "--json")
        assert local.returncode == 0, local.stderr
        assert set(report) == set(json.loads(local.stdout))
        assert (report["ok"], report["entries"], json.loads(local.stdout)["entries"]) == (True, 12, 13)
        assert not Path(elsewhere["LATENTOPS_HOME"], "absent.db").exists()  # the CLI never opened a database
        with session_scope(settings_env.database_url) as db:
            verifications = db.execute(sa.select(AuditEntry.actor).where(
                AuditEntry.action == "audit.verify").order_by(AuditEntry.seq)).scalars().all()
            olga = identities.stored_actor(db, "olga@example.com")
        assert verifications[:2] == [olga, olga]

        # A superuser edits an entry in the server's database, around the append-only triggers.
        tamper(settings_env.database_url, "UPDATE audit_entries SET details = '{\"index\":99}' WHERE seq = 5")
        damaged = remote("audit", "verify")
        assert damaged.returncode == 1
        assert damaged.stderr.startswith("IntegrityViolation: audit trail damaged: modified at seq 5"), damaged.stderr
        as_json = remote("audit", "verify", "--json")
        found = json.loads(as_json.stdout)
        assert as_json.returncode == 1 and found["ok"] is False
        assert (found["damage"][0]["kind"], found["damage"][0]["seq"]) == ("modified", 5)

        # The keys and the sink are the server's: a client's own are refused, not quietly ignored.
        key_file = tmp_path / "mine.pub"
        key_file.write_text(checkpoints.public_key_pem(
            checkpoints.load_signing_key(checkpoints.default_key_path(settings_env)).public_key()))
        for option in (("--public-key", str(key_file)), ("--sink", str(tmp_path / "sink.jsonl"))):
            refused = remote("audit", "verify", *option)
            assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert refused.stderr.startswith(f"InvalidInput: {option[0]}: not available with --server")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_remote_export_writes_what_a_local_export_of_the_same_database_writes(  # type: ignore[no-untyped-def]
        settings_env: Settings, officer: str, elsewhere: dict[str, str], cli, tmp_path: Path, fmt: str,
        database_copy: Callable[[], str]) -> None:
    # An export changes the trail it exports (it is audited, and the next one signs a new
    # checkpoint), so the server exports a copy taken when the local database was in the same state.
    copy_url = database_copy()
    local_out, remote_out = tmp_path / "local" / f"trail.{fmt}", tmp_path / "remote" / f"trail.{fmt}"
    local = cli("audit", "export", "--format", fmt, "--out", str(local_out))
    assert local.returncode == 0, local.stderr
    with api_server(tmp_path / "uvicorn.log", LATENTOPS_DATABASE_URL=copy_url) as (server, _):
        def remote(*args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", officer, *args, env=elsewhere)

        exported = remote("audit", "export", "--format", fmt, "--out", str(remote_out))
        assert exported.returncode == 0, exported.stderr
        assert " ".join(exported.stdout.split()) == " ".join(local.stdout.split()).replace(str(local_out), str(remote_out))
        assert "exported 11 entries" in exported.stdout
        proofs = Path(f"{remote_out}.proofs.json")
        assert remote_out.read_bytes() == local_out.read_bytes()
        assert proofs.read_bytes() == Path(f"{local_out}.proofs.json").read_bytes()
        assert json.loads(proofs.read_text())["entries_file"] == remote_out.name
        assert sorted(p.name for p in remote_out.parent.iterdir()) == [remote_out.name, proofs.name]  # no .part left

        # An auditor checks it without the database, with the key the server hands out.
        key = tmp_path / "server.pub"
        assert remote("audit", "public-key", "--out", str(key)).returncode == 0
        checked = run_verifier(str(remote_out), "--public-key", str(key))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        shown = remote("audit", "public-key", "--current")
        assert shown.stdout.strip() == cli("audit", "public-key", "--current").stdout.strip()
    # Each side recorded its own export, by its own actor.
    assert last_entry(copy_url) == ("olga@example.com", "audit.export")
    assert last_entry(settings_env.database_url)[1] == "audit.export"
    assert last_entry(settings_env.database_url)[0].startswith("cli:")


def test_remote_checkpoint_prove_and_query_read_the_servers_trail(  # type: ignore[no-untyped-def]
        settings_env: Settings, officer: str, elsewhere: dict[str, str], cli, tmp_path: Path) -> None:
    with api_server(tmp_path / "uvicorn.log") as (server, _):
        def remote(*args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", officer, *args, env=elsewhere)

        append(settings_env.database_url, 2)
        made = remote("audit", "checkpoint", "--json")
        assert made.returncode == 0, made.stderr
        signed = json.loads(made.stdout)
        assert signed["tree_size"] == 13 and set(signed) >= {"id", "root_hash", "signature", "key_id"}
        again = json.loads(remote("audit", "checkpoint", "--json").stdout)
        assert again == signed  # nothing added since: the same checkpoint
        forced = json.loads(remote("audit", "checkpoint", "--force", "--json").stdout)
        assert forced["id"] != signed["id"] and forced["tree_size"] == 13
        text = remote("audit", "checkpoint")
        assert text.stdout.strip() == f"checkpoint {forced['id']}: tree size 13, root {forced['root_hash']}"

        proof = json.loads(remote("audit", "prove", "3", "--json").stdout)
        assert (proof["tree_size"], proof["leaf_index"]) == (13, 3)
        page = json.loads(remote("audit", "query", "--action", "job.*", "--limit", "3", "--json").stdout)
        assert [e["resource"] for e in page["entries"]] == ["job:0", "job:1", "job:2"] and page["next_after"] is not None

        refused = remote("audit", "checkpoint", "--key", str(tmp_path / "k.pem"))
        assert refused.returncode == 1 and refused.stderr.startswith("InvalidInput: --key: not available with --server")
        assert not (tmp_path / "k.pem").exists()


def test_audit_commands_that_act_on_this_machine_refuse_a_server(  # type: ignore[no-untyped-def]
        settings_env: Settings, officer: str, cli, tmp_path: Path) -> None:
    before = _trail_state(settings_env.database_url)
    key = tmp_path / "new-key.pem"
    for args in (("audit", "integrate"), ("audit", "rotate-key", "--key", str(key)), ("audit", "erase", "user:1"),
                 ("audit", "export", "--out", str(tmp_path / "x.jsonl"), "--key", str(key)),
                 ("audit", "public-key", "--key", str(key))):
        # The server is real; the refusal comes before anything is asked of it or done here.
        refused = cli("--server", "http://127.0.0.1:9", "--token", officer, *args)
        assert refused.returncode == 1, (args, refused.stdout)
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1, refused.stderr
        assert ("runs on this machine only" in line or "--key: not available with --server" in line), line
        if "runs on this machine only" in line:
            assert line.startswith(f"InvalidInput: latentops {' '.join(args[:2])} runs on this machine only")
    assert not key.exists() and not (tmp_path / "x.jsonl").exists()
    assert _trail_state(settings_env.database_url) == before


def _trail_state(database_url: str) -> tuple[int, int]:
    with session_scope(database_url) as db:
        entries = db.execute(sa.select(sa.func.count()).select_from(AuditEntry)).scalar_one()
        signed = db.execute(sa.select(sa.func.count()).select_from(AuditCheckpoint)).scalar_one()
    return int(entries), int(signed)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_export_name_must_be_a_plain_file_name_and_public_keys_need_a_key(  # type: ignore[no-untyped-def]
        settings_env: Settings, tmp_path: Path) -> None:
    from api_helpers import bearer
    from fastapi.testclient import TestClient

    from latentops.platform.api.app import create_app

    api = TestClient(create_app(settings_env))
    officer = bearer(make_user(settings_env.database_url, "olga@example.com", "compliance_officer", "compliance"))
    submitter = bearer(make_user(settings_env.database_url, "sam@example.com", "submitter", "design"))
    missing = api.get("/api/v1/audit/public-keys", headers=officer)  # reading never creates the signing key
    assert missing.status_code == 404 and "none yet on this server" in missing.json()["detail"]
    assert not checkpoints.default_key_path(settings_env).exists()
    before = _trail_state(settings_env.database_url)
    for name in ("../trail.jsonl", "a/b.jsonl", ".hidden", "tab\there", " ", "é" * 101):
        refused = api.post("/api/v1/audit/export", params={"name": name}, headers=officer)
        assert refused.status_code == 422, (name, refused.text)
        assert refused.json()["detail"].startswith("name: must be a plain file name"), refused.text
    assert _trail_state(settings_env.database_url) == before  # nothing signed, nothing exported
    made = api.post("/api/v1/audit/export", params={"name": "trail 2026.jsonl", "format": "jsonl"}, headers=officer)
    assert made.status_code == 200
    with zipfile.ZipFile(io.BytesIO(made.content)) as archive:
        assert sorted(archive.namelist()) == ["trail 2026.jsonl", "trail 2026.jsonl.proofs.json"]
    keys = api.get("/api/v1/audit/public-keys", headers=officer).json()
    assert keys["key_ids"] == [keys["key_id"]] and keys["current_pem"] in keys["keyring_pem"]
    assert api.get("/api/v1/audit/public-keys", headers=submitter).status_code == 403
