"""The evidence pack: built from a real trail, unpacked into a clean folder and checked by its own
``verify.py`` under a bare ``/usr/bin/python3`` with an empty environment; then each part is
damaged in turn and the failure must name it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from job_helpers import queued_job

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import checkpoints, evidence, policy
from latentops.platform.database import session_scope

SYSTEM_PYTHON = "/usr/bin/python3"


def make_trail(settings: Settings) -> dict[str, object]:
    """Decisions, jobs and a policy data edit, with a checkpoint in between; what was written."""
    with session_scope(settings.database_url) as db:
        before = policy.decide("prompt", {"prompt": "a lighthouse at dusk"}, session=db, actor="cli:tester")
        queued_job(db, kind="diagnostics", params={}, actor="cli:tester")
    sign(settings)
    with session_scope(settings.database_url) as db:
        revision = policy.set_policy_data(db, key="prompt.max_length", value=1500, actor="cli:admin",
                                          note="longer prompts")
    with session_scope(settings.database_url) as db:
        after = policy.decide("prompt", {"prompt": "a harbour at dawn"}, session=db, actor="cli:tester")
        queued_job(db, kind="diagnostics", params={"steps": 2}, actor="cli:tester")
    return {"revisions": {before.revision, after.revision}, "edited": revision}


def sign(settings: Settings) -> None:
    key_path = checkpoints.default_key_path(settings)
    with session_scope(settings.database_url) as db:
        checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(key_path),
                           sink=checkpoints.open_sink(settings.audit_sink), keyring=checkpoints.signing_keyring(key_path))


def build(settings: Settings, start: str, end: str) -> evidence.Pack:
    with session_scope(settings.database_url) as db:
        return evidence.make(db, window=evidence.parse_window(start, end),
                             key_path=checkpoints.default_key_path(settings),
                             sink=checkpoints.open_sink(settings.audit_sink), actor="cli:officer")


def unpack(data: bytes, folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return folder


def run_verify(folder: Path) -> subprocess.CompletedProcess[str]:
    """``python3 verify.py`` in the pack's folder: the system interpreter, no environment at all."""
    return subprocess.run([SYSTEM_PYTHON, "verify.py"], cwd=folder, env={}, capture_output=True, text=True,
                          timeout=120, check=False)


def rehash(folder: Path) -> None:
    """What a careful forger does after editing a file: write its new SHA-256 into the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in manifest["files"]
                         if (folder / name).is_file()}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def edit_json_lines(path: Path, seq: int, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        item = json.loads(line)
        if item["seq"] == seq:
            change(item)
            lines[index] = json.dumps(item, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


def _drop_line(path: Path, seq: int) -> None:
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["seq"] != seq]
    path.write_text("\n".join(lines) + "\n")


def flip_hex(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


def _revision_folder(folder: Path) -> str:
    return json.loads((folder / "policy/revisions.json").read_text())["revisions"][-1]["revision"]


def _replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _damage_key(folder: Path) -> None:
    path = folder / "keys/checkpoint-keyring.pem"
    lines = path.read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if line.startswith("MC"))
    line = lines[body]
    lines[body] = line[:-6] + ("A" if line[-6] != "A" else "B") + line[-5:]
    path.write_text("\n".join(lines) + "\n")


def _drop_latest_revision(folder: Path) -> None:
    path = folder / "policy/revisions.json"
    document = json.loads(path.read_text())
    document["revisions"] = document["revisions"][:-1]
    path.write_text(json.dumps(document))


def damages(trail_seq: int) -> list[tuple[str, Callable[[Path], None], bool, str]]:
    """(what, how, fix the manifest afterwards, the failure it must name)."""
    return [
        ("a deleted proofs file", lambda f: (f / "proofs/inclusion.jsonl").unlink(), False,
         "FAIL: missing file: proofs/inclusion.jsonl"),
        ("a deleted Rego module", lambda f: (f / f"policy/{_revision_folder(f)}/modules/prompt/prompt.rego").unlink(),
         False, "FAIL: missing file: policy/"),
        ("an edited entry, manifest left", lambda f: edit_json_lines(f / "entries.jsonl", trail_seq,
                                                                      lambda e: e.update(actor="cli:someone-else")),
         False, "FAIL: manifest mismatch: entries.jsonl"),
        ("an edited entry", lambda f: edit_json_lines(f / "entries.jsonl", trail_seq,
                                                       lambda e: e.update(actor="cli:someone-else")),
         True, f"FAIL: modified entry: seq {trail_seq}: its hash does not match"),
        ("a removed entry", lambda f: _drop_line(f / "entries.jsonl", trail_seq), True, "FAIL: missing entry: "),
        ("an edited inclusion proof", lambda f: edit_json_lines(
            f / "proofs/inclusion.jsonl", trail_seq, lambda p: p.update(proof=[flip_hex(p["proof"][0])] + p["proof"][1:])),
         True, f"FAIL: bad inclusion proof: seq {trail_seq}"),
        ("an edited consistency proof", lambda f: _replace_in(
            f / "proofs/consistency.json", json.loads((f / "proofs/consistency.json").read_text())["proofs"][0]["proof"][0],
            flip_hex(json.loads((f / "proofs/consistency.json").read_text())["proofs"][0]["proof"][0])),
         True, "FAIL: broken consistency proof: proofs/consistency.json: the proof from tree size"),
        ("an altered checkpoint time", lambda f: _replace_in(
            f / "checkpoints.json", json.loads((f / "checkpoints.json").read_text())["checkpoints"][0]["at"],
            "2001-01-01T00:00:00.000000Z"), True, "FAIL: forged checkpoint: checkpoints.json: checkpoint 1"),
        ("an edited Rego module", lambda f: _replace_in(
            f / f"policy/{_revision_folder(f)}/modules/prompt/prompt.rego", "package", "package  "),
         True, "FAIL: policy revision mismatch: policy/"),
        ("edited policy data", lambda f: _replace_in(f / f"policy/{_revision_folder(f)}/data.json", "1500", "9000"),
         True, "FAIL: policy revision mismatch: policy/"),
        ("a revision left out", _drop_latest_revision, True, "FAIL: missing policy revision: seq"),
        ("a damaged key", _damage_key, True, "FAIL: damaged key: keys/checkpoint-keyring.pem: key 1"),
        ("an edited manifest", lambda f: _replace_in(
            f / "manifest.json", json.loads((f / "manifest.json").read_text())["files"]["checkpoints.json"],
            "0" * 64), False, "FAIL: manifest mismatch: checkpoints.json"),
        ("an added file", lambda f: (f / "notes.txt").write_text("x"), False, "FAIL: unlisted file: notes.txt"),
    ]


@pytest.mark.usefixtures("fresh_policy")
def test_pack_verifies_alone_and_names_each_damage(settings_env: Settings, tmp_path: Path) -> None:
    written = make_trail(settings_env)
    today = dt.datetime.now(dt.UTC).date()
    pack = build(settings_env, (today - dt.timedelta(days=1)).isoformat(), today.isoformat())
    clean = unpack(pack.data, tmp_path / "pack")
    assert sorted(p.name for p in clean.iterdir()) == ["README.md", "checkpoints.json", "entries.jsonl", "keys",
                                                        "latentops_audit_verify.py", "manifest.json", "policy",
                                                        "proofs", "verify.py"]
    manifest = json.loads((clean / "manifest.json").read_text())
    revisions = json.loads((clean / "policy/revisions.json").read_text())
    assert {r["revision"] for r in revisions["revisions"]} >= written["revisions"]  # type: ignore[operator]
    assert revisions["unavailable"] == []
    entries = [json.loads(line) for line in (clean / "entries.jsonl").read_text().splitlines()]
    actions = [e["action"] for e in entries]
    assert {"policy.decision", "job.submit", "policy.data.edit"} <= set(actions)
    assert manifest["entries"]["in_window"] == len(entries) > 0
    assert len(json.loads((clean / "checkpoints.json").read_text())["checkpoints"]) == 2

    result = run_verify(clean)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: {len(entries)} entries in the window"), result.stdout
    assert "2 checkpoints signed and consistent" in result.stdout and "2 policy revision(s)" in result.stdout
    assert not (clean / "__pycache__").exists()

    edited = next(e["seq"] for e in entries if e["action"] == "policy.data.edit")
    for what, damage, fix_manifest, expected in damages(edited):
        folder = tmp_path / f"damaged-{what.replace(' ', '-')}"
        shutil.copytree(clean, folder)
        damage(folder)
        if fix_manifest:
            rehash(folder)
        result = run_verify(folder)
        assert result.returncode == 1, f"{what}: {result.stdout}{result.stderr}"
        assert result.stdout.startswith(expected), f"{what}: expected {expected!r}, got {result.stdout!r}"
        assert len(result.stdout.strip().splitlines()) == 1, f"{what}: {result.stdout}"


@pytest.mark.usefixtures("fresh_policy")
def test_an_empty_window_gives_a_verifiable_pack_of_no_entries(settings_env: Settings, tmp_path: Path) -> None:
    make_trail(settings_env)
    pack = build(settings_env, "2001-01-01", "2001-01-31")
    assert pack.manifest["entries"] == {"count": 0, "in_window": 0, "first_seq": None, "last_seq": None}
    folder = unpack(pack.data, tmp_path / "pack")
    assert (folder / "entries.jsonl").read_bytes() == b""
    result = run_verify(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 0 entries in the window 2001-01-01T00:00:00.000000Z to "
                                    "2001-02-01T00:00:00.000000Z"), result.stdout


@pytest.mark.parametrize(("start", "end", "message"), [
    ("2026-02-01", "2026-01-01", "--from: 2026-02-01T00:00:00.000000Z is not before --to 2026-01-02"),
    ("yesterday", "2026-01-01", "--from: not an ISO 8601 date or time within years 1 to 9999 (got 'yesterday')"),
    ("2026-01-01", "31/01/2026", "--to: not an ISO 8601 date or time within years 1 to 9999 (got '31/01/2026')"),
    ("2026-01-01", "9999-12-31", "--to: not an ISO 8601 date or time within years 1 to 9999"),
    ("", "2026-01-01", "--from: required"),
])
def test_bad_windows_name_the_option(start: str, end: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        evidence.parse_window(start, end, names=("--from", "--to"))
    assert raised.value.detail.startswith(message)


def test_a_date_alone_covers_its_whole_day() -> None:
    window = evidence.parse_window("2026-01-01", "2026-01-31")
    assert window.to_json() == {"from": "2026-01-01T00:00:00.000000Z", "to": "2026-02-01T00:00:00.000000Z"}
    exact = evidence.parse_window("2026-01-01T12:00:00+01:00", "2026-01-01T13:30:00Z")
    assert exact.to_json() == {"from": "2026-01-01T11:00:00.000000Z", "to": "2026-01-01T13:30:00.000000Z"}
