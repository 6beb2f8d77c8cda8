"""The audit chain itself: entry hashes, the chain lock and the head a writer may extend.

Entry hash: ``SHA-256(prev_hash || canonical)`` where ``canonical`` is the RFC 8785 JSON of the
entry's fields without its hash (``details`` is itself a canonical JSON string). Entries are
written by ``audit.record`` and given their place in the chain by the integrator
(``placement``), both of which build on this module.

**The writer refuses to extend a broken chain.** Both ``record`` (without the lock, so that the
change is refused with its entry) and the integrator (under the lock, before assigning seqs) check
that the chain head descends from a head they trust, in O(entries since then), never O(log):

* each process keeps the last head it verified, per database (``_verified_heads``); the next
  check verifies only the entries appended since (usually a batch or two);
* a process without one (just started, or its cached head no longer matches, e.g. after a
  rolled-back transaction) starts from the latest signed checkpoint: the entry at
  ``tree_size - 1`` must still carry the checkpoint's ``head_hash``, and every entry after it must
  chain from there. Entries before the checkpoint are covered by its signed Merkle root and are
  re-verified in full by ``latentops audit verify``.

On failure it logs CRITICAL, counts ``latentops_audit_integrity_alarms_total`` and raises
``IntegrityViolation``; nothing is written.
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
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput
from latentops.governance import audit_mac
from latentops.governance.tables import AuditCheckpoint, AuditEntry

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any fixed 64-bit key: all writers of one database serialise on it.
ADVISORY_LOCK_KEY = 0x6C61_7465_6E74_6175  # "latentau"
# The key under which sealed personal data sits inside ``details`` (see governance/sealing.py).
SEALED_KEY = "sealed"
# Column limits of audit_entries, checked before the database would truncate or refuse.
FIELD_LIMITS = {"actor": 320, "action": 64, "resource": 400, "outcome": 16}
ENTRY_COLUMNS = (
    AuditEntry.seq, AuditEntry.at, AuditEntry.actor, AuditEntry.action, AuditEntry.resource,
    AuditEntry.outcome, AuditEntry.details, AuditEntry.prev_hash, AuditEntry.hash,
)

ALARMS = audit_mac.ALARMS  # also counts the pending rows the integrator refuses


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


_quote = json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # type: ignore[attr-defined]
_TEXT_FIELDS = ("action", "actor", "at", "details", "outcome", "prev_hash", "resource")  # sorted, "seq" last


def entry_hash(payload: Mapping[str, Any]) -> str:
    # Every value is a string or an integer and every key ASCII, so sorted compact JSON is exactly
    # RFC 8785 here (tests check it against rfc8785). The usual payload is written out directly
    # with json's own string quoting: the same bytes as json.dumps(sort_keys=True), at half the cost.
    seq = payload.get("seq")
    if len(payload) == 8 and type(seq) is int and all(type(payload.get(k)) is str for k in _TEXT_FIELDS):
        canonical = "{" + ",".join(f'"{k}":{_quote(payload[k])}' for k in _TEXT_FIELDS) + f',"seq":{seq}}}'
    else:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(bytes.fromhex(str(payload["prev_hash"])) + canonical.encode("utf-8")).hexdigest()


def leaf_data(hash_hex: str) -> bytes:
    """What the Merkle tree hashes for an entry: its 32-byte entry hash."""
    return bytes.fromhex(hash_hex)


# --- the chain lock and the trusted head -------------------------------------------------------


def lock_chain(session: Session, *, timeout_s: float | None = None, wait: bool = True) -> bool:
    """Serialise with every other integrator of this database until the transaction ends.

    ``timeout_s`` (PostgreSQL) gives up with ``OperationalError`` instead of waiting longer;
    ``wait=False`` (PostgreSQL) returns False at once when another transaction holds the lock.
    SQLite always waits (its busy timeout). Whoever held the lock looks for pending entries after
    releasing it (the commit hook), so that a writer turned away by ``wait=False`` is never left
    behind (see ``integration``).
    """
    bind = session.get_bind()
    if not session.info.get("audit_integrator"):
        session.info["audit_locked"] = True
        session.info["audit_connection"] = session.connection()
    if bind.dialect.name == "postgresql":
        if not wait:
            return bool(session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"),
                                        {"key": ADVISORY_LOCK_KEY}).scalar_one())
        if timeout_s is None:
            session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        else:
            # One round trip: the timeout is set (for this transaction) before the lock is asked for.
            session.execute(sa.text("SELECT set_config('lock_timeout', :timeout, true), pg_advisory_xact_lock(:key)"),
                            {"timeout": f"{int(timeout_s * 1000)}ms", "key": ADVISORY_LOCK_KEY})
    else:
        # A write statement makes SQLite take its database write lock now, before the head is read;
        # it matches no row and changes nothing.
        session.execute(sa.text("UPDATE audit_subject_keys SET id = id WHERE 0 = 1"))
    return True


_verified_heads: dict[str, Head] = {}
_heads_lock = threading.Lock()


def database_key(session: Session) -> str:
    """Which database ``session`` writes to: trusted heads and refused rows are kept per database."""
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


def hold_head(session: Session, head: Head) -> None:
    """Remember ``head`` as this transaction's chain head; trusted by the process once it commits."""
    session.info.setdefault("audit_heads", {})[database_key(session)] = head


def trust_held_heads(session: Session) -> None:
    """After a commit: the heads the transaction held (``hold_head``) become the process's."""
    for key, head in (session.info.pop("audit_heads", None) or {}).items():
        _trust(key, head)


def trusted_head(session: Session) -> Head | None:
    """The head this transaction holds, else the one this process last verified; None before either."""
    key = database_key(session)
    held: Head | None = session.info.get("audit_heads", {}).get(key)
    return held or _verified_heads.get(key)


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


def _alarm(broken: _Broken) -> IntegrityViolation:
    ALARMS.inc()
    message = (f"audit trail damaged ({broken.kind} at seq {broken.seq}): {broken.detail}; refusing to append. "
               "Run `latentops audit verify`.")
    log.critical(message, extra={"damage": broken.kind, "seq": broken.seq})
    return IntegrityViolation(message, reasons=[{"kind": broken.kind, "seq": broken.seq}])


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

    Writers call it without the lock (``record``: refuse early) and with it (the integrator: the
    head it extends). Raises ``IntegrityViolation`` (and alarms) on a broken chain.
    """
    key = database_key(session)
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


def verify_chain(session: Session, *, batch: int = 5000) -> tuple[int, int | None]:
    """Recompute every hash. Return ``(entries checked, first bad seq or None)``.

    The full verification (tree, checkpoints, kinds of damage) is ``verification.verify``.
    """
    head, broken = chain_break(_rows_after(session, -1), EMPTY_HEAD)
    return head.size, None if broken is None else broken[1]
