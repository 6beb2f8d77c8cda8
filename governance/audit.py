"""The audit trail: one append-only, hash-chained log of every security-relevant event.

``record`` is called by services inside the transaction that makes the change it describes. It
writes the entry to ``audit_pending`` in that transaction, so a change and its entry commit or roll
back together, and takes **no chain lock**: concurrent writers commit in parallel and PostgreSQL
groups their WAL flushes. Giving entries their place in the chain (gapless ``seq`` from 0,
``prev_hash``, ``hash``) is the integrator's job (``governance/integration.py``): whichever writer
finds pending work after its commit moves every committed pending entry into ``audit_entries`` in
one batch under the chain lock (PostgreSQL advisory lock, SQLite's write lock). ``record`` returns
an ``AuditRecord``; after the caller's commit it already carries its ``seq`` (the commit hook
integrated it), so an append returns once its entry is durable and sequenced.

The database refuses UPDATE, DELETE and TRUNCATE on the chain (migrations 0001, 0002) and lets a
pending row go only once its entry is in the chain (migration 0010). Each pending row carries the
application's MAC (``audit_mac``, migration 0014): the integrator refuses rows inserted past
``record``.

Entry hashes, the chain lock and the head a writer may extend are ``audit_chain``'s (its names are
part of this module's API too). **The writer refuses to extend a broken chain**: ``record`` checks
that the head it last trusted still stands (one look in the insert's round trip) and the
integrator verifies every entry since, under the lock; on failure nothing is written and
``IntegrityViolation`` is raised (see ``audit_chain``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.core.orm import utcnow
from latentops.governance import audit_mac, identities, integration, payload_keys, placement
from latentops.governance.audit_chain import (
    ADVISORY_LOCK_KEY,
    ALARMS,
    EMPTY_HEAD,
    ENTRY_COLUMNS,
    FIELD_LIMITS,
    GENESIS_HASH,
    SEALED_KEY,
    Actor,
    Head,
    canonical_details,
    chain_break,
    entry_hash,
    entry_payload,
    forget_verified_heads,
    format_time,
    hold_head,
    leaf_data,
    lock_chain,
    trust_held_heads,
    trusted_head,
    verified_head,
    verify_chain,
)
from latentops.governance.tables import AuditEntry, AuditPending

log = logging.getLogger(__name__)

# The chain's names (``audit_chain``) are part of this module's API, beside the writer's own.
__all__ = [
    "ADVISORY_LOCK_KEY", "ALARMS", "APPENDS_KEY", "EMPTY_HEAD", "ENTRY_COLUMNS", "FIELD_LIMITS",
    "GENESIS_HASH", "PENDING", "SEALED_KEY", "Actor", "AuditRecord", "Head", "canonical_details",
    "chain_break", "entry_hash", "entry_payload", "forget_verified_heads", "format_time", "hold_head",
    "leaf_data", "lock_chain", "record", "verified_head", "verify_chain",
]


# --- after commit and rollback -----------------------------------------------------------------


def _on_commit(session: Session) -> None:
    info = session.info
    if "audit_heads" not in info and "audit_records" not in info and "audit_locked" not in info:
        return
    trust_held_heads(session)
    records: list[AuditRecord] = session.info.pop("audit_records", None) or []
    for item in records:
        item._committed()
    connection = info.pop("audit_connection", None)
    if session.info.pop("audit_locked", False) or records:
        integration.after_commit(session.get_bind().engine, records, connection)


def _on_rollback(session: Session) -> None:
    info = session.info
    if "audit_heads" not in info and "audit_records" not in info and "audit_locked" not in info:
        return
    session.info.pop("audit_heads", None)
    outer = session.get_transaction()
    if outer is not None and outer.is_active:
        # A savepoint rolled back; the transaction goes on. Places assigned inside it are void:
        # forget them, the entries are looked up (or found rolled back) when next asked for.
        for item in info.get("audit_records", ()):
            item.place(None, None, None)
        return
    for item in session.info.pop("audit_records", None) or []:
        item._rolled_back()
    connection = info.pop("audit_connection", None)
    if session.info.pop("audit_locked", False):
        # This transaction may have turned writers away from the lock: integrate for them.
        integration.after_commit(session.get_bind().engine, [], connection)


# One listener pair for every Session: it returns at once for sessions that wrote no entry and
# held no chain lock.
event.listen(Session, "after_commit", _on_commit)
event.listen(Session, "after_rollback", _on_rollback)


# --- appending ---------------------------------------------------------------------------------


def _check_fields(fields: Mapping[str, str]) -> None:
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{name}: must be a non-empty string (got {value!r})")
        if len(value) > FIELD_LIMITS[name]:
            raise InvalidInput(f"{name}: at most {FIELD_LIMITS[name]} characters (got {len(value)})")


class AuditRecord:
    """What ``record`` returns: the entry as written, and its place in the chain once integrated.

    ``id`` (the pending row's id) is known at once. ``seq``, ``hash`` and ``prev_hash`` are filled
    when the entry is integrated, normally by the commit hook as the caller's transaction commits.
    Reading them earlier, while that transaction is still open, sequences the entry at once
    (``placement.sequence``): that holds the chain lock until the transaction ends, the slow
    path, kept for callers that must store the seq in the same transaction. Reading them after the
    commit waits for integration (``integration.wait``); after a rollback raises ``NotFound``.
    """

    __slots__ = ("_engine", "_hash", "_prev_hash", "_seq", "_session", "_state", "action", "actor", "at", "details",
                 "id", "outcome", "resource")

    def __init__(self, session: Session, *, id: int, at: dt.datetime, actor: str, action: str, resource: str,
                 outcome: str, details: str) -> None:
        self.id, self.at, self.actor, self.action, self.resource = id, at, actor, action, resource
        self.outcome, self.details = outcome, details
        self._session: Session | None = session
        self._engine: Engine = session.get_bind().engine
        self._state = "open"
        self._seq: int | None = None
        self._hash: str | None = None
        self._prev_hash: str | None = None

    def __repr__(self) -> str:
        return f"AuditRecord(id={self.id}, seq={self._seq}, action={self.action!r}, state={self._state})"

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def integrated(self) -> bool:
        return self._seq is not None

    @property
    def committed(self) -> bool:
        return self._state == "committed"

    @property
    def seq(self) -> int:
        self._resolve()
        assert self._seq is not None
        return self._seq

    @property
    def hash(self) -> str:
        self._resolve()
        assert self._hash is not None
        return self._hash

    @property
    def prev_hash(self) -> str:
        self._resolve()
        assert self._prev_hash is not None
        return self._prev_hash

    def place(self, seq: int | None, hash: str | None, prev_hash: str | None) -> None:
        """Set by the integrator: where the entry landed in the chain."""
        self._seq, self._hash, self._prev_hash = seq, hash, prev_hash

    def _committed(self) -> None:
        self._state, self._session = "committed", None

    def _rolled_back(self) -> None:
        self._state, self._session = "rolled_back", None
        self._seq = self._hash = self._prev_hash = None

    def _resolve(self) -> None:
        if self._seq is not None:
            return
        if self._state == "rolled_back":
            raise NotFound(f"audit entry {self.id} ({self.action} {self.resource}): its transaction rolled back, "
                           "so it was never recorded")
        if self._session is not None:
            placement.sequence(self._session)
        else:
            integration.wait([self])
        if self._state == "rolled_back":  # written in a savepoint that rolled back
            raise NotFound(f"audit entry {self.id} ({self.action} {self.resource}): rolled back, never recorded")


PENDING = AuditPending.__table__
# Built once and executed with parameters (a statement built per call costs more than the insert).
_INSERT = PENDING.insert().returning(PENDING.c.id)
_INSERT_CHECKED = PENDING.insert().returning(PENDING.c.id, sa.select(AuditEntry.hash).where(
    AuditEntry.seq == sa.bindparam("trusted_seq")).scalar_subquery())
# Actions of the entries a session appended in its open transaction (read by platform.metrics).
APPENDS_KEY = "latentops.audit.appended"


def actor_name(actor: Actor | str) -> str:
    """The name an actor is recorded under: an ``Actor``'s name, or the string itself."""
    return actor.name if isinstance(actor, Actor) else actor


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
) -> AuditRecord:
    """Write one entry in the caller's transaction; it joins the chain when that transaction commits.

    Returns an ``AuditRecord`` (see there for when ``seq`` is known). Refuses with
    ``IntegrityViolation`` when the chain head does not verify, so the change is refused with it.

    ``personal`` holds personal data (prompts, emails) about ``subject`` (e.g. ``user:42``); it is
    encrypted with a data key of its own, wrapped by the subject's key (``payload_keys``), and
    stored under ``details["sealed"]``, so retention (``retention``) can shred this payload alone
    and erasing the subject (``erasure.erase_subject``) makes all of theirs unreadable while every
    hash still verifies.

    The actor is written as its pseudonym unless it is a system actor, and every e-mail address in
    ``resource`` and ``details`` as that address's pseudonym (``identities``): the chain holds no
    identity in clear, so erasing one leaves every hash intact.
    """
    name = actor_name(actor)
    _check_fields({"actor": name, "action": action, "resource": resource, "outcome": outcome})
    plain = dict(details or {})
    if SEALED_KEY in plain:
        raise InvalidInput(f"details: the key {SEALED_KEY!r} is reserved for sealed personal data")
    if personal and not subject:
        raise InvalidInput("subject: required when personal data is given (whose key encrypts it)")
    canonical = canonical_details(plain)  # bad details fail here, before anything is written

    trusted = trusted_head(session)
    if trusted is None:
        verified_head(session)  # a process's first append anchors on the checkpoint
    seen: dict[str, str] = {}  # e-mail address -> pseudonym, once per entry
    stored_actor = identities.pseudonym_for(session, name)
    if "@" in resource:
        resource = identities.pseudonymise(session, resource, seen)
        _check_fields({"resource": resource})
    if "@" in canonical:
        plain = identities.pseudonymise(session, plain, seen)
    if personal:
        plain[SEALED_KEY] = payload_keys.seal(session, subject=str(subject), data=personal, action=action)
    values = {"at": utcnow(), "actor": stored_actor, "action": action, "resource": resource, "outcome": outcome,
              "details": canonical_details(plain) if personal or seen else canonical}
    values["mac"] = audit_mac.seal(values)  # the integrator refuses a pending row without it
    check = trusted is not None and trusted.seq >= 0
    # The cheap check, in the same round trip: the head this process trusts still carries its
    # hash. Entries after it are verified by the integrator, under the lock, before extending.
    if check and trusted is not None:
        row = session.execute(_INSERT_CHECKED, {**values, "trusted_seq": trusted.seq}).one()
    else:
        row = session.execute(_INSERT, values).one()
    pending_id = row[0]
    if check and trusted is not None and row[1] != trusted.hash:
        verified_head(session)  # a stale cache re-anchors on the checkpoint; real damage raises here
    # Counted by latentops_audit_appends_total when (and only if) the transaction commits.
    session.info.setdefault(APPENDS_KEY, []).append(action)
    entry = AuditRecord(session, id=pending_id, **{k: v for k, v in values.items() if k != "mac"})
    # After the commit the hook integrates on this same connection: no second checkout.
    session.info["audit_connection"] = session.connection()
    session.info.setdefault("audit_records", []).append(entry)
    log.debug("audit entry written", extra={"pending_id": pending_id, "action": action})
    return entry
