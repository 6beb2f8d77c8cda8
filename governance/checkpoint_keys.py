"""The keys of audit checkpoints: the Ed25519 signing key, its key id, and the keyring of every
public key that ever signed checkpoints of this log (``checkpoint-keyring.pem`` beside the signing
key, so checkpoints signed before a rotation still verify). ``checkpoints`` re-exports all of it."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentops.core.errors import InvalidInput, NotFound
from latentops.core.settings import Settings

log = logging.getLogger(__name__)

KEYRING_FILE = "checkpoint-keyring.pem"
# key id -> public key: every key that ever signed checkpoints of this log.
Keyring = dict[str, Ed25519PublicKey]


def default_key_path(settings: Settings) -> Path:
    assert settings.audit_signing_key is not None  # filled in by Settings
    return settings.audit_signing_key


def default_sink_location(settings: Settings) -> str:
    return settings.audit_sink


def keyring_path(key_path: Path) -> Path:
    """Where the keyring of a signing key lives: beside it."""
    return key_path.with_name(KEYRING_FILE)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, created (mode 0600) on first use."""
    if path.exists():
        return load_signing_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    add_to_keyring(path, private.public_key())
    log.warning("created the audit checkpoint signing key %s (key id %s)", path, key_id(private.public_key()))
    return private


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    return load_private_key(path, missing="no audit signing key there (`latentops audit checkpoint` creates one)")


def load_private_key(path: Path, *, missing: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; ``missing`` says what to do when there is none."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise NotFound(f"{path}: {missing}") from None
    except ValueError as error:
        raise InvalidInput(f"{path}: not a PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path}: not an Ed25519 key")
    return key


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM file, or a file holding the raw 32 bytes as hex or base64."""
    keys = load_public_keys(path)
    if len(keys) != 1:
        raise InvalidInput(f"{path}: holds {len(keys)} public keys, expected one")
    return next(iter(keys.values()))


PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(path: Path) -> Keyring:
    """Every public key in a file: PEM blocks (a keyring holds several; text around them is
    ignored), or one raw 32-byte key as hex or base64."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: public key file not found") from None
    try:
        if b"-----BEGIN" in data:
            keys: Keyring = {}
            blocks = PEM_BLOCK.findall(data)
            if not blocks:
                raise ValueError("no PUBLIC KEY block")
            for block in blocks:
                key = serialization.load_pem_public_key(block)
                if not isinstance(key, Ed25519PublicKey):
                    raise InvalidInput(f"{path}: not an Ed25519 public key")
                keys[key_id(key)] = key
            return keys
        text = data.decode("ascii").strip()
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
        return {key_id(key): key}
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{path}: not an Ed25519 public key (PEM, hex or base64): {error}") from None


def keyring_pem(keyring: Keyring) -> str:
    """A keyring as one text: each key's PEM after a line naming its id."""
    return "".join(f"# key id {identifier}\n{public_key_pem(key)}" for identifier, key in keyring.items())


def signing_keyring(key_path: Path) -> Keyring:
    """The keyring beside ``key_path`` plus the current key's public half (either may be absent)."""
    ring = keyring_path(key_path)
    keys = load_public_keys(ring) if ring.exists() else {}
    if key_path.exists():
        current = load_signing_key(key_path).public_key()
        keys[key_id(current)] = current
    return keys


def add_to_keyring(key_path: Path, public_key: Ed25519PublicKey) -> None:
    """Keep ``public_key`` in the keyring beside ``key_path`` (written whole, then renamed)."""
    ring = keyring_path(key_path)
    keys = load_public_keys(ring) if ring.exists() else {}
    if key_id(public_key) in keys:
        return
    keys[key_id(public_key)] = public_key
    write_atomically(ring, keyring_pem(keys).encode("ascii"), 0o644)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``): written whole and fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
