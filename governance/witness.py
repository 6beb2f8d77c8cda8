"""A transparency-log witness (C2SP tlog-witness) for latentops audit logs, run by someone else.

It is meant for another administrative domain than the platform: it reads no database of the
platform and imports nothing of it but the note format and the RFC 9162 proof check. It holds

* its own Ed25519 key (``witness-key.pem``, mode 0600) and name (``witness-name``) in its state
  folder, published as a cosignature/v1 vkey (``latentops witness key``);
* the logs it watches: origin -> the log's public keys (``--log ORIGIN=FILE``, several per origin
  across a key rotation);
* per origin, the size, root and note of the latest checkpoint it cosigned, in SQLite
  (``witness.db``) in its state folder. A check of the old size and the update of the new one run
  in one ``BEGIN IMMEDIATE`` transaction, committed (fsynced) before the answer: two requests can
  never roll the record back, not even from two processes on the same folder.

``POST <prefix>/add-checkpoint`` answers as the specification says: 400 malformed or an old size
above the checkpoint's, 404 unknown origin, 403 no valid signature from a trusted key (or a bad
one), 409 with ``text/x.tlog.size`` when the old size is not the size it last cosigned, 422 when
the consistency proof does not verify, a root differs at equal size or the empty tree's root is
wrong; 200 with one cosignature line. A refused checkpoint of a known log with a valid signature
is kept in a ``refused`` table: it is evidence of a fork or a rollback.
``GET <prefix>/<sha256(origin) hex>/checkpoint`` serves the latest cosigned note with its cosignature.

Why the standard library HTTP server and not the API's FastAPI/uvicorn: one POST and one GET, no
middleware, no settings, no database, and it starts in milliseconds; the fewer moving parts a
witness operator has to trust and patch, the better. It serves one request per thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import merkle, signed_note

log = logging.getLogger(__name__)

KEY_FILE = "witness-key.pem"
NAME_FILE = "witness-name"
STATE_FILE = "witness.db"
MAX_BODY = 256 * 1024
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"


# --- keys ------------------------------------------------------------------------------------


def init(state: Path, name: str) -> signed_note.Verifier:
    """Create the witness's key and name in ``state`` (refused if a key is already there)."""
    signed_note.check_name(name, "witness name")
    state.mkdir(parents=True, exist_ok=True)
    key_path = state / KEY_FILE
    if key_path.exists():
        raise InvalidInput(f"{key_path}: a witness key is already there; `latentops witness key` prints it")
    private = Ed25519PrivateKey.generate()
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        handle.flush()
        os.fsync(handle.fileno())
    (state / NAME_FILE).write_text(name + "\n", encoding="utf-8")
    return signed_note.verifier(name, signed_note.COSIGNATURE_V1, private.public_key())


def load_key(path: Path) -> Ed25519PrivateKey:
    from latentops.governance.checkpoint_keys import load_private_key

    return load_private_key(path, missing="no witness key there (`latentops witness init` creates one)")


def load_name(state: Path, name: str | None = None) -> str:
    if name:
        return signed_note.check_name(name, "witness name")
    try:
        return signed_note.check_name((state / NAME_FILE).read_text(encoding="utf-8").strip(), "witness name")
    except FileNotFoundError:
        raise NotFound(f"{state / NAME_FILE}: no witness name (pass --name or run `latentops witness init`)") from None


def read_log_key(origin: str, path: Path) -> signed_note.Verifier:
    """A log's public key from a file: its vkey (``origin+keyhash+base64(0x01 || key)``), or a PEM,
    hex or base64 Ed25519 public key, which is then named by ``origin``."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"--log {origin}: cannot read {path} ({error})") from None
    if text.count("+") >= 2 and "/" in text.split("+", 1)[0] and "-----BEGIN" not in text:
        key = signed_note.parse_vkey(text)  # a vkey: its name (an origin) holds a slash, raw base64 keys rarely do
        if key.name != origin or key.kind != signed_note.ED25519:
            raise InvalidInput(f"--log {origin}: {path} holds the vkey of {key.name} (type {key.kind:#04x}), not an "
                               f"Ed25519 key named {origin}")
        return key
    try:
        if "-----BEGIN" in text:
            public = serialization.load_pem_public_key(text.encode())
            if not isinstance(public, Ed25519PublicKey):
                raise InvalidInput(f"--log {origin}: {path} is not an Ed25519 public key")
            return signed_note.verifier(origin, signed_note.ED25519, public)
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        return signed_note.verifier(origin, signed_note.ED25519, Ed25519PublicKey.from_public_bytes(raw))
    except (ValueError, binascii.Error):
        raise InvalidInput(f"--log {origin}: {path} is not a vkey or an Ed25519 public key") from None


# --- the witness -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    """The add-checkpoint logic, independent of HTTP."""

    def __init__(self, *, name: str, key: Ed25519PrivateKey, state: Path,
                 logs: Mapping[str, Sequence[signed_note.Verifier]]) -> None:
        self.name, self.key = signed_note.check_name(name, "witness name"), key
        self.verifier = signed_note.verifier(name, signed_note.COSIGNATURE_V1, key.public_key())
        self.logs = {origin: list(keys) for origin, keys in logs.items()}
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / STATE_FILE
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS checkpoints (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                       "root BLOB NOT NULL, note TEXT NOT NULL, updated REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, origin TEXT NOT NULL, "
                       "status INTEGER NOT NULL, reason TEXT NOT NULL, request TEXT NOT NULL, at REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # the record is on disk before the cosignature leaves
        return db

    def latest(self, origin: str) -> tuple[int, bytes, str] | None:
        """The size, root and note (with this witness's cosignature) last cosigned for ``origin``."""
        with self._connect() as db:
            row = db.execute("SELECT size, root, note FROM checkpoints WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), str(row[2]))

    def add_checkpoint(self, body: bytes) -> Answer:
        try:
            old, proof, note_text = _parse_request(body)
            note = signed_note.parse_note(note_text)
            checkpoint = signed_note.parse_checkpoint(note.text)
        except InvalidInput as error:
            return Answer(400, f"{error}\n")
        trusted = self.logs.get(checkpoint.origin)
        if trusted is None:
            return Answer(404, f"unknown origin {checkpoint.origin}\n")
        verified = False
        for signature in note.signatures:
            for key in trusted:
                if signature.name == key.name and signature.key_hash == key.key_hash:
                    if not signed_note.signature_valid(note.text, signature, key):
                        return Answer(403, f"the signature of {key.name} does not verify\n")
                    verified = True
        if not verified:
            return Answer(403, f"no signature from a trusted key of {checkpoint.origin}\n")
        if old > checkpoint.size:
            return Answer(400, f"old size {old} is larger than the checkpoint's {checkpoint.size}\n")
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                answer = self._decide(db, old, proof, note, checkpoint)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return answer

    def _decide(self, db: sqlite3.Connection, old: int, proof: list[bytes], note: signed_note.Note,
                checkpoint: signed_note.Checkpoint) -> Answer:
        row = db.execute("SELECT size, root FROM checkpoints WHERE origin = ?", (checkpoint.origin,)).fetchone()
        size, root = (0, merkle.EMPTY_ROOT) if row is None else (int(row[0]), bytes(row[1]))
        if old != size:
            return Answer(409, f"{size}\n", SIZE_CONTENT_TYPE)
        reason = None
        if checkpoint.size == 0 and checkpoint.root != merkle.EMPTY_ROOT:
            reason = "a tree of size 0 must have the empty tree's root"
        elif old == 0 and proof:
            reason = "a proof from size 0 must be empty"
        elif old == checkpoint.size and checkpoint.root != root:
            reason = f"another root for the tree of {old} entries this witness cosigned: a fork"
        elif 0 < old < checkpoint.size and not merkle.verify_consistency(old, checkpoint.size, root, checkpoint.root, proof):
            reason = f"the consistency proof from {old} to {checkpoint.size} entries does not verify: a fork"
        elif old == checkpoint.size and proof:
            reason = "a proof between equal sizes must be empty"
        if reason is not None:
            db.execute("INSERT INTO refused (origin, status, reason, request, at) VALUES (?, 422, ?, ?, ?)",
                       (checkpoint.origin, reason, note.render(), time.time()))
            log.warning("witness: refused a checkpoint of %s (%d entries): %s", checkpoint.origin, checkpoint.size, reason)
            return Answer(422, reason + "\n")
        cosignature = signed_note.cosign(note.text, self.name, self.key, int(time.time()))
        kept = signed_note.Note(note.text, [*note.signatures, cosignature]).render()
        db.execute("INSERT INTO checkpoints (origin, size, root, note, updated) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                   "note = excluded.note, updated = excluded.updated",
                   (checkpoint.origin, checkpoint.size, checkpoint.root, kept, time.time()))
        log.info("witness: cosigned %s at %d entries", checkpoint.origin, checkpoint.size)
        return Answer(200, cosignature.line())

    def checkpoint_for(self, origin_hash: str) -> Answer:
        for origin in self.logs:
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                found = self.latest(origin)
                if found is not None:
                    return Answer(200, found[2])
        return Answer(404, "no checkpoint cosigned for that origin\n")


def _parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """``old N``, proof lines, a blank line, the checkpoint note."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("request: not UTF-8") from None
    head, separator, note = text.partition("\n\n")
    if not separator:
        raise InvalidInput("request: no blank line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old ") or not first[4:].isdigit() or (first[4:] != "0" and first[4] == "0"):
        raise InvalidInput(f"request: the first line must be `old N` (got {first[:40]!r})")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise InvalidInput(f"request: more than {MAX_PROOF_LINES} proof lines")
    proof = []
    for line in lines[1:]:
        try:
            node = base64.b64decode(line, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidInput("request: a proof line is not base64") from None
        if len(node) != merkle.HASH_SIZE:
            raise InvalidInput("request: a proof line is not a 32-byte hash")
        proof.append(node)
    return int(first[4:]), proof, note


# --- HTTP ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "latentops-witness"
    protocol_version = "HTTP/1.1"  # keep-alive, as the specification recommends
    witness: Witness

    def _send(self, answer: Answer) -> None:
        data = answer.body.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path.rstrip("/").rsplit("/", 1)[-1] != "add-checkpoint":
            self._send(Answer(404, "not found\n"))
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(Answer(411, "Content-Length required\n"))
            return
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._send(Answer(400 if length <= 0 else 413, "body empty or too large\n"))
            return
        self._send(self.witness.add_checkpoint(self.rfile.read(length)))

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) >= 2 and parts[-1] == "checkpoint":
            self._send(self.witness.checkpoint_for(parts[-2]))
        elif parts[-1] in ("health", "healthz"):
            self._send(Answer(200, "ok\n"))
        else:
            self._send(Answer(404, "not found\n"))

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


def server(witness: Witness, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for ``witness`` bound to ``host:port`` (port 0: a free one); call
    ``serve_forever`` on it (``shutdown`` from another thread stops it)."""
    handler = type("WitnessHandler", (_Handler,), {"witness": witness})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd
