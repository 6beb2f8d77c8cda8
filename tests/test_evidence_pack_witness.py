"""Evidence packs carry the witnesses' cosignatures, and the pack's verify.py holds them to a policy.

A real witness (the server in a thread) cosigns the log's checkpoints; the pack is verified with
the system ``python3`` and nothing else, with the operator's policy (keys/witnesses.json) and with
an auditor's stricter one; a cosignature altered in the pack, and a witness that stopped
cosigning before the pack was made, are each named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_evidence_pack import build, rehash, run_verify, unpack
from test_witness import ThreadWitness, append, checkpoint, configure, log_vkey_file

from latentops.core.settings import Settings
from latentops.governance import witness_client

WINDOW = ("2000-01-01", "2100-01-01")


def _verify_with(folder: Path, *args: str) -> tuple[int, str]:
    import subprocess

    from test_evidence_pack import SYSTEM_PYTHON

    done = subprocess.run([SYSTEM_PYTHON, "verify.py", *args], cwd=folder, env={}, capture_output=True, text=True,
                          timeout=120, check=False)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def _flip_a_cosignature(folder: Path, witness_name: str) -> None:
    """Change one character inside the signature bytes of ``witness_name``'s cosignature line."""
    path = folder / "checkpoints.json"
    document = json.loads(path.read_text())
    for item in document["checkpoints"]:
        lines = item.get("note", "").split("\n")
        for index, line in enumerate(lines):
            if line.startswith(f"\u2014 {witness_name} "):
                name, blob = line.rsplit(" ", 1)
                position = len(blob) // 2  # past the 4-byte key hash and the 8-byte time: the signature
                lines[index] = f"{name} {blob[:position]}{'A' if blob[position] != 'A' else 'B'}{blob[position + 1:]}"
                item["note"] = "\n".join(lines)
                path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
                return
    raise AssertionError(f"no cosignature of {witness_name} in the pack")


def test_pack_carries_cosignatures_and_its_verifier_holds_them_to_a_policy(  # type: ignore[no-untyped-def]
        settings_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_key = log_vkey_file(settings_env, tmp_path)
    cosigner = ThreadWitness(tmp_path / "w1", "witness.example/w1", log_key)
    stranger = ThreadWitness(tmp_path / "w2", "witness.example/w2", log_key)  # never asked by this log
    stranger.stop()
    try:
        configure(monkeypatch, cosigner.spec)
        append(settings_env.database_url, 4)
        checkpoint(settings_env)
        assert witness_client.wait_idle(20)

        folder = unpack(build(settings_env, *WINDOW).data, tmp_path / "pack")
        policy = json.loads((folder / "keys" / "witnesses.json").read_text())
        assert policy["keys"] == [cosigner.witness.verifier.vkey()] and policy["required"] == 1
        done = run_verify(folder)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"1 of 1 witnesses (keys/witnesses.json) cosigned the checkpoint of tree size {policy['tree_size']}" \
            in " ".join(done.stdout.split())

        # The auditor's own policy: both keys, both required -> the one that never cosigned is named.
        mine, theirs = cosigner.witness.verifier.vkey(), stranger.witness.verifier.vkey()
        code, said = _verify_with(folder, "--witness-key", mine, "--witness-key", theirs)
        assert code == 1 and "FAIL: missing cosignature" in said and "witness.example/w2" in said, said
        code, said = _verify_with(folder, "--witness-key", mine, "--witness-key", theirs, "--witnesses-required", "1")
        assert code == 0 and "1 of 2 witnesses (--witness-key)" in said, said
        code, said = _verify_with(folder, "--witness-key", mine, "--witnesses-required", "3")
        assert code == 2 and "--witnesses-required" in said, said

        # A cosignature altered in the pack (the manifest re-hashed, as a careful forger would).
        forged = unpack(build(settings_env, *WINDOW).data, tmp_path / "forged")
        _flip_a_cosignature(forged, "witness.example/w1")
        rehash(forged)
        done = run_verify(forged)
        assert done.returncode == 1 and "FAIL: forged cosignature" in done.stdout, done.stdout

        # The witness stops; the next checkpoint is made without it, and a pack made now says so.
        cosigner.stop()
        append(settings_env.database_url, 2, start=4)
        checkpoint(settings_env)
        assert witness_client.wait_idle(20)
        late = unpack(build(settings_env, *WINDOW).data, tmp_path / "late")
        done = run_verify(late)
        assert done.returncode == 1 and "FAIL: missing cosignature" in done.stdout, done.stdout
        assert "witness.example/w1" in done.stdout
    finally:
        cosigner.stop()
