"""Merkle proofs (RFC 9162) and the standalone verifier an outside auditor runs on an export."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentops.core.settings import Settings
from latentops.governance import audit, checkpoints, merkle
from latentops.platform.database import session_scope

VERIFIER = Path(__file__).resolve().parents[1] / "governance" / "verifier" / "latentops_audit_verify.py"


def _standalone():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("latentops_audit_verify", VERIFIER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the tree against RFC 9162's recursive definitions -----------------------------------------


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return path(m, leaves[:k]) + [mth(leaves[k:])] if m < k else path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if complete else [mth(leaves)]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m <= k:
        return subproof(m, leaves[:k], complete) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


LEAVES = [merkle.leaf_hash(index.to_bytes(4, "big")) for index in range(40)]


def test_leaf_and_node_hashing_use_rfc9162_prefixes() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert merkle.MerkleTree().root() == merkle.Frontier().root() == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 16, 17, 31, 40])
def test_roots_and_proofs_match_the_rfc_definitions_and_verify(size: int) -> None:
    leaves, tree, frontier = LEAVES[:size], merkle.MerkleTree(LEAVES), merkle.Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    root = mth(leaves)
    assert tree.root(size) == frontier.root() == root
    standalone = _standalone()
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert proof == path(index, leaves)
        assert merkle.verify_inclusion(index, size, leaves[index], proof, root)
        assert standalone.verify_inclusion(index, size, leaves[index], proof, root)
        assert not merkle.verify_inclusion(index, size, merkle.leaf_hash(b"other"), proof, root)
    for old in range(size + 1):
        proof = tree.consistency_proof(old, size)
        if 0 < old < size:
            assert proof == subproof(old, leaves, True)
        assert merkle.verify_consistency(old, size, mth(leaves[:old]), root, proof)
        assert standalone.verify_consistency(old, size, mth(leaves[:old]), root, proof)
        if 0 < old < size:
            assert not merkle.verify_consistency(old, size, mth(leaves[:old]), mth(LEAVES[1:size + 1]), proof)


def test_proof_requests_beyond_the_tree_are_refused() -> None:
    tree = merkle.MerkleTree(LEAVES[:5])
    with pytest.raises(ValueError, match="leaf 5 is not in a tree of size 5"):
        tree.inclusion_proof(5)
    with pytest.raises(ValueError, match="beyond the 5 leaves"):
        tree.consistency_proof(2, 6)


def test_standalone_ed25519_agrees_with_cryptography() -> None:
    standalone = _standalone()
    for index in range(4):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        message = f"statement {index}".encode()
        signature = key.sign(message)
        assert standalone.ed25519_verify(public, message, signature)
        assert not standalone.ed25519_verify(public, message + b"!", signature)
        assert not standalone.ed25519_verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))


# --- proofs and exports from a real trail -------------------------------------------------------


@pytest.fixture
def trail(settings_env: Settings, cli) -> Settings:  # type: ignore[no-untyped-def]
    for index in range(12):
        with session_scope(settings_env.database_url) as db:
            audit.record(db, actor="alice@example.com" if index % 2 else "bob@example.com",
                         action="policy.decide" if index % 3 else "job.submit", resource=f"job:{index}",
                         outcome="denied" if index == 7 else "success",
                         details={"index": index, "note": "quote \" and ünïcode\nline"})
        if index == 4:
            assert cli("audit", "checkpoint").returncode == 0
    assert cli("audit", "checkpoint").returncode == 0
    return settings_env


def test_prove_prints_a_proof_that_verifies_against_the_signed_checkpoint(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("audit", "prove", "7", "--json")
    assert result.returncode == 0, result.stderr
    proof = json.loads(result.stdout)
    leaf = merkle.leaf_hash(bytes.fromhex(proof["entry"]["hash"]))
    assert proof["entry"]["seq"] == 7 and proof["tree_size"] == 12 and leaf.hex() == proof["leaf_hash"]
    assert merkle.verify_inclusion(7, 12, leaf, [bytes.fromhex(n) for n in proof["proof"]], bytes.fromhex(proof["root_hash"]))
    public = checkpoints.load_signing_key(checkpoints.default_key_path(trail)).public_key()
    assert checkpoints.signature_valid(proof["checkpoint"], public)


def test_consistency_prints_a_proof_between_two_checkpoints(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("audit", "consistency", "5", "12", "--json")
    assert result.returncode == 0, result.stderr
    proof = json.loads(result.stdout)
    assert proof["old_checkpoint"]["tree_size"] == 5 and proof["new_checkpoint"]["tree_size"] == 12
    assert merkle.verify_consistency(5, 12, bytes.fromhex(proof["old_checkpoint"]["root_hash"]),
                                     bytes.fromhex(proof["new_checkpoint"]["root_hash"]),
                                     [bytes.fromhex(n) for n in proof["proof"]])


@pytest.mark.parametrize(("args", "message"), [
    (("prove", "12"), "seq: 12 is beyond the latest checkpoint (tree size 12)"),
    (("prove", "--", "-3"), "seq: must be 0 or more"),
    (("consistency", "3", "40"), "new: 40 is beyond the latest checkpoint (tree size 12)"),
    (("consistency", "9", "4"), "old: must be between 0 and new (4)"),
])
def test_proofs_beyond_the_tree_fail_clearly(trail: Settings, cli, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("audit", *args)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())


def run_verifier(*args: str) -> subprocess.CompletedProcess[str]:
    """The verifier in isolated mode without site-packages: it can import nothing of ours."""
    return subprocess.run([sys.executable, "-I", "-S", str(VERIFIER), *args], capture_output=True, text=True, check=False,
                          timeout=120, env={"PATH": os.environ.get("PATH", "")})


def _export(trail: Settings, cli, folder: Path) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The trail exported whole (JSON lines) and filtered (CSV), its public key and a copy of its checkpoint sink."""
    paths = {"jsonl": folder / "audit.jsonl", "csv": folder / "denied.csv", "key": folder / "audit.pub",
             "sink": folder / "sink.jsonl"}
    assert cli("audit", "export", "--out", str(paths["jsonl"])).returncode == 0
    result = cli("audit", "export", "--format", "csv", "--out", str(paths["csv"]), "--outcome", "denied")
    assert result.returncode == 0, result.stderr
    assert cli("audit", "public-key", "--out", str(paths["key"])).returncode == 0
    shutil.copy(checkpoints.default_sink_location(trail), paths["sink"])
    # The CSV export signed a checkpoint after the JSON lines one: only a consistency proof makes it growth.
    later = cli("audit", "consistency", "--from-size", "12", "--json")
    assert later.returncode == 0, later.stderr
    paths["later"] = folder / "later.json"
    paths["later"].write_text(later.stdout)
    return paths


@pytest.fixture(scope="module")
def _exports() -> dict[str, dict[str, Path]]:
    """Exports of a real trail, by backend, made once per module by the first test that needs them."""
    return {}


@pytest.fixture
def exported(request: pytest.FixtureRequest, database_url: str, _exports: dict[str, dict[str, Path]],
             tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> dict[str, Path]:
    """This test's own copy of the exported files (tests damage them), of a trail made once per backend.

    Building a trail and exporting it takes five runs of the CLI; the tests here only read and damage
    the files, so each gets a fresh copy of one export.
    """
    backend = request.node.callspec.params["database_url"]
    if backend not in _exports:
        trail, cli = request.getfixturevalue("trail"), request.getfixturevalue("cli")
        _exports[backend] = _export(trail, cli, tmp_path_factory.mktemp(f"export-{backend}"))
    folder = tmp_path / "export"
    shutil.copytree(_exports[backend]["jsonl"].parent, folder)  # with the proofs files the exports write beside them
    return {name: folder / path.name for name, path in _exports[backend].items()}


def test_standalone_verifier_accepts_complete_and_filtered_exports(exported: dict[str, Path]) -> None:
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]))
    assert result.returncode == 1 and "FAIL: truncated at seq 12" in result.stderr  # the sink's 13 is unproven
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]),
                          "--consistency", str(exported["later"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 12 complete chain verified against the checkpoint of tree size 12")
    result = run_verifier(str(exported["csv"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 filtered entries verified against the checkpoint of tree size 13")


def _rewrite(path: Path, index: int, change) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[index])
    change(entry)
    lines[index] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("damage", "code", "message"), [
    (lambda p: _rewrite(p, 3, lambda e: e.update(outcome="failure")), 1, "FAIL: modified at seq 3"),
    (lambda p: _rewrite(p, 3, lambda e: e.update(hash="00" * 32)), 1, "FAIL: modified at seq 3"),
    (lambda p: p.write_text("".join(l + "\n" for i, l in enumerate(p.read_text().splitlines()) if i != 5)), 1,
     "FAIL: deleted"),
    (lambda p: p.write_text("".join(l + "\n" for l in p.read_text().splitlines()[:-1])), 1, "FAIL: deleted"),
    (lambda p: p.write_text(p.read_text().replace("\n", "\n{not json\n", 1)), 2, "ERROR:"),
])
def test_standalone_verifier_rejects_a_damaged_export(exported: dict[str, Path], damage, code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    damage(exported["jsonl"])
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]))
    assert result.returncode == code
    assert message in result.stderr, result.stderr


def test_standalone_verifier_rejects_a_wrong_key_and_a_forged_checkpoint(exported: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_text(checkpoints.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(other))
    assert result.returncode == 1 and "forged_checkpoint" in result.stderr and "key given is wrong" in result.stderr

    proofs_path = exported["jsonl"].with_name("audit.jsonl.proofs.json")
    proofs = json.loads(proofs_path.read_text())
    proofs["checkpoint"]["tree_size"] = 11
    proofs_path.write_text(json.dumps(proofs))
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]))
    assert result.returncode == 1 and "FAIL: forged_checkpoint" in result.stderr and "signature does not verify" in result.stderr

    (tmp_path / "garbage.pub").write_text("not a key")
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(tmp_path / "garbage.pub"))
    assert result.returncode == 2 and "not an Ed25519 public key" in result.stderr


def test_standalone_verifier_checks_an_older_export_against_a_grown_sink(trail: Settings, cli,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    exported = _export(trail, cli, tmp_path)  # this test grows the trail the export came from: its own
    exported["sink"] = Path(checkpoints.default_sink_location(trail))
    with session_scope(trail.database_url) as db:
        audit.record(db, actor="a", action="job.submit", resource="job:late")
    assert cli("audit", "checkpoint").returncode == 0  # the sink now covers more than the export
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]))
    assert result.returncode == 1 and "truncated" in result.stderr  # growth is proven, never assumed
    later = cli("audit", "consistency", "--from-size", "12", "--json")
    assert later.returncode == 0, later.stderr
    exported["later"].write_text(later.stdout)
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]),
                          "--consistency", str(exported["later"]))
    assert result.returncode == 0, result.stderr
    assert "the log has grown to 15 entries since this export" in result.stdout

    lines = exported["sink"].read_text().splitlines()
    forged = json.loads(lines[0])
    forged["root_hash"] = "00" * 32
    exported["sink"].write_text("\n".join([json.dumps(forged), *lines[1:]]) + "\n")
    result = run_verifier(str(exported["jsonl"]), "--public-key", str(exported["key"]), "--checkpoints", str(exported["sink"]))
    assert result.returncode == 1 and "FAIL: forged_checkpoint" in result.stderr
