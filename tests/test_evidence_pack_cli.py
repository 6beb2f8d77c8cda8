"""``latentops audit evidence`` locally and with ``--server``, and ``POST /api/v1/audit/evidence``:
the pack written verifies on its own; bad windows are refused in one line naming the option."""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

import httpx
import pytest
from api_helpers import api_server, bearer, make_user
from test_evidence_pack import make_trail, run_verify, unpack

from latentops.core.settings import Settings
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry


def _today() -> tuple[str, str]:
    today = dt.datetime.now(dt.UTC).date()
    return (today - dt.timedelta(days=1)).isoformat(), today.isoformat()


def _last_entry(url: str) -> AuditEntry:
    import sqlalchemy as sa

    with session_scope(url) as db:
        entry = db.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
        db.expunge(entry)
        return entry


@pytest.mark.usefixtures("fresh_policy")
def test_cli_writes_a_pack_that_verifies_and_is_audited(settings_env: Settings, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_trail(settings_env)
    start, end = _today()
    out = tmp_path / "out" / "pack.zip"
    result = cli("audit", "evidence", "--from", start, "--to", end, "--out", str(out))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"evidence pack {out}:" in said and "python3 verify.py" in said, said
    checked = run_verify(unpack(out.read_bytes(), tmp_path / "pack"))
    assert checked.returncode == 0 and checked.stdout.startswith("OK: "), checked.stdout
    recorded = _last_entry(settings_env.database_url)
    assert recorded.action == "audit.evidence" and '"policy_revisions":2' in recorded.details


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2026-02-01", "--to", "2026-01-01"], "InvalidInput: --from: 2026-02-01T00:00:00.000000Z is not before --to"),
    (["--from", "last tuesday", "--to", "2026-01-01"], "InvalidInput: --from: not an ISO 8601 date or time"),
    (["--from", "2026-01-01", "--to", "2026-13-01"], "InvalidInput: --to: not an ISO 8601 date or time"),
])
def test_cli_refuses_a_bad_window_in_one_line(settings_env: Settings, cli, tmp_path: Path, args: list[str],  # type: ignore[no-untyped-def]
                                              message: str) -> None:
    result = cli("audit", "evidence", *args, "--out", str(tmp_path / "pack.zip"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "pack.zip").exists()


@pytest.mark.usefixtures("fresh_policy")
def test_rest_and_remote_cli_hand_out_the_servers_pack(settings_env: Settings, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    officer = make_user(settings_env.database_url, "olga@example.com", "compliance_officer", "compliance")
    submitter = make_user(settings_env.database_url, "sam@example.com", "submitter", "design")
    make_trail(settings_env)
    start, end = _today()
    home = tmp_path / "client-home"
    home.mkdir()
    elsewhere = {"LATENTOPS_HOME": str(home), "LATENTOPS_DATABASE_URL": f"sqlite:///{home / 'absent.db'}"}
    with api_server(tmp_path / "uvicorn.log") as (server, _):
        api = f"{server}/api/v1/audit/evidence"
        refused = httpx.post(api, params={"from": start, "to": end}, headers=bearer(submitter), timeout=60)
        assert refused.status_code == 403
        bad = httpx.post(api, params={"from": end, "to": start}, headers=bearer(officer), timeout=60)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("from: "), bad.text
        got = httpx.post(api, params={"from": start, "to": end}, headers=bearer(officer), timeout=120)
        assert got.status_code == 200, got.text
        assert got.headers["content-disposition"].startswith('attachment; filename="latentops-evidence-')
        checked = run_verify(unpack(got.content, tmp_path / "rest"))
        assert checked.returncode == 0, checked.stdout

        out = tmp_path / "remote" / "pack.zip"
        out.parent.mkdir()
        remote = cli("--server", server, "--token", officer, "audit", "evidence", "--from", start, "--to", end,
                     "--out", str(out), env=elsewhere)
        assert remote.returncode == 0, remote.stderr
        with zipfile.ZipFile(out) as archive:
            assert "verify.py" in archive.namelist()
        checked = run_verify(unpack(out.read_bytes(), tmp_path / "remote-pack"))
        assert checked.returncode == 0, checked.stdout
        assert "entries in the window" in remote.stdout
        keyed = cli("--server", server, "--token", officer, "audit", "evidence", "--from", start, "--to", end,
                    "--out", str(out), "--key", str(tmp_path / "k.pem"), env=elsewhere)
        assert keyed.returncode == 1 and "--key" in keyed.stderr
    assert _last_entry(settings_env.database_url).action == "audit.evidence"
    # Entries go in as stored: actors are pseudonyms there, and no file reveals the officer's address.
    for path in (tmp_path / "rest").rglob("*"):
        assert not path.is_file() or b"olga@example.com" not in path.read_bytes(), path
