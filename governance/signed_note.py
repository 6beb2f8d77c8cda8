"""Signed notes, checkpoints and cosignatures as the C2SP specifications write them.

* ``signed-note``: a text ending in a newline, a blank line, then signature lines
  ``— <key name> base64(key hash || signature)`` (U+2014, a space, the name, a space). An Ed25519
  signature (type ``0x01``) signs the text; its key hash is ``SHA-256(name || 0x0A || 0x01 ||
  public key)[:4]``. A verifier key (vkey) is ``name+hex(key hash)+base64(type || public key)``.
* ``tlog-checkpoint``: the text is the origin line, the tree size in decimal, the base64 RFC 6962
  root, then optional extension lines. The log's key name is its origin.
* ``tlog-cosignature`` (cosignature/v1, type ``0x04``): a witness signs ``cosignature/v1\\n`` +
  ``time <POSIX seconds>\\n`` + the checkpoint text, and the signature is the 8-byte big-endian
  timestamp followed by the 64-byte Ed25519 signature.

This module only formats, parses, signs and verifies; it reads no database, so the witness
(``governance/witness.py``) uses it without the platform. ``governance/verifier`` carries its own
standard-library copy of the verification half.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentops.core.errors import InvalidInput

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
EM_DASH = "\u2014"
MAX_SIGNATURES = 64
COSIGNATURE_HEADER = "cosignature/v1"
_NAME = re.compile(r"[^\s+]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Signature:
    """One signature line: the key name, the 4-byte key hash and the signature bytes after it."""

    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {base64.b64encode(self.key_hash + self.signature).decode('ascii')}\n"


@dataclass(frozen=True)
class Note:
    text: str  # the signed text, with its final newline
    signatures: list[Signature] = field(default_factory=list)

    def render(self) -> str:
        return self.text + "\n" + "".join(signature.line() for signature in self.signatures)


@dataclass(frozen=True)
class Verifier:
    """A public key as a vkey names it."""

    name: str
    key_hash: bytes
    kind: int  # the signature type byte: ED25519 or COSIGNATURE_V1
    public_key: bytes  # 32 raw bytes

    def vkey(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(bytes([self.kind]) + self.public_key).decode()}"

    def ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)


def check_name(name: str, what: str = "key name") -> str:
    """A key name or origin: non-empty, no Unicode spaces, no plus."""
    if not name or not _NAME.fullmatch(name):
        raise InvalidInput(f"{what}: must be non-empty without spaces or '+' (got {name!r})")
    return name


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_hash(name: str, kind: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4] (signed-note, tlog-cosignature)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public_key).digest()[:4]


def verifier(name: str, kind: int, key: Ed25519PublicKey | bytes) -> Verifier:
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return Verifier(check_name(name), key_hash(name, kind, raw), kind, raw)


def parse_vkey(text: str) -> Verifier:
    """``name+hex(key hash)+base64(type || key)``; the hash must be the one the key gives."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise InvalidInput(f"vkey: expected name+keyhash+base64key (got {text.strip()[:80]!r})")
    name, hash_hex, key_b64 = parts
    check_name(name, "vkey name")
    try:
        declared = bytes.fromhex(hash_hex)
        material = base64.b64decode(key_b64, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput(f"vkey {name}: the key hash or key is not hex/base64") from None
    if len(declared) != 4 or len(material) != 33 or material[0] not in (ED25519, COSIGNATURE_V1):
        raise InvalidInput(f"vkey {name}: expected a 4-byte key hash and an Ed25519 key of type 0x01 or 0x04")
    found = verifier(name, material[0], material[1:])
    if found.key_hash != declared:
        raise InvalidInput(f"vkey {name}: key hash {hash_hex} does not match its key ({found.key_hash.hex()})")
    return found


def _check_characters(text: str) -> None:
    if any(ord(char) < 0x20 and char != "\n" for char in text):
        raise InvalidInput("note: holds a control character other than newline")


def parse_note(data: str) -> Note:
    """Split a signed note into its text and signature lines (the last blank line separates them)."""
    _check_characters(data)
    if not data.endswith("\n"):
        raise InvalidInput("note: must end with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise InvalidInput("note: no blank line before the signatures")
    text, lines = data[:split + 1], data[split + 2:].splitlines()
    if not lines:
        raise InvalidInput("note: no signature line")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidInput(f"note: more than {MAX_SIGNATURES} signatures")
    return Note(text, [parse_signature_line(line) for line in lines])


def parse_signature_line(line: str) -> Signature:
    parts = line.rstrip("\n").split(" ")
    if len(parts) != 3 or parts[0] != EM_DASH:
        raise InvalidInput(f"note: not a signature line ({line[:80]!r})")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput(f"note: signature of {parts[1]} is not base64") from None
    if len(blob) < 5:
        raise InvalidInput(f"note: signature of {parts[1]} is too short")
    return Signature(check_name(parts[1]), blob[:4], blob[4:])


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint a note text states (tlog-checkpoint)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise InvalidInput("checkpoint: expected origin, size and root lines (and non-empty extension lines)")
    origin, size, root = lines[0], lines[1], lines[2]
    if not _DECIMAL.fullmatch(size):
        raise InvalidInput(f"checkpoint: tree size {size[:30]!r} is not a decimal without leading zeroes")
    try:
        digest = base64.b64decode(root, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidInput("checkpoint: the root hash is not base64") from None
    if len(digest) != 32:
        raise InvalidInput(f"checkpoint: the root hash has {len(digest)} bytes, not 32")
    return Checkpoint(origin, int(size), digest, tuple(lines[3:-1]))


# --- Ed25519 note signatures (type 0x01) -------------------------------------------------------


def sign(text: str, name: str, private_key: Ed25519PrivateKey) -> Signature:
    public = raw_public_key(private_key.public_key())
    return Signature(name, key_hash(name, ED25519, public), private_key.sign(text.encode()))


def signature_valid(text: str, signature: Signature, key: Verifier) -> bool:
    """Whether ``signature`` is ``key``'s (name and hash match) and verifies over ``text``."""
    if signature.name != key.name or signature.key_hash != key.key_hash or key.kind != ED25519:
        return False
    try:
        key.ed25519().verify(signature.signature, text.encode())
    except (InvalidSignature, ValueError):
        return False
    return True


# --- cosignature/v1 (type 0x04) ----------------------------------------------------------------


def cosignature_message(text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{text}".encode()


def cosign(text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> Signature:
    if not 0 < timestamp < 2 ** 63:
        raise InvalidInput(f"cosignature: timestamp {timestamp} out of range")
    public = raw_public_key(private_key.public_key())
    signed = private_key.sign(cosignature_message(text, timestamp))
    return Signature(name, key_hash(name, COSIGNATURE_V1, public), timestamp.to_bytes(8, "big") + signed)


def cosignature_time(text: str, signature: Signature, key: Verifier) -> int | None:
    """The timestamp of a valid cosignature/v1 by ``key`` over ``text``; None if it is not one."""
    if signature.name != key.name or signature.key_hash != key.key_hash or key.kind != COSIGNATURE_V1:
        return None
    if len(signature.signature) != 72:
        return None
    timestamp = int.from_bytes(signature.signature[:8], "big")
    if not 0 < timestamp < 2 ** 63:
        return None
    try:
        key.ed25519().verify(signature.signature[8:], cosignature_message(text, timestamp))
    except (InvalidSignature, ValueError):
        return None
    return timestamp
