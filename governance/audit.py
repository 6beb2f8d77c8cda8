"""The audit trail: one append-only, hash-chained log of every security-relevant event.

``record`` is called by services inside the transaction that makes the change it describes, so a
change and its entry commit or roll back together. Sequence numbers are gapless from 0: the
writer takes the database's write lock (a transaction-level advisory lock on PostgreSQL, SQLite's
own write lock) before reading the chain head, so concurrent writers queue up instead of forking
the chain.

Entry hash: ``SHA-256(prev_hash || canonical)`` where ``canonical`` is the RFC 8785 JSON of the
entry without its hash. The database refuses UPDATE and DELETE on the table (see migrations).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.platform.models import AuditEntry, utcnow

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any fixed 64-bit key: all writers of one database serialise on it.
ADVISORY_LOCK_KEY = 0x6C61_7465_6E74_6175  # "latentau"


@dataclass(frozen=True)
class Actor:
    """Who did it: a user's email, ``system``, or ``worker:<host>``."""

    name: str

    @classmethod
    def system(cls) -> Actor:
        return cls("system")


def canonical_details(details: Mapping[str, Any]) -> str:
    return rfc8785.dumps(dict(details)).decode("utf-8")


def format_time(at: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: the form that is hashed (SQLite drops the zone on read)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_payload(entry: AuditEntry) -> dict[str, Any]:
    """The hashed fields of an entry as a plain dict (also the export format, plus ``hash``)."""
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
    canonical = rfc8785.dumps(dict(payload))
    return hashlib.sha256(bytes.fromhex(str(payload["prev_hash"])) + canonical).hexdigest()


def _lock_chain(session: Session) -> None:
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    else:
        # A write statement makes SQLite take its database write lock now, before the head is read;
        # it matches no row and changes nothing.
        session.execute(sa.text("UPDATE audit_checkpoints SET id = id WHERE 0 = 1"))


def record(
    session: Session,
    *,
    actor: Actor | str,
    action: str,
    resource: str,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction and return it (flushed, not committed)."""
    session.flush()
    _lock_chain(session)
    head = session.execute(sa.select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq, prev_hash = (0, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)
    entry = AuditEntry(
        seq=seq,
        at=utcnow(),
        actor=actor.name if isinstance(actor, Actor) else actor,
        action=action,
        resource=resource,
        outcome=outcome,
        details=canonical_details(details or {}),
        prev_hash=prev_hash,
    )
    entry.hash = entry_hash(entry_payload(entry))
    session.add(entry)
    session.flush()
    log.debug("audit entry appended", extra={"seq": seq, "action": action})
    return entry


def verify_chain(session: Session, *, batch: int = 5000) -> tuple[int, int | None]:
    """Recompute every hash. Return ``(entries checked, first bad seq or None)``."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 0, 0
    for entry in session.execute(sa.select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=batch)).scalars():
        if entry.seq != expected_seq or entry.prev_hash != expected_prev or entry_hash(entry_payload(entry)) != entry.hash:
            return checked, expected_seq
        expected_prev, expected_seq, checked = entry.hash, expected_seq + 1, checked + 1
    return checked, None
