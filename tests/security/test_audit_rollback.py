"""A rolled-back log: cut back and re-exported, it must not pass the standalone verifier against a
larger signed checkpoint the auditor holds, unless a consistency proof links the export to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from latentops.core.settings import Settings
from latentops.governance import audit, checkpoints, compliance
from latentops.platform.database import dispose_all, session_scope

VERIFIER = Path(__file__).resolve().parents[2] / "governance" / "verifier" / "latentops_audit_verify.py"


def _append(url: str, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        with session_scope(url) as db:
            audit.record(db, actor="alice@example.com", action="team.create", resource=f"team:{index}")


def _checkpoint(settings: Settings) -> int:
    path = checkpoints.default_key_path(settings)
    with session_scope(settings.database_url) as db:
        made = checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(path),
                                  sink=checkpoints.open_sink(settings.audit_sink), keyring=checkpoints.signing_keyring(path))
        return made.tree_size


def _export(settings: Settings, out: Path) -> Path:
    key = checkpoints.load_signing_key(checkpoints.default_key_path(settings))
    with session_scope(settings.database_url) as db:
        compliance.export(db, path=out, fmt="jsonl", public_key_pem=checkpoints.public_key_pem(key.public_key()))
    return out


def _verifier(export: Path, settings: Settings, sink: Path, *consistency: Path) -> subprocess.CompletedProcess[str]:
    keys = export.with_name("keys.pem")
    keys.write_text(checkpoints.keyring_pem(checkpoints.signing_keyring(checkpoints.default_key_path(settings))))
    args = [sys.executable, str(VERIFIER), str(export), "--public-key", str(keys), "--checkpoints", str(sink)]
    for path in consistency:
        args += ["--consistency", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _cut_back(url: str, keep: int) -> None:
    """What the database's owner can do: switch the guards off and delete the tail and its checkpoints."""
    dispose_all()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            for trigger in ("audit_entries_no_delete", "audit_checkpoints_no_delete"):
                connection.execute(sa.text(f"DROP TRIGGER {trigger}"))
        else:
            for table in ("audit_entries", "audit_checkpoints"):
                connection.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        connection.execute(sa.text("DELETE FROM audit_checkpoints WHERE tree_size > :keep"), {"keep": keep})
        connection.execute(sa.text("DELETE FROM audit_entries WHERE seq >= :keep"), {"keep": keep})
    engine.dispose()
    audit.forget_verified_heads()


def test_a_cut_back_log_fails_against_a_larger_checkpoint(settings_env: Settings, tmp_path: Path) -> None:
    url = settings_env.database_url
    _append(url, 5)
    assert _checkpoint(settings_env) == 5
    _append(url, 3, start=5)
    assert _checkpoint(settings_env) == 8
    held = tmp_path / "auditor-sink.jsonl"  # the auditor's copy of the external sink: sizes 5 and 8
    held.write_bytes(Path(settings_env.audit_sink).read_bytes())

    _cut_back(url, 5)
    export = _export(settings_env, tmp_path / "audit.jsonl")  # re-exported: the checkpoint of 5 is the latest
    result = _verifier(export, settings_env, held)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "truncat" in result.stderr and "8 entries" in result.stderr and "--consistency" in result.stderr

    # A made-up proof from 5 to 8 does not help.
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"format": compliance.CONSISTENCY_FORMAT, "from_size": 5, "from_root": "00" * 32,
                                  "proofs": [{"checkpoint": json.loads(held.read_text().splitlines()[1]),
                                              "proof": ["ab" * 32, "cd" * 32, "ef" * 32]}]}))
    result = _verifier(export, settings_env, held, forged)
    assert result.returncode == 1 and "truncat" in result.stderr and "does not verify" in result.stderr


def test_a_grown_log_passes_with_a_consistency_proof_to_the_later_checkpoint(settings_env: Settings, tmp_path: Path,
                                                                             cli) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    _append(url, 5)
    assert _checkpoint(settings_env) == 5
    export = _export(settings_env, tmp_path / "audit.jsonl")
    _append(url, 6, start=5)
    assert _checkpoint(settings_env) == 11
    held = Path(settings_env.audit_sink)

    result = _verifier(export, settings_env, held)  # larger checkpoint, no proof yet: not accepted as growth
    assert result.returncode == 1 and "truncat" in result.stderr

    asked = cli("audit", "consistency", "--from-size", "5", "--json")
    assert asked.returncode == 0, asked.stderr
    proof = tmp_path / "later.json"
    proof.write_text(asked.stdout)
    result = _verifier(export, settings_env, held, proof)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 5 complete chain") and "grown to 11 entries" in result.stdout

    # A proof that was tampered with fails.
    bundle = json.loads(asked.stdout)
    bundle["proofs"][0]["proof"][0] = "00" * 32
    proof.write_text(json.dumps(bundle))
    result = _verifier(export, settings_env, held, proof)
    assert result.returncode == 1 and "does not verify" in result.stderr
