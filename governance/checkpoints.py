"""Signed checkpoints of the audit log, and the external sink they are also written to.

A checkpoint states "the first ``tree_size`` entries have Merkle root ``root_hash`` and the last of
them has entry hash ``head_hash``, at time ``at``", signed with Ed25519. New checkpoints are C2SP
``tlog-checkpoint`` signed notes (``note_text``: origin, size, base64 root, then the extension lines
``head <hex>`` and ``time <UTC>``), so independent witnesses can cosign them
(``governance/witness_client.py`` submits each one after its commit). The ``signature`` column then
holds the note's signature line, whose key name is the origin (``Settings.audit_origin``).
Checkpoints signed before that hold a bare base64 signature over ``statement_body`` (``latentops
audit checkpoint v1``); both verify, here and in the stdlib-only verifier.

Each checkpoint is written twice: to ``audit_checkpoints`` (append-only) and to an external
append-only sink. The sink is what makes truncation visible: whoever deletes the tail of the log
and the checkpoints in the database still cannot unsay the copy outside it. The default sink is a
local JSON-lines file opened with ``O_APPEND`` and fsynced (``LATENTOPS_HOME/audit/checkpoints.jsonl``;
put it on another host or make it ``chattr +a``); production registers another sink (S3 Object
Lock, a WORM bucket) with ``register_sink``.

The signing key is ``Settings.audit_signing_key`` (default
``LATENTOPS_HOME/audit/checkpoint-signing-key.pem``, PKCS#8, mode 0600) and the sink
``Settings.audit_sink``. Beside the key, ``checkpoint-keyring.pem`` keeps the public half of every
signing key ever used (``key id -> public key``): ``key_rotation.rotate_key`` adds the new key and
keeps the old, so checkpoints signed before a rotation still verify. ``latentops audit public-key``
prints the keyring for auditors.

Checkpoints are also signed automatically (``maybe_checkpoint``, ``Settings.audit_checkpoint_entries``
and ``audit_checkpoint_s``): the integrator asks after each batch it places, and periodically.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput, LatentopsError
from latentops.core.orm import utcnow
from latentops.governance import audit_chain, merkle, merkle_store, placement, signed_note, witness_client
from latentops.governance.checkpoint_keys import (  # noqa: F401 - the keys API, re-exported for callers
    KEYRING_FILE,
    Keyring,
    add_to_keyring,
    default_key_path,
    default_sink_location,
    key_id,
    keyring_path,
    keyring_pem,
    load_or_create_signing_key,
    load_public_key,
    load_public_keys,
    load_signing_key,
    public_key_pem,
    signing_keyring,
    write_atomically,
)
from latentops.governance.tables import AuditCheckpoint, AuditEntry

log = logging.getLogger(__name__)

STATEMENT_HEADER = "latentops audit checkpoint v1"
DEFAULT_ORIGIN_PREFIX = "latentops.example/audit/"


# --- statements --------------------------------------------------------------------------------


def statement_body(tree_size: int, root_hash: str, head_hash: str, at: str) -> bytes:
    """The exact bytes that checkpoints of the first form (``latentops audit checkpoint v1``) sign."""
    return f"{STATEMENT_HEADER}\ntree_size {tree_size}\nroot {root_hash}\nhead {head_hash}\ntime {at}\n".encode()


def note_text(origin: str, tree_size: int, root_hash: str, head_hash: str, at: str) -> str:
    """The C2SP checkpoint text a checkpoint signs: origin, size, base64 root, ``head`` and ``time``.

    The two extension lines keep what the first form signed: the writer anchors on the signed head
    hash, and the time says when. Witnesses cosign them with the rest (cosignature/v1)."""
    extensions = (f"head {head_hash}", f"time {at}")
    return signed_note.Checkpoint(origin, tree_size, bytes.fromhex(root_hash), extensions).text()


def is_note_signature(signature: str) -> bool:
    """Whether a stored signature is a signed-note line (second form) rather than bare base64."""
    return signature.startswith(signed_note.EM_DASH + " ")


def origin_for(session: Session) -> str:
    """The log's origin: ``Settings.audit_origin``, else one derived from the first entry's hash
    (stable for the life of the log). Set it explicitly before configuring witnesses."""
    from latentops.core.settings import get_settings

    configured = get_settings().audit_origin
    if configured:
        return configured
    first = session.execute(sa.select(AuditEntry.hash).where(AuditEntry.seq == 0)).scalar()
    return DEFAULT_ORIGIN_PREFIX + (first[:16] if first else "empty")


def statement(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """A checkpoint as exported and as written to the sink; the second form adds ``origin`` and
    ``note`` (the signed note with the log's signature line)."""
    item: dict[str, Any] = {
        "tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash, "head_hash": checkpoint.head_hash,
        "at": audit_chain.format_time(checkpoint.at), "key_id": checkpoint.key_id, "signature": checkpoint.signature,
    }
    if is_note_signature(checkpoint.signature):
        line = signed_note.parse_signature_line(checkpoint.signature)
        text = note_text(line.name, checkpoint.tree_size, checkpoint.root_hash, checkpoint.head_hash, item["at"])
        item["origin"] = line.name
        item["note"] = signed_note.Note(text, [line]).render()
    return item


def cosigned_statement(session: Session, checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """``statement`` whose note also carries every witness cosignature stored for it."""
    item = statement(checkpoint)
    if "note" in item:
        item["note"] += "".join(witness_client.cosignature_lines(session, checkpoint.id))
    return item


def await_witnesses() -> bool:
    """Wait (at most about twice ``Settings.audit_witness_timeout_s``) for the submissions of
    checkpoints this process committed, so an export made right after carries their cosignatures."""
    from latentops.core.settings import get_settings

    return witness_client.wait_idle(2 * get_settings().audit_witness_timeout_s + 1)


def signature_valid(item: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Whether a statement (either form) is signed by ``public_key``."""
    try:
        signature = str(item["signature"])
        if is_note_signature(signature):
            line = signed_note.parse_signature_line(signature)
            text = note_text(line.name, int(item["tree_size"]), str(item["root_hash"]), str(item["head_hash"]),
                             str(item["at"]))
            return signed_note.signature_valid(text, line, signed_note.verifier(line.name, signed_note.ED25519,
                                                                                public_key))
        body = statement_body(int(item["tree_size"]), str(item["root_hash"]), str(item["head_hash"]), str(item["at"]))
        public_key.verify(base64.b64decode(signature), body)
    except (InvalidSignature, ValueError, KeyError, TypeError, LatentopsError):
        return False
    return True


def log_verifier(origin: str, public_key: Ed25519PublicKey) -> str:
    """The log's vkey (``origin+keyhash+base64(0x01 || key)``): what a witness is configured with."""
    return signed_note.verifier(origin, signed_note.ED25519, public_key).vkey()


# --- sinks -------------------------------------------------------------------------------------


class CheckpointSink(Protocol):
    """An append-only store outside the database for checkpoint statements."""

    location: str

    def append(self, item: Mapping[str, Any]) -> None: ...

    def read(self) -> list[dict[str, Any]]: ...


class FileSink:
    """JSON lines appended with ``O_APPEND`` and fsynced before the checkpoint commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def append(self, item: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(dict(item), sort_keys=True, separators=(",", ":")) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        items = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                int(item["tree_size"])
            except (ValueError, KeyError, TypeError) as error:
                raise IntegrityViolation(f"{self.path}: line {number} is not a checkpoint statement ({error})") from None
            items.append(item)
        return items


_SINK_FACTORIES: dict[str, Callable[[str], CheckpointSink]] = {"file": lambda rest: FileSink(Path(rest))}


def register_sink(scheme: str, factory: Callable[[str], CheckpointSink]) -> None:
    """Make ``scheme://...`` locations open ``factory(rest)`` (e.g. an S3 Object Lock sink)."""
    _SINK_FACTORIES[scheme] = factory


def open_sink(location: str) -> CheckpointSink:
    scheme, separator, rest = location.partition("://")
    if not separator:
        return FileSink(Path(location))
    if scheme not in _SINK_FACTORIES:
        raise InvalidInput(f"sink: unknown scheme {scheme!r} in {location!r} (known: {', '.join(sorted(_SINK_FACTORIES))})")
    return _SINK_FACTORIES[scheme](rest)


# --- writing -----------------------------------------------------------------------------------


def latest(session: Session) -> AuditCheckpoint | None:
    return session.execute(
        sa.select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc(), AuditCheckpoint.id.desc()).limit(1)
    ).scalar_one_or_none()


def _leaves_after(session: Session, start: int, end: int) -> Any:
    query = (sa.select(AuditEntry.hash).where(AuditEntry.seq >= start, AuditEntry.seq < end)
             .order_by(AuditEntry.seq).execution_options(yield_per=5000))
    return (merkle.leaf_hash(audit_chain.leaf_data(value)) for value in session.execute(query).scalars())


def create(session: Session, *, signing_key: Ed25519PrivateKey, sink: CheckpointSink, force: bool = False,
           keyring: Keyring | None = None) -> AuditCheckpoint:
    """Sign the current tree; write it to the database and the sink (in the caller's transaction).

    Pending entries are integrated first, so the checkpoint covers every committed entry. The
    previous checkpoint must verify with its own key from ``keyring`` (the signing key's public
    half always counts). Returns the latest checkpoint unchanged when no entry was added since,
    unless ``force``.
    """
    placement.integrate_all(session)  # takes the chain lock, held until the caller commits
    head = audit_chain.verified_head(session)  # alarms instead of signing a broken chain
    public_key = signing_key.public_key()
    previous = latest(session)
    if previous is not None and previous.tree_size == head.size and not force:
        return previous
    beyond = [item for item in sink.read() if int(item["tree_size"]) > head.size]
    if beyond:
        raise IntegrityViolation(
            f"audit trail damaged (truncated at seq {head.size}): the sink {sink.location} holds a checkpoint of "
            f"{beyond[0]['tree_size']} entries but the database has {head.size}; refusing to sign",
            reasons=[{"kind": "truncated", "seq": head.size}],
        )

    frontier = merkle.Frontier()
    if previous is not None:
        keys = {**(keyring or {}), key_id(public_key): public_key}
        signer = keys.get(previous.key_id)
        if signer is None or not signature_valid(statement(previous), signer):
            raise IntegrityViolation(f"checkpoint {previous.id} (tree size {previous.tree_size}) does not verify with key "
                                 f"{previous.key_id} from the keyring ({', '.join(keys)}): a forged checkpoint, or a key "
                                 "missing from the keyring; refusing to extend it")
        frontier = merkle.Frontier.from_hex(previous.tree_size, json.loads(previous.frontier))
        if frontier.root().hex() != previous.root_hash:
            raise IntegrityViolation(f"checkpoint {previous.id}: its stored frontier does not give its signed root")
    for leaf in _leaves_after(session, frontier.size, head.size):
        frontier.append(leaf)
    if frontier.size != head.size:
        raise IntegrityViolation(f"audit trail damaged: read {frontier.size} leaves for a head of {head.size}")

    # The perfect subtrees completed since the last checkpoint, for O(log n) proofs.
    merkle_store.extend(session, head.size)
    at = utcnow()
    root = frontier.root().hex()
    origin = origin_for(session)
    text = note_text(origin, head.size, root, head.hash, audit_chain.format_time(at))
    checkpoint = AuditCheckpoint(
        tree_size=head.size, root_hash=root, head_hash=head.hash, at=at, key_id=key_id(public_key),
        signature=signed_note.sign(text, origin, signing_key).line().rstrip("\n"),
        frontier=json.dumps(frontier.to_hex()),
    )
    session.add(checkpoint)
    session.flush()
    # The sink is written last, after everything that can fail in the database but before commit;
    # a commit that still fails leaves a true statement about committed entries in the sink.
    item = statement(checkpoint)
    sink.append(item)
    # Witnesses see it only once it is committed, from a thread of their own: appends never wait.
    witness_client.submit_after_commit(session, checkpoint.id, item["note"])
    log.info("audit checkpoint %s: %d entries, root %s", checkpoint.id, head.size, root)
    return checkpoint


def _latest_note(session: Session) -> tuple[int, str] | None:
    """The latest checkpoint's id and signed note, if it is of the note form."""
    checkpoint = latest(session)
    note = None if checkpoint is None else statement(checkpoint).get("note")
    return None if checkpoint is None or note is None else (checkpoint.id, note)


def due(session: Session, *, every_entries: int = 1000, every: dt.timedelta = dt.timedelta(minutes=5)) -> bool:
    """Whether a periodic checkpoint is due: enough new entries, or any new entry and enough time."""
    previous = latest(session)
    last = session.execute(sa.select(sa.func.max(AuditEntry.seq))).scalar_one()
    size = 0 if last is None else last + 1
    if previous is None:
        return size > 0
    new = size - previous.tree_size
    at = previous.at if previous.at.tzinfo else previous.at.replace(tzinfo=dt.UTC)
    return new >= every_entries or (new > 0 and utcnow() - at >= every)


# --- automatic checkpoints ---------------------------------------------------------------------


def _checkpoint_due(session: Session, settings: Any) -> tuple[bool, int]:
    """Whether ``audit_checkpoint_entries`` entries, or one older than ``audit_checkpoint_s``,
    lie beyond the latest checkpoint; and that checkpoint's tree size."""
    covered = session.execute(sa.select(sa.func.max(AuditCheckpoint.tree_size))).scalar() or 0
    last = session.execute(sa.select(sa.func.max(AuditEntry.seq))).scalar()
    size = 0 if last is None else int(last) + 1
    beyond = size - covered
    if beyond <= 0:
        return False, covered
    if settings.audit_checkpoint_entries and beyond >= settings.audit_checkpoint_entries:
        return True, covered
    if not settings.audit_checkpoint_s:
        return False, covered
    oldest = session.execute(sa.select(AuditEntry.at).where(AuditEntry.seq == covered)).scalar()
    if oldest is None:
        return False, covered
    oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
    return bool(dt.datetime.now(dt.UTC) - oldest >= dt.timedelta(seconds=settings.audit_checkpoint_s)), covered


def _deployment_database(engine: Engine, url: str) -> bool:
    configured = sa.engine.make_url(url)
    return (engine.url.get_backend_name(), engine.url.host, engine.url.port, engine.url.database) == \
        (configured.get_backend_name(), configured.host, configured.port, configured.database)


# Tree size of the latest checkpoint each database had when this process last looked, by engine:
# after an integration, the entries rule is decided from it without a query while it is not due.
_covered: dict[str, int] = {}


def maybe_checkpoint(engine: Engine, *, size: int | None = None) -> None:
    """Sign a checkpoint when one is due (``Settings.audit_checkpoint_entries`` / ``_s``).

    ``size``: the chain's size after an integration placed entries. Then only the entries rule is
    asked (the time rule is the periodic ``run_once``'s), and the database only once it may be due
    by this process's last look, so a commit's integration costs no extra transaction. Only for the
    deployment's own database (``Settings.database_url``), whose signing key and sink the settings
    name. Never raises: a failure is logged and the next integration tries again.
    """
    from latentops.core.settings import get_settings

    settings = get_settings()
    if size is None and settings.audit_witnesses and _deployment_database(engine, settings.database_url):
        # The periodic call: a witness that missed the latest checkpoint is asked again.
        witness_client.resubmit_due(engine, _latest_note)
    if not (settings.audit_checkpoint_entries or settings.audit_checkpoint_s):
        return
    known = _covered.get(str(engine.url))
    if size is not None and (not settings.audit_checkpoint_entries or (
            known is not None and known <= size < known + settings.audit_checkpoint_entries)):
        return  # a chain shorter than the size seen (a database replaced) is looked at again
    if not _deployment_database(engine, settings.database_url):
        return
    try:
        with placement.integrator_session(engine) as session, session.begin():
            due, covered = _checkpoint_due(session, settings)
            _covered[str(engine.url)] = covered
            if not due:
                return
            key_path = default_key_path(settings)
            made = create(session, signing_key=load_or_create_signing_key(key_path),
                                      sink=open_sink(default_sink_location(settings)),
                                      keyring=signing_keyring(key_path))
            _covered[str(engine.url)] = made.tree_size
            log.info("automatic audit checkpoint: tree size %d", made.tree_size)
    except (LatentopsError, sa.exc.SQLAlchemyError, OSError) as error:
        log.warning("automatic audit checkpoint not made now: %s", error)
