#!/usr/bin/env python3
"""Verify a latentops evidence pack. Python 3.9+ standard library only.

Run it inside the unpacked pack (it is shipped there as ``verify.py``)::

    python3 verify.py [--public-key KEYRING.pem ...]

It prints ``OK: ...`` and exits 0, or prints the first failure (``FAIL: <kind>: <detail>``) and
exits 1. The cryptography (RFC 8785 entry hashing, RFC 9162 Merkle proofs, RFC 8032 Ed25519) is
``latentops_audit_verify.py`` beside it, the standalone verifier of audit exports. README.md says
what each file is, what each failure means and what the pack does not prove.

With ``--public-key`` the checkpoints are checked with keys you obtained from the operator out of
band instead of the keyring inside the pack.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # verifying leaves the pack as it was
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import latentops_audit_verify as v

PACK_FORMAT = "latentops-evidence-pack/v1"
MANIFEST = "manifest.json"
REQUIRED = ("latentops_audit_verify.py", "entries.jsonl", "proofs/inclusion.jsonl", "proofs/consistency.json",
            "checkpoints.json", "keys/checkpoint-keyring.pem", "policy/revisions.json", "README.md")
WITNESSES = "keys/witnesses.json"
KEY_BLOCK = re.compile(r"# key id ([0-9a-f]+)\s*\n(-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----)", re.DOTALL)


class Failure(Exception):
    """The first thing in the pack that does not verify."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _json(root: Path, name: str) -> Any:
    try:
        return json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise Failure("malformed file", f"{name}: not readable JSON ({error})") from None


def _lines(root: Path, name: str) -> list[dict[str, Any]]:
    items = []
    try:
        text = (root / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise Failure("malformed file", f"{name}: not readable ({error})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise Failure("malformed file", f"{name}: line {number} is not JSON ({error})") from None
        if not isinstance(item, dict) or not isinstance(item.get("seq"), int):
            raise Failure("malformed file", f"{name}: line {number} has no integer seq")
        items.append(item)
    return items


def _hex(value: Any, where: str) -> bytes:
    try:
        data = bytes.fromhex(str(value))
    except ValueError:
        raise Failure("malformed file", f"{where}: not hex ({value!r})") from None
    if len(data) != 32:
        raise Failure("malformed file", f"{where}: expected 32 bytes, got {len(data)}")
    return data


# --- the checks, in the order they run ---------------------------------------------------------


def check_files(root: Path) -> dict[str, Any]:
    """Every required file is there, every file the manifest lists has its SHA-256, nothing was added."""
    for name in (MANIFEST,) + REQUIRED:
        if not (root / name).is_file():
            raise Failure("missing file", name)
    manifest = _json(root, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT or not isinstance(manifest.get("files"), dict):
        raise Failure("malformed file", f"{MANIFEST}: not a {PACK_FORMAT} manifest")
    listed: dict[str, str] = manifest["files"]
    for name in REQUIRED:
        if name not in listed:
            raise Failure("manifest mismatch", f"{MANIFEST} does not list {name}")
    for name in sorted(listed):
        path = root / name
        if ".." in Path(name).parts or not path.is_file():
            raise Failure("missing file", name)
        if hashlib.sha256(path.read_bytes()).hexdigest() != listed[name]:
            raise Failure("manifest mismatch", f"{name}: its SHA-256 is not the one in {MANIFEST} (the file was changed)")
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and name not in listed and name not in (MANIFEST, "verify.py") and "__pycache__" not in path.parts:
            raise Failure("unlisted file", f"{name} is not part of the pack as it was made ({MANIFEST} does not list it)")
    return manifest


ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _pem_key(pem: str) -> bytes | None:
    """The 32-byte Ed25519 key of one PEM block, or None when it is not one."""
    body = "".join(pem.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "").split())
    try:
        der = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        return None
    return der[12:] if len(der) == 44 and der[:12] == ED25519_SPKI_PREFIX else None


def read_keys(root: Path, given: list[Path]) -> tuple[dict[str, bytes], str]:
    """key id -> key from the pack's keyring (each key must give the id written above it), or from ``given``."""
    name = "keys/checkpoint-keyring.pem"
    text = (root / name).read_text(encoding="ascii", errors="replace")
    blocks = KEY_BLOCK.findall(text)
    if not blocks or len(blocks) != text.count("-----BEGIN"):
        raise Failure("damaged key", f"{name}: each PEM public key must follow a '# key id' line")
    pack_keys: dict[str, bytes] = {}
    for number, (stated, pem) in enumerate(blocks, start=1):
        key = _pem_key(pem)
        if key is None:
            raise Failure("damaged key", f"{name}: key {number} ({stated}) is not an Ed25519 public key")
        if v.key_id(key) != stated:
            raise Failure("damaged key", f"{name}: key {number} gives key id {v.key_id(key)}, the file names "
                          f"{stated} (the key was altered)")
        pack_keys[stated] = key
    if not given:
        return pack_keys, "the pack's keyring"
    try:
        outside = v.read_keyring(given)
    except v.Unusable as error:
        raise Failure("damaged key", str(error)) from None
    return outside, "the keys given with --public-key"


def check_checkpoints(root: Path, keyring: dict[str, bytes], manifest: dict[str, Any], witness_keys: Sequence[str] = (),
                      witnesses_required: int | None = None) -> tuple[dict[str, Any], int, str]:
    """Every checkpoint is signed by a key of the keyring; every earlier one is consistent with the latest."""
    document = _json(root, "checkpoints.json")
    latest, items = document.get("latest"), document.get("checkpoints")
    if not isinstance(latest, dict) or not isinstance(items, list):
        raise Failure("malformed file", "checkpoints.json: no latest checkpoint and list of checkpoints")
    for where, item in [("latest checkpoint", latest)] + [(f"checkpoint {n}", i) for n, i in enumerate(items, start=1)]:
        try:
            v.check_statement(item, keyring, f"checkpoints.json: {where} (tree size {item.get('tree_size')})")
        except v.Damaged as damage:
            raise Failure("forged checkpoint", damage.detail) from None
        except v.Unusable as error:
            raise Failure("forged checkpoint", str(error)) from None
    size, root_hash = int(latest["tree_size"]), _hex(latest["root_hash"], "checkpoints.json: latest root")
    if size != manifest.get("checkpoint", {}).get("tree_size") or latest["root_hash"] != manifest["checkpoint"].get("root_hash"):
        raise Failure("forged checkpoint", "checkpoints.json: the latest checkpoint is not the one the manifest names")
    if not any(item == latest for item in items):
        raise Failure("forged checkpoint", "checkpoints.json: the latest checkpoint is missing from the list")
    witnessed = check_cosignatures(root, [latest] + items, witness_keys, witnesses_required)
    proofs = _json(root, "proofs/consistency.json").get("proofs") or []
    by_old = {(p.get("old_size"), p.get("old_root")): p for p in proofs if isinstance(p, dict)}
    for item in items:
        old = int(item["tree_size"])
        if old == size:
            if item["root_hash"] != latest["root_hash"]:
                raise Failure("forged checkpoint", f"checkpoints.json: two signed roots for tree size {size}")
            continue
        if old > size:
            raise Failure("forged checkpoint", f"checkpoints.json: a checkpoint of {old} entries is larger than the latest")
        proof = by_old.get((old, item["root_hash"]))
        if proof is None:
            raise Failure("broken consistency proof", f"proofs/consistency.json: no proof from tree size {old} to {size}")
        nodes = [_hex(node, f"proofs/consistency.json: proof from {old}") for node in proof.get("proof") or []]
        if proof.get("new_size") != size or not v.verify_consistency(old, size, _hex(item["root_hash"], "old root"),
                                                                      root_hash, nodes):
            raise Failure("broken consistency proof", f"proofs/consistency.json: the proof from tree size {old} to "
                          f"{size} does not lead from one signed root to the other")
    return latest, len(items), witnessed


def check_cosignatures(root: Path, items: list[dict[str, Any]], given_keys: Sequence[str] = (),
                       given_required: int | None = None) -> str:
    """Witness cosignatures (C2SP tlog-cosignature): every cosignature present from a known witness
    must verify, and the checkpoint the policy names must carry at least M of them.

    The policy is the auditor's when given (``--witness-key`` ... ``--witnesses-required M``, keys
    obtained out of band; M defaults to all of them), else the pack's ``keys/witnesses.json``
    (``{"keys": [vkey, ...], "required": M, "tree_size": N}``: the operator's witnesses and
    requirement). The fresh checkpoint is signed as the pack is made, before any witness saw it, so
    N names the newest earlier one (the auditor's policy applies to that one too). The checks are
    the standalone verifier's (``read_witness_key``, ``check_cosignatures``). Returns what was found.
    """
    policy = _json(root, WITNESSES) if (root / WITNESSES).is_file() else {}
    if not given_keys and not policy:
        return "no witness policy"
    read, check = getattr(v, "read_witness_key", None), getattr(v, "check_cosignatures", None)
    if read is None or check is None:
        raise Failure("malformed file", f"{WITNESSES}: this latentops_audit_verify.py cannot check witness cosignatures")
    earlier = [int(item.get("tree_size") or 0) for item in items[1:] if item.get("tree_size") != items[0].get("tree_size")]
    size = policy.get("tree_size") if policy.get("tree_size") is not None else max(earlier, default=None)
    texts, source = ([str(key) for key in given_keys], "--witness-key") if given_keys else (
        [str(key) for key in policy.get("keys") or []], WITNESSES)
    try:
        keys = [read(text) for text in texts]
        required = (len(keys) if given_required is None else given_required) if given_keys else int(policy.get("required") or 0)
        best: tuple[dict[str, Any], list[str]] | None = None
        for item in items:  # every cosignature present must verify
            cosigned = check(item, keys, 0, f"checkpoints.json: checkpoint of tree size {item.get('tree_size')}")
            if item.get("tree_size") == size and (best is None or len(cosigned) > len(best[1])):
                best = (item, cosigned)  # the fresh checkpoint may share the size, uncosigned
        if required and best is None:
            raise Failure("missing cosignature", f"{source}: no checkpoint of tree size {size} in checkpoints.json")
        if required and best is not None:
            check(best[0], keys, required, f"checkpoints.json: checkpoint of tree size {size}")
        found = best[1] if best else []
    except v.Unusable as error:
        raise Failure("damaged key", f"{source}: {error}") from None
    except v.Damaged as damage:
        raise Failure("forged cosignature" if damage.kind == "witness_bad" else "missing cosignature",
                      damage.detail) from None
    return (f"{len(found)} of {len(keys)} witnesses ({source}) cosigned the checkpoint of tree size {size}, "
            f"{required} required")


def check_entries(root: Path, manifest: dict[str, Any], latest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each entry's hash, its link to the one before, its inclusion proof against the latest signed root."""
    entries = _lines(root, "entries.jsonl")
    proofs = {item["seq"]: item for item in _lines(root, "proofs/inclusion.jsonl")}
    stated = manifest.get("entries") or {}
    if len(entries) != stated.get("count"):
        raise Failure("missing entry", f"entries.jsonl holds {len(entries)} entries, the manifest says {stated.get('count')}")
    size, root_hash = int(latest["tree_size"]), _hex(latest["root_hash"], "latest root")
    window = manifest["window"]
    previous: dict[str, Any] | None = None
    inside = 0
    for entry in entries:
        seq = entry["seq"]
        missing = [name for name in v.ENTRY_FIELDS if name not in entry]
        if missing:
            raise Failure("modified entry", f"seq {seq}: missing {', '.join(missing)}")
        expected = stated.get("first_seq") if previous is None else previous["seq"] + 1
        if seq != expected:
            raise Failure("missing entry", f"expected seq {expected}, found seq {seq}: entries were removed or reordered")
        try:
            recomputed = v.entry_hash(entry)
        except (TypeError, ValueError, AttributeError) as error:
            raise Failure("modified entry", f"seq {seq}: a malformed field ({error})") from None
        if recomputed != entry["hash"]:
            raise Failure("modified entry", f"seq {seq}: its hash does not match its content")
        proof = proofs.get(seq)
        if proof is None:
            raise Failure("bad inclusion proof", f"seq {seq}: proofs/inclusion.jsonl has no proof for it")
        nodes = [_hex(node, f"proofs/inclusion.jsonl: seq {seq}") for node in proof.get("proof") or []]
        leaf = v.leaf_hash(_hex(entry["hash"], f"entries.jsonl: seq {seq} hash"))
        if not v.verify_inclusion(seq, size, leaf, nodes, root_hash):
            raise Failure("bad inclusion proof", f"seq {seq}: the proof does not lead to the signed root of tree size {size}")
        if previous is not None and entry["prev_hash"] != previous["hash"]:
            raise Failure("modified entry", f"seq {seq}: its link to seq {previous['seq']} is broken")
        if window["from"] <= entry["at"] < window["to"]:
            inside += 1
        previous = entry
    if inside != stated.get("in_window"):
        raise Failure("missing entry", f"{inside} entries lie in the window, the manifest says {stated.get('in_window')}")
    if previous is not None and previous["seq"] == size - 1 and previous["hash"] != latest["head_hash"]:
        raise Failure("modified entry", f"seq {previous['seq']}: not the head the latest checkpoint signs")
    return entries


def revision_of(root: Path, item: dict[str, Any]) -> str:
    """SHA-256 over each module (path NUL source NUL, paths in order), then the data file's bytes."""
    digest = hashlib.sha256()
    folder = f"policy/{item['revision']}"
    for path in sorted(item.get("modules") or []):
        digest.update(path.encode("utf-8") + b"\0" + (root / folder / "modules" / path).read_bytes() + b"\0")
    data = (root / item["data"]).read_bytes()
    try:
        json.loads(data)
    except ValueError as error:
        raise Failure("policy revision mismatch", f"{item['data']}: not JSON ({error})") from None
    digest.update(data)
    return digest.hexdigest()


def check_policy(root: Path, entries: list[dict[str, Any]], window: dict[str, str]) -> tuple[int, list[str]]:
    """Each revision's Rego and data hash to its id; every revision an entry in the window names is here
    (or listed as unavailable, with why)."""
    document = _json(root, "policy/revisions.json")
    revisions = {item["revision"]: item for item in document.get("revisions") or []}
    unavailable = {item["revision"]: item for item in document.get("unavailable") or []}
    for revision, item in sorted(revisions.items()):
        for path in [f"policy/{revision}/modules/{m}" for m in item.get("modules") or []] + [item.get("data", "")]:
            if not (root / path).is_file():
                raise Failure("missing file", path)
        computed = revision_of(root, item)
        if computed != revision:
            raise Failure("policy revision mismatch", f"policy/{revision}: its Rego and data hash to {computed}, "
                          "not to the revision id the decisions name")
    for entry in entries:
        if not window["from"] <= entry["at"] < window["to"] or not entry["action"].startswith("policy."):
            continue
        try:
            named = json.loads(entry["details"]).get("revision")
        except (ValueError, AttributeError):
            continue
        if isinstance(named, str) and re.match(r"^[0-9a-f]{64}$", named) and named not in revisions \
                and named not in unavailable:
            raise Failure("missing policy revision", f"seq {entry['seq']} names policy revision {named}, which the pack "
                          "neither holds nor lists as unavailable")
    return len(revisions), sorted(unavailable)


def verify(root: Path, public_keys: list[Path], witness_keys: Sequence[str] = (),
           witnesses_required: int | None = None) -> str:
    manifest = check_files(root)
    keyring, source = read_keys(root, public_keys)
    latest, count, witnessed = check_checkpoints(root, keyring, manifest, witness_keys, witnesses_required)
    entries = check_entries(root, manifest, latest)
    revisions, unavailable = check_policy(root, entries, manifest["window"])
    window, stated = manifest["window"], manifest["entries"]
    span = f" (seq {stated['first_seq']} to {stated['last_seq']})" if entries else ""
    note = (f"; {len(unavailable)} named revision(s) the operator could not rebuild: {', '.join(unavailable)}"
            if unavailable else "")
    return (f"OK: {stated['in_window']} entries in the window {window['from']} to {window['to']}, {len(entries)} "
            f"entries{span} verified against the checkpoint of tree size {latest['tree_size']} (root "
            f"{latest['root_hash']}, key {latest['key_id']}, signed {latest['at']}); {count} checkpoints signed and "
            f"consistent; {witnessed}; {revisions} policy revision(s) hash to their ids{note}; keys from {source}: "
            f"{', '.join(sorted(keyring))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a latentops evidence pack (run inside the unpacked pack).")
    parser.add_argument("--public-key", type=Path, action="append", default=[],
                        help="check the checkpoints with this keyring (obtained out of band) instead of the pack's")
    parser.add_argument("--witness-key", action="append", default=[], metavar="VKEY_OR_FILE",
                        help="a witness's cosignature key (obtained out of band); replaces the pack's witness list")
    parser.add_argument("--witnesses-required", type=int, default=None, metavar="M",
                        help="with --witness-key: how many of them must have cosigned (default: all)")
    parser.add_argument("--pack", type=Path, default=HERE, help="the unpacked pack (default: this file's folder)")
    args = parser.parse_args(argv)
    if args.witnesses_required is not None and not (0 <= args.witnesses_required <= len(args.witness_key)):
        parser.error("--witnesses-required: must be between 0 and the number of --witness-key given")
    try:
        print(verify(args.pack.resolve(), args.public_key, args.witness_key, args.witnesses_required))
        return 0
    except Failure as failure:
        print(f"FAIL: {failure.kind}: {failure.detail}")
        return 1
    except (KeyError, TypeError, ValueError, OSError) as error:
        print(f"FAIL: malformed file: {type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
