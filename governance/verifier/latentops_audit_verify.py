#!/usr/bin/env python3
"""Standalone verifier for latentops audit exports. Python 3.9+ standard library only.

An outside auditor runs this on an export without trusting the latentops server, its database or
its code:

    python3 latentops_audit_verify.py audit.jsonl --public-key latentops-audit.pub \
        [--public-key older-key.pub ...] [--proofs audit.jsonl.proofs.json] [--checkpoints checkpoints.jsonl] \
        [--consistency later-proofs.json ...] [--witness-key VKEY-or-FILE ... --witnesses-required M]

A public key file may hold several PEM keys (the operator's keyring from
``latentops audit public-key``): every checkpoint is checked with the key its ``key_id`` names, so
checkpoints signed before a key rotation still verify.

It checks, with its own implementations of RFC 8785 (for the entry fields), RFC 9162 (Merkle
hashing and proof verification) and RFC 8032 (Ed25519 verification):

1. the export's checkpoint is signed by a public key you obtained from the operator out of band
   (keys inside the proofs file are not trusted);
2. every entry's hash recomputes from its fields, and its inclusion proof leads to the signed root;
3. for a complete export (no filters): sequence numbers 0..n-1 with no gap, every ``prev_hash``
   link, the Merkle root over all entries and the signed head hash;
4. every earlier checkpoint in the proofs file is signed and consistent with the export's one;
5. with ``--checkpoints`` (a copy of the external append-only sink): every statement there is
   signed; one of the export's size must carry its root; a complete export must give the root of
   every smaller one (so no entry was rewritten after it was checkpointed); a larger one counts as
   growth only with a consistency proof from the export's tree to it (the proofs file's ``later``
   list, or ``--consistency`` files from ``latentops audit consistency --from-size N --json``).
   Without one it is evidence that the log was cut back and re-exported: the verifier reports
   possible truncation and exits 1;
6. with ``--witness-key`` (cosignature/v1 vkeys of independent witnesses, obtained from the witness
   operators): every cosignature by those keys on the export's checkpoint note verifies, and at
   least ``--witnesses-required`` of them (default: all) cosigned it. A witness cosigns only a
   checkpoint consistent with everything it cosigned before, so the operator could not have shown
   it a rewritten or rolled-back history.

Checkpoints come in two forms: the first signs ``latentops audit checkpoint v1`` text with a bare
base64 signature; the second is a C2SP signed note (``checkpoint_note_text``: origin, size, base64
root, ``head`` and ``time`` extension lines) whose ``signature`` is the note signature line
``— <origin> base64(key hash || signature)``. Both verify (``check_statement``).

Functions for other tools (an evidence pack re-runs these checks): ``parse_vkey``,
``parse_signature_line``, ``parse_note``, ``note_key_hash``, ``checkpoint_note_text``,
``verify_note_signature``, ``verify_cosignature`` and ``check_cosignatures``.

Exit status: 0 verified, 1 damage found (first bad seq and kind printed), 2 unusable input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "latentops-audit-export/v1"
STATEMENT_HEADER = "latentops audit checkpoint v1"
GENESIS_HASH = "0" * 64
ENTRY_FIELDS = ("seq", "at", "actor", "action", "resource", "outcome", "details", "prev_hash", "hash")


class Unusable(Exception):
    """The input cannot be read: exit 2."""


class Damaged(Exception):
    """The evidence does not verify: exit 1."""

    def __init__(self, kind: str, seq: int | None, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.seq, self.detail = kind, seq, detail


# --- RFC 8032 Ed25519 verification (the reference algorithm of section 6) --------------------

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_I = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _I % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
assert _GX is not None
_G = (_GX, _GY, 1, _GX * _GY % _P)


def _add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    A = (a[1] - a[0]) * (b[1] - b[0]) % _P
    B = (a[1] + a[0]) * (b[1] + b[0]) % _P
    C = 2 * a[3] * b[3] * _D % _P
    D = 2 * a[2] * b[2] % _P
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F % _P, G * H % _P, F * G % _P, E * H % _P)


def _mul(s: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _add(result, point)
        point = _add(point, point)
        s >>= 1
    return result


def _equal(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _decompress(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    a_point, r_point = _decompress(public), _decompress(signature[:32])
    if a_point is None or r_point is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _L
    return _equal(_mul(s, _G), _add(r_point, _mul(h, a_point)))


# --- RFC 9162 Merkle hashing ------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        node, size = leaf, self.size
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
        self.hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return hashlib.sha256(b"").digest()
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    if not 0 <= old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# --- RFC 8785 for the entry (its values are strings and integers only) -------------------------


def _jcs_string(value: str) -> str:
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20:
            out.append({8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code, f"\\u{code:04x}"))
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def entry_hash(entry: dict[str, Any]) -> str:
    parts = []
    for name in sorted(ENTRY_FIELDS[:-1]):  # keys are ASCII: code-point order is UTF-16 order
        value = entry[name]
        parts.append(_jcs_string(name) + ":" + (str(value) if name == "seq" else _jcs_string(value)))
    canonical = ("{" + ",".join(parts) + "}").encode("utf-8")
    return hashlib.sha256(bytes.fromhex(entry["prev_hash"]) + canonical).hexdigest()


# --- reading the evidence ---------------------------------------------------------------------


def _hex(value: Any, where: str, size: int = 32) -> bytes:
    try:
        data = bytes.fromhex(str(value))
    except ValueError:
        raise Unusable(f"{where}: not hex ({value!r})") from None
    if len(data) != size:
        raise Unusable(f"{where}: expected {size} bytes, got {len(data)}")
    return data


PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----(.+?)-----END PUBLIC KEY-----", re.DOTALL)
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def read_public_keys(path: Path) -> list[bytes]:
    """Every Ed25519 public key in ``path``: PEM blocks (text around them is ignored), or one raw
    32-byte key as hex or base64."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise Unusable(f"{path}: cannot read the public key ({error})") from None
    keys = []
    try:
        if "-----BEGIN" in text:
            blocks = PEM_BLOCK.findall(text)
            if not blocks:
                raise Unusable(f"{path}: no PEM PUBLIC KEY block")
            for block in blocks:
                der = base64.b64decode("".join(block.split()))
                # SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix, then the 32-byte key.
                if len(der) != 44 or der[:12] != ED25519_SPKI_PREFIX:
                    raise Unusable(f"{path}: not an Ed25519 public key")
                keys.append(der[12:])
            return keys
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise Unusable(f"{path}: not an Ed25519 public key (PEM, hex or base64)") from None
    if len(raw) != 32:
        raise Unusable(f"{path}: an Ed25519 public key has 32 bytes, this has {len(raw)}")
    return [raw]


def read_public_key(path: Path) -> bytes:
    keys = read_public_keys(path)
    if len(keys) != 1:
        raise Unusable(f"{path}: holds {len(keys)} public keys, expected one")
    return keys[0]


def read_keyring(paths: Sequence[Path]) -> dict[str, bytes]:
    """key id -> public key, from every file given."""
    return {key_id(key): key for path in paths for key in read_public_keys(path)}


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:32]


# --- C2SP signed notes, checkpoints and cosignatures -------------------------------------------

EM_DASH = "\u2014"
NOTE_ED25519 = 0x01
COSIGNATURE_V1 = 0x04


def note_key_hash(name: str, kind: int, public: bytes) -> bytes:
    """signed-note key hash: SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def parse_vkey(text: str) -> tuple[str, bytes, int, bytes]:
    """``name+hex(key hash)+base64(type || key)`` -> (name, key hash, type, 32-byte key); the hash
    must be the one the key gives."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not parts[0]:
        raise Unusable(f"vkey: expected name+keyhash+base64key, got {text.strip()[:80]!r}")
    try:
        declared, material = bytes.fromhex(parts[1]), base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error):
        raise Unusable(f"vkey {parts[0]}: the key hash or key is not hex/base64") from None
    if len(declared) != 4 or len(material) != 33:
        raise Unusable(f"vkey {parts[0]}: expected a 4-byte key hash and a 32-byte Ed25519 key with its type byte")
    if note_key_hash(parts[0], material[0], material[1:]) != declared:
        raise Unusable(f"vkey {parts[0]}: the key hash does not match the key")
    return parts[0], declared, material[0], material[1:]


def parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    """``— name base64(key hash || signature)`` -> (name, key hash, signature)."""
    parts = line.rstrip("\n").split(" ")
    if len(parts) != 3 or parts[0] != EM_DASH or not parts[1]:
        raise Unusable(f"not a note signature line: {line[:80]!r}")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error):
        raise Unusable(f"the signature of {parts[1]} is not base64") from None
    if len(blob) < 5:
        raise Unusable(f"the signature of {parts[1]} is too short")
    return parts[1], blob[:4], blob[4:]


def parse_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """A signed note -> (its text with the final newline, its signature lines); the last blank line
    separates them."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise Unusable("not a signed note: no blank line before the signatures, or no final newline")
    return note[:split + 1], [parse_signature_line(line) for line in note[split + 2:].splitlines()]


def checkpoint_note_text(item: dict[str, Any], origin: str) -> str:
    """The C2SP checkpoint text a second-form checkpoint signs, rebuilt from its fields."""
    root = base64.b64encode(bytes.fromhex(str(item["root_hash"]))).decode("ascii")
    return f"{origin}\n{int(item['tree_size'])}\n{root}\nhead {item['head_hash']}\ntime {item['at']}\n"


def verify_note_signature(text: str, name: str, key_hash: bytes, signature: bytes, public: bytes) -> bool:
    """An Ed25519 (type 0x01) note signature by ``public`` named ``name`` over ``text``."""
    return key_hash == note_key_hash(name, NOTE_ED25519, public) and ed25519_verify(public, text.encode(), signature)


def verify_cosignature(text: str, name: str, key_hash: bytes, signature: bytes, vkey: tuple[str, bytes, int, bytes]) -> int | None:
    """The timestamp of a valid cosignature/v1 by ``vkey`` over checkpoint ``text``, else None.

    The signature is the 8-byte big-endian timestamp then Ed25519 over ``cosignature/v1``,
    ``time <timestamp>`` and the checkpoint text."""
    key_name, key_id, kind, public = vkey
    if (name, key_hash) != (key_name, key_id) or kind != COSIGNATURE_V1 or len(signature) != 72:
        return None
    timestamp = int.from_bytes(signature[:8], "big")
    message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
    return timestamp if 0 < timestamp < 2 ** 63 and ed25519_verify(public, message, signature[8:]) else None


def check_cosignatures(item: dict[str, Any], witness_keys: Sequence[tuple[str, bytes, int, bytes]],
                       required: int, where: str) -> list[str]:
    """The witnesses (``name+keyhash``) whose cosignature on checkpoint ``item`` verifies.

    A cosignature line from a given key that does not verify fails (``witness_bad``); fewer than
    ``required`` valid ones fail (``witness_missing``, naming the keys without one)."""
    signature = str(item.get("signature", ""))
    if not signature.startswith(EM_DASH + " ") or "note" not in item:
        cosigned: list[str] = []
        text = ""
        lines: list[tuple[str, bytes, bytes]] = []
    else:
        text = checkpoint_note_text(item, parse_signature_line(signature)[0])
        lines = parse_note(str(item["note"]))[1]
        cosigned = []
    for key in witness_keys:
        label = f"{key[0]}+{key[1].hex()}"
        for name, key_hash, blob in lines:
            if (name, key_hash) == (key[0], key[1]):
                if verify_cosignature(text, name, key_hash, blob, key) is None:
                    raise Damaged("witness_bad", None, f"{where}: the cosignature of {label} does not verify")
                cosigned.append(label)
                break
    if len(cosigned) < required:
        missing = [f"{key[0]}+{key[1].hex()}" for key in witness_keys if f"{key[0]}+{key[1].hex()}" not in cosigned]
        raise Damaged("witness_missing", None, f"{where} (tree size {item.get('tree_size')}): {len(cosigned)} of "
                      f"{len(witness_keys)} witnesses cosigned it, {required} required; missing: {', '.join(missing)}")
    return cosigned


def read_witness_key(value: str) -> tuple[str, bytes, int, bytes]:
    """A witness's cosignature/v1 vkey, given as text (``vkey`` or ``vkey@url``) or a file holding it."""
    text = value.strip()
    if text.count("+") < 2:
        try:
            text = Path(text).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise Unusable(f"--witness-key {value}: neither a vkey nor a readable file ({error})") from None
    key = parse_vkey(text.rpartition("@")[0] if "@" in text else text)
    if key[2] != COSIGNATURE_V1:
        raise Unusable(f"--witness-key {key[0]}: type {key[2]:#04x}, a witness cosignature key has type 0x04")
    return key


def statement_body(item: dict[str, Any]) -> bytes:
    return (f"{STATEMENT_HEADER}\ntree_size {int(item['tree_size'])}\nroot {item['root_hash']}\n"
            f"head {item['head_hash']}\ntime {item['at']}\n").encode()


def check_statement(item: dict[str, Any], keyring: dict[str, bytes], where: str) -> None:
    """A checkpoint statement of either form is signed by the key its ``key_id`` names."""
    line = None
    try:
        if str(item["signature"]).startswith(EM_DASH + " "):
            line = parse_signature_line(str(item["signature"]))
            signature, body = b"", b""
        else:
            signature = base64.b64decode(str(item["signature"]), validate=True)
            body = statement_body(item)
    except (KeyError, ValueError, TypeError, binascii.Error) as error:
        raise Unusable(f"{where}: not a checkpoint statement ({error})") from None
    public = keyring.get(str(item.get("key_id")))
    if public is None:
        raise Damaged("forged_checkpoint", None, f"{where}: signed by key {item.get('key_id')}, which is not among "
                      f"the given public keys ({', '.join(sorted(keyring))}): a forged checkpoint, or the key given is wrong "
                      "(give every key of the keyring, old ones too)")
    if line is not None:  # the second form: a C2SP checkpoint note signed by the origin's key
        name, key_hash, note_signature = line
        if not verify_note_signature(checkpoint_note_text(item, name), name, key_hash, note_signature, public):
            raise Damaged("forged_checkpoint", None, f"{where}: the signature does not verify (note signature of {name})")
        return
    if not ed25519_verify(public, body, signature):
        raise Damaged("forged_checkpoint", None, f"{where}: the signature does not verify")


def read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise Unusable(f"{path}: cannot read ({error})") from None
    entries = []
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or not set(ENTRY_FIELDS) <= set(reader.fieldnames):
            raise Unusable(f"{path}: not a latentops audit CSV export (header {reader.fieldnames})")
        for number, row in enumerate(reader, start=2):
            try:
                entry: dict[str, Any] = {name: row[name] for name in ENTRY_FIELDS}
                entry["seq"] = int(row["seq"])
                entry["proof"] = row["proof"].split() if row.get("proof") else []
            except (ValueError, TypeError, KeyError) as error:
                raise Unusable(f"{path}: line {number}: {error}") from None
            entries.append(entry)
        return entries
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
                raise TypeError("not an entry object with an integer seq")
            missing = [name for name in ENTRY_FIELDS if name not in entry]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except (ValueError, TypeError) as error:
            raise Unusable(f"{path}: line {number}: {error}") from None
        entries.append(entry)
    return entries


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise Unusable(f"{path}: cannot read JSON ({error})") from None


# --- verification -----------------------------------------------------------------------------


CONSISTENCY_FORMAT = "latentops-audit-consistency/v1"


def read_consistency(paths: Sequence[Path], size: int) -> dict[int, list[list[bytes]]]:
    """Consistency proofs from tree size ``size`` to later sizes, from ``latentops audit consistency
    --from-size N --json`` (or ``consistency OLD NEW --json``) files: new size -> candidate proofs.
    Nothing in them is trusted: each proof is checked against roots signed with the given keys."""
    found: dict[int, list[list[bytes]]] = {}
    for path in paths:
        data = read_json(path)
        if isinstance(data, dict) and data.get("format") == CONSISTENCY_FORMAT:
            start, items = data.get("from_size"), data.get("proofs") or []
            pairs = [(item["checkpoint"]["tree_size"], item.get("proof") or []) for item in items]
        elif isinstance(data, dict) and "new_size" in data and "old_size" in data:
            start, pairs = data["old_size"], [(data["new_size"], data.get("proof") or [])]
        else:
            raise Unusable(f"{path}: not a consistency proof ({CONSISTENCY_FORMAT} or `audit consistency --json`)")
        if start != size:
            raise Unusable(f"{path}: proves consistency from tree size {start}, the export's checkpoint has {size}")
        for new, proof in pairs:
            found.setdefault(int(new), []).append([_hex(node, f"{path}: proof to {new}") for node in proof])
    return found


def check_later(item: dict[str, Any], where: str, size: int, root: bytes,
                proofs: dict[int, list[list[bytes]]]) -> None:
    """A signed statement larger than the export's checkpoint is growth only with a consistency proof."""
    later = int(item["tree_size"])
    later_root = _hex(item["root_hash"], f"{where} root")
    candidates = proofs.get(later, [])
    if not candidates:
        raise Damaged("truncated", size, f"{where} signs a tree of {later} entries, but the export's checkpoint "
                      f"covers {size} and no consistency proof links them: the log may have been truncated (rolled "
                      f"back) since that checkpoint. Ask the operator for `latentops audit consistency --from-size "
                      f"{size} --json` and pass it with --consistency")
    if not any(verify_consistency(size, later, root, later_root, proof) for proof in candidates):
        raise Damaged("truncated", size, f"{where} signs a tree of {later} entries and the consistency proof from "
                      f"{size} entries does not verify: the export's log is not a prefix of it (rolled back or "
                      "rewritten)")


def verify(export: Path, proofs_path: Path, keyring: dict[str, bytes], sink: Path | None,
           consistency: Sequence[Path] = (), witness_keys: Sequence[tuple[str, bytes, int, bytes]] = (),
           witnesses_required: int = 0) -> str:
    proofs = read_json(proofs_path)
    if not isinstance(proofs, dict) or proofs.get("format") != EXPORT_FORMAT:
        raise Unusable(f"{proofs_path}: not a {EXPORT_FORMAT} proofs file")
    checkpoint = proofs["checkpoint"]
    check_statement(checkpoint, keyring, f"{proofs_path}: checkpoint")
    size, root = int(checkpoint["tree_size"]), _hex(checkpoint["root_hash"], "checkpoint root")

    entries = read_entries(export)
    if len(entries) != proofs.get("entries"):
        raise Damaged("deleted", None, f"{export} has {len(entries)} entries, the proofs file says {proofs.get('entries')}")
    frontier, expected_prev = Frontier(), GENESIS_HASH
    for entry in entries:
        seq = entry["seq"]
        try:
            recomputed = entry_hash(entry)
        except (TypeError, ValueError, AttributeError) as error:
            raise Unusable(f"{export}: entry {seq}: malformed field ({error})") from None
        if recomputed != entry["hash"]:
            raise Damaged("modified", seq, "the entry's hash does not match its content")
        leaf = leaf_hash(_hex(entry["hash"], f"entry {seq} hash"))
        proof = [_hex(node, f"entry {seq} proof") for node in entry.get("proof") or []]
        if not verify_inclusion(seq, size, leaf, proof, root):
            raise Damaged("modified", seq, f"the inclusion proof does not lead to the signed root of tree size {size}")
        if proofs.get("complete"):
            if seq != frontier.size:
                kind = "deleted" if seq > frontier.size else "reordered"
                raise Damaged(kind, frontier.size, f"expected seq {frontier.size}, found {seq}")
            if entry["prev_hash"] != expected_prev:
                raise Damaged("modified", seq - 1, "the chain link to the previous entry is broken")
            frontier.append(leaf)
            expected_prev = entry["hash"]
    if proofs.get("complete"):
        if frontier.size != size:
            raise Damaged("truncated", frontier.size, f"the checkpoint covers {size} entries, the export has {frontier.size}")
        if frontier.root() != root or (size and expected_prev != checkpoint["head_hash"]):
            raise Damaged("modified", None, "the entries do not give the signed root")

    for number, item in enumerate(proofs.get("consistency") or [], start=1):
        old = item["checkpoint"]
        check_statement(old, keyring, f"{proofs_path}: earlier checkpoint {number}")
        nodes = [_hex(node, f"consistency proof {number}") for node in item.get("proof") or []]
        if not verify_consistency(int(old["tree_size"]), size, _hex(old["root_hash"], "old root"), root, nodes):
            raise Damaged("forged_checkpoint", None, f"earlier checkpoint of size {old['tree_size']} is not consistent "
                          f"with the checkpoint of size {size}: the log was rewritten between them")

    later_proofs = read_consistency(consistency, size)
    for item in proofs.get("later") or []:
        try:
            nodes = [_hex(node, f"{proofs_path}: later proof") for node in item.get("proof") or []]
            later_proofs.setdefault(int(item["checkpoint"]["tree_size"]), []).append(nodes)
        except (KeyError, TypeError, ValueError) as error:
            raise Unusable(f"{proofs_path}: malformed later proof ({error})") from None
    for number, item in enumerate(proofs.get("later") or [], start=1):
        check_statement(item["checkpoint"], keyring, f"{proofs_path}: later checkpoint {number}")
        check_later(item["checkpoint"], f"{proofs_path}: later checkpoint {number}", size, root, later_proofs)

    sink_note = ""
    if sink is not None:
        statements = []
        try:
            sink_lines = sink.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise Unusable(f"{sink}: cannot read ({error})") from None
        for number, line in enumerate(sink_lines, start=1):
            if line.strip():
                try:
                    statements.append((number, json.loads(line)))
                except ValueError as error:
                    raise Unusable(f"{sink}: line {number}: {error}") from None
        roots = {}
        if proofs.get("complete"):
            replay, replay_root = Frontier(), {0: hashlib.sha256(b"").digest()}
            for entry in entries:
                replay.append(leaf_hash(bytes.fromhex(entry["hash"])))
                replay_root[replay.size] = replay.root()
            roots = replay_root
        for number, item in statements:
            check_statement(item, keyring, f"{sink}: line {number}")
            item_size = int(item["tree_size"])
            if item_size == size and item["root_hash"] != checkpoint["root_hash"]:
                raise Damaged("forged_checkpoint", None, f"{sink}: line {number} signs another root for size {size}")
            if item_size in roots and roots[item_size].hex() != item["root_hash"]:
                raise Damaged("modified", None, f"{sink}: line {number}: the export's first {item_size} entries "
                              "do not give the root signed there")
            if item_size > size:
                # Growth only when proven: otherwise the log may have been cut back and re-exported.
                check_later(item, f"{sink}: line {number}", size, root, later_proofs)
        sink_note = f", {len(statements)} sink statements"
        grown = max([int(item["tree_size"]) for _, item in statements] + [size])
        if grown > size:
            sink_note += f" (the log has grown to {grown} entries since this export, proven consistent)"
    witness_note = ""
    if witness_keys:
        cosigned = check_cosignatures(checkpoint, witness_keys, witnesses_required, f"{proofs_path}: checkpoint")
        witness_note = f", cosigned by {len(cosigned)} of {len(witness_keys)} witnesses ({', '.join(cosigned) or 'none'})"
    kind = "complete chain" if proofs.get("complete") else "filtered entries"
    return (f"OK: {len(entries)} {kind} verified against the checkpoint of tree size {size} "
            f"(root {checkpoint['root_hash']}), {len(proofs.get('consistency') or [])} consistency proofs{sink_note}"
            f"{witness_note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a latentops audit export without the database.")
    parser.add_argument("export", type=Path, help="the exported entries (.jsonl or .csv)")
    parser.add_argument("--proofs", type=Path, help="the proofs file (default: EXPORT.proofs.json)")
    parser.add_argument("--public-key", type=Path, required=True, action="append",
                        help="the operator's Ed25519 public key or keyring (PEM, hex or base64); repeat for old keys")
    parser.add_argument("--checkpoints", type=Path, help="a copy of the external checkpoint sink (JSON lines)")
    parser.add_argument("--consistency", type=Path, action="append", default=[],
                        help="consistency proofs from the export's tree size to later checkpoints "
                             "(`latentops audit consistency --from-size N --json`); repeatable")
    parser.add_argument("--witness-key", action="append", default=[],
                        help="a witness's cosignature vkey (name+keyhash+base64key) or a file holding it; repeatable")
    parser.add_argument("--witnesses-required", type=int, default=None,
                        help="how many of the witness keys must have cosigned the export's checkpoint (default: all)")
    args = parser.parse_args(argv)
    proofs = args.proofs or args.export.with_name(args.export.name + ".proofs.json")
    try:
        keyring = read_keyring(args.public_key)
        witness_keys = [read_witness_key(value) for value in args.witness_key]
        required = len(witness_keys) if args.witnesses_required is None else args.witnesses_required
        if not 0 <= required <= len(witness_keys):
            raise Unusable(f"--witnesses-required: must be between 0 and the {len(witness_keys)} witness keys given")
        print(verify(args.export, proofs, keyring, args.checkpoints, args.consistency, witness_keys, required))
        return 0
    except Damaged as damage:
        where = f" at seq {damage.seq}" if damage.seq is not None else ""
        print(f"FAIL: {damage.kind}{where}: {damage.detail}", file=sys.stderr)
        return 1
    except Unusable as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError) as error:
        print(f"ERROR: malformed evidence: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
