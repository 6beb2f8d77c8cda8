"""The audit trail: one append-only, hash-chained log of every security-relevant event.

``record`` is called by services inside the transaction that makes the change it describes, so a
change and its entry commit or roll back together. Sequence numbers are gapless from 0: the
writer takes the database's write lock (a transaction-level advisory lock on PostgreSQL, SQLite's
own write lock) before reading the chain head, so concurrent writers queue up instead of forking
the chain.

Entry hash: ``SHA-256(prev_hash || canonical)`` where ``canonical`` is the RFC 8785 JSON of the
entry's fields without its hash (``details`` is itself a canonical JSON string). The database
refuses UPDATE, DELETE and TRUNCATE on the table (see migrations 0001 and 0002).

**The writer refuses to extend a broken chain.** Before appending it checks that the head it reads
descends from a head it trusts, in O(entries since then), never O(log):

* each process keeps the last head it verified, per database (``_verified_heads``); the next
  append verifies only the entries other processes appended since (usually zero to a few);
* a process without one (just started, or its cached head no longer matches, e.g. after a
  rolled-back transaction) starts from the latest signed checkpoint: the entry at
  ``tree_size - 1`` must still carry the checkpoint's ``head_hash``, and every entry after it must
  chain from there. Entries before the checkpoint are covered by its signed Merkle root and are
  re-verified in full by ``latentops audit verify``.

On failure it logs CRITICAL, counts ``latentops_audit_integrity_alarms_total`` and raises
``IntegrityError``; nothing is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
import sqlalchemy as sa
from latentops.platform.errors import IntegrityError, InvalidInput
from latentops.platform.models import AuditCheckpoint, AuditEntry, utcnow
from prometheus_client import Counter
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any fixed 64-bit key: all writers of one database serialise on it.
ADVISORY_LOCK_KEY = 0x6C61_7465_6E74_6175  # "latentau"
# The key under which sealed personal data sits inside ``details`` (see governance/erasure.py).
SEALED_KEY = "sealed"
# Column limits of audit_entries, checked before the database would truncate or refuse.
FIELD_LIMITS = {"actor": 320, "action": 64, "resource": 400, "outcome": 16}
ENTRY_COLUMNS = (
    AuditEntry.seq, AuditEntry.at, AuditEntry.actor, AuditEntry.action, AuditEntry.resource,
    AuditEntry.outcome, AuditEntry.details, AuditEntry.prev_hash, AuditEntry.hash,
)

ALARMS = Counter("latentops_audit_integrity_alarms_total", "Appends refused because the audit chain head did not verify")


@dataclass(frozen=True)
class Actor:
    """Who did it: a user's email, ``system``, or ``worker:<host>``."""

    name: str

    @classmethod
    def system(cls) -> Actor:
        return cls("system")


@dataclass(frozen=True)
class Head:
    """The last entry of a verified chain prefix: ``seq`` -1 and the genesis hash when empty."""

    seq: int
    hash: str

    @property
    def size(self) -> int:
        return self.seq + 1


EMPTY_HEAD = Head(-1, GENESIS_HASH)


# --- hashing ----------------------------------------------------------------------------------


def canonical_details(details: Mapping[str, Any]) -> str:
    try:
        return rfc8785.dumps(dict(details)).decode("utf-8")
    except (TypeError, ValueError, rfc8785.CanonicalizationError) as error:
        raise InvalidInput(f"details: not representable as canonical JSON ({error})") from None


def format_time(at: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: the form that is hashed (SQLite drops the zone on read)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_payload(entry: Any) -> dict[str, Any]:
    """The hashed fields of an entry (ORM object or row) as a plain dict; the export adds ``hash``."""
    return {
        "seq": entry.seq,
        "at": format_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
    }


def entry_hash(payload: Mapping[str, Any]) -> str:
    # Every value is a string or an integer and every key ASCII, so sorted compact json.dumps is
    # exactly RFC 8785 here (tests check it against rfc8785) at a third of the cost.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(bytes.fromhex(str(payload["prev_hash"])) + canonical).hexdigest()


def leaf_data(hash_hex: str) -> bytes:
    """What the Merkle tree hashes for an entry: its 32-byte entry hash."""
    return bytes.fromhex(hash_hex)


# --- the chain lock and the trusted head -------------------------------------------------------


def lock_chain(session: Session) -> None:
    """Serialise with every other writer of this database until the transaction ends."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    else:
        # A write statement makes SQLite take its database write lock now, before the head is read;
        # it matches no row and changes nothing.
        session.execute(sa.text("UPDATE audit_subject_keys SET id = id WHERE 0 = 1"))


_verified_heads: dict[str, Head] = {}
_heads_lock = threading.Lock()


def _database_key(session: Session) -> str:
    return str(session.get_bind().engine.url)


def forget_verified_heads() -> None:
    """Drop this process's trusted heads (after a database is replaced under the same URL)."""
    with _heads_lock:
        _verified_heads.clear()


def _trust(key: str, head: Head) -> None:
    with _heads_lock:
        known = _verified_heads.get(key)
        if known is None or head.seq >= known.seq:
            _verified_heads[key] = head


def _on_commit(session: Session) -> None:
    pending = session.info.pop("audit_heads", None)
    for key, head in (pending or {}).items():
        _trust(key, head)


def _on_rollback(session: Session) -> None:
    session.info.pop("audit_heads", None)


def _watch(session: Session) -> None:
    if not session.info.get("audit_watched"):
        event.listen(session, "after_commit", _on_commit)
        event.listen(session, "after_rollback", _on_rollback)
        session.info["audit_watched"] = True


def chain_break(rows: Iterable[Any], start: Head) -> tuple[Head, tuple[str, int] | None]:
    """Walk ``rows`` (in seq order) from ``start``; return the last good head and the first break
    as ``(kind, seq)`` with kind ``deleted`` (a gap) or ``modified`` (a hash that does not verify
    or a link to a different predecessor)."""
    head = start
    for row in rows:
        if row.seq != head.seq + 1:
            return head, ("deleted", head.seq + 1)
        if row.prev_hash != head.hash:
            # The row itself verifies but names another predecessor: the one we hold was rewritten.
            return head, ("modified", head.seq if entry_hash(entry_payload(row)) == row.hash else row.seq)
        if entry_hash(entry_payload(row)) != row.hash:
            return head, ("modified", row.seq)
        head = Head(row.seq, row.hash)
    return head, None


def _rows_after(session: Session, after: int) -> Iterable[Any]:
    query = sa.select(*ENTRY_COLUMNS).where(AuditEntry.seq > after).order_by(AuditEntry.seq)
    return session.execute(query.execution_options(yield_per=2000))


class _Broken(Exception):
    def __init__(self, kind: str, seq: int, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.seq, self.detail = kind, seq, detail


def _alarm(broken: _Broken) -> IntegrityError:
    ALARMS.inc()
    message = (f"audit trail damaged ({broken.kind} at seq {broken.seq}): {broken.detail}; refusing to append. "
               "Run `latentops audit verify`.")
    log.critical(message, extra={"damage": broken.kind, "seq": broken.seq})
    return IntegrityError(message, reasons=[{"kind": broken.kind, "seq": broken.seq}])


# Entries after a trusted head fetched in one round trip; a longer gap is streamed.
DELTA_BATCH = 1000


def _verify_from(session: Session, start: Head) -> Head:
    """Check that the chain in the database extends ``start``; return its verified head.

    One query fetches ``start``'s own row and every entry after it (the common case is a handful,
    written by other processes since this one last appended).
    """
    rows = session.execute(
        sa.select(*ENTRY_COLUMNS).where(AuditEntry.seq >= max(start.seq, 0)).order_by(AuditEntry.seq)
        .limit(DELTA_BATCH + 1)
    ).all()
    if start.seq >= 0:
        if not rows or rows[0].seq != start.seq:
            last = session.execute(sa.select(sa.func.max(AuditEntry.seq))).scalar_one()
            if last is None or last < start.seq:
                raise _Broken("truncated", 0 if last is None else last + 1,
                              f"the chain ends before trusted entry {start.seq}")
            raise _Broken("deleted", start.seq, "a trusted entry is missing")
        if rows[0].hash != start.hash:
            raise _Broken("modified", start.seq, "a trusted entry's hash changed")
        rows = rows[1:]
    head, broken = chain_break(rows, start)
    if broken is None and len(rows) == DELTA_BATCH + (1 if start.seq < 0 else 0):
        head, broken = chain_break(_rows_after(session, head.seq), head)
    if broken is not None:
        raise _Broken(broken[0], broken[1], "the chain does not extend the trusted head")
    return head


def _checkpoint_anchor(session: Session) -> Head:
    """The head the latest checkpoint signed, after checking the database still holds it."""
    checkpoint = session.execute(
        sa.select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc(), AuditCheckpoint.id.desc()).limit(1)
    ).scalar_one_or_none()
    if checkpoint is None or checkpoint.tree_size == 0:
        return EMPTY_HEAD
    seq = checkpoint.tree_size - 1
    row = session.execute(sa.select(*ENTRY_COLUMNS).where(AuditEntry.seq == seq)).first()
    if row is None:
        raise _Broken("truncated", seq, f"checkpoint {checkpoint.id} covers {checkpoint.tree_size} entries")
    if row.hash != checkpoint.head_hash or entry_hash(entry_payload(row)) != row.hash:
        raise _Broken("modified", seq, f"entry {seq} no longer matches checkpoint {checkpoint.id}")
    return Head(seq, row.hash)


def verified_head(session: Session) -> Head:
    """The chain head, verified against this process's trusted head or the latest checkpoint.

    Call with the chain lock held. Raises ``IntegrityError`` (and alarms) on a broken chain.
    """
    key = _database_key(session)
    pending = session.info.get("audit_heads", {}).get(key)
    try:
        if pending is not None:
            return _verify_from(session, pending)
        cached = _verified_heads.get(key)
        if cached is not None:
            try:
                return _verify_from(session, cached)
            except _Broken:
                # A cached head can be stale (its transaction rolled back after a savepoint, the
                # database was restored): judge by the signed checkpoint before alarming.
                log.info("cached audit head %s no longer matches; re-anchoring on the checkpoint", cached.seq)
        head = _verify_from(session, _checkpoint_anchor(session))
    except _Broken as broken:
        raise _alarm(broken) from None
    _trust(key, head)
    return head


# --- appending ---------------------------------------------------------------------------------


def _check_fields(fields: Mapping[str, str]) -> None:
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{name}: must be a non-empty string (got {value!r})")
        if len(value) > FIELD_LIMITS[name]:
            raise InvalidInput(f"{name}: at most {FIELD_LIMITS[name]} characters (got {len(value)})")


def record(
    session: Session,
    *,
    actor: Actor | str,
    action: str,
    resource: str,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
    personal: Mapping[str, Any] | None = None,
    subject: str | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction and return it (flushed, not committed).

    ``personal`` holds personal data (prompts, emails) about ``subject`` (e.g. ``user:42``); it is
    encrypted with the subject's key and stored under ``details["sealed"]``, so erasing the subject
    (``erasure.erase_subject``) makes it unreadable while every hash still verifies.
    """
    name = actor.name if isinstance(actor, Actor) else actor
    _check_fields({"actor": name, "action": action, "resource": resource, "outcome": outcome})
    plain = dict(details or {})
    if SEALED_KEY in plain:
        raise InvalidInput(f"details: the key {SEALED_KEY!r} is reserved for sealed personal data")
    if personal and not subject:
        raise InvalidInput("subject: required when personal data is given (whose key encrypts it)")
    canonical_details(plain)  # bad details fail here, before any lock is taken

    session.flush()
    lock_chain(session)
    head = verified_head(session)
    if personal:
        from latentops.governance import erasure  # erasure records its own entries through this module

        plain[SEALED_KEY] = erasure.seal(session, subject=str(subject), data=personal, context=action)
    entry = AuditEntry(
        seq=head.seq + 1,
        at=utcnow(),
        actor=name,
        action=action,
        resource=resource,
        outcome=outcome,
        details=canonical_details(plain),
        prev_hash=head.hash,
    )
    entry.hash = entry_hash(entry_payload(entry))
    session.add(entry)
    session.flush()
    _watch(session)
    session.info.setdefault("audit_heads", {})[_database_key(session)] = Head(entry.seq, entry.hash)
    log.debug("audit entry appended", extra={"seq": entry.seq, "action": action})
    return entry


def verify_chain(session: Session, *, batch: int = 5000) -> tuple[int, int | None]:
    """Recompute every hash. Return ``(entries checked, first bad seq or None)``.

    The full verification (tree, checkpoints, kinds of damage) is ``verification.verify``.
    """
    head, broken = chain_break(_rows_after(session, -1), EMPTY_HEAD)
    return head.size, None if broken is None else broken[1]
