"""Placing pending audit entries in the hash chain, in the caller's transaction.

``audit.record`` writes an entry to ``audit_pending`` inside the transaction of the change it
records, without any chain lock. Placing gives committed pending entries their place: under the
chain lock it reads them in id order, checks that the chain head verifies
(``audit_chain.verified_head``), assigns ``seq`` (gapless from 0), ``prev_hash`` and ``hash``,
inserts them into ``audit_entries`` with their pending id and deletes the pending rows, all in one
transaction. This is the batching of transparency-dev/tessera: one chain lock and one WAL flush
per batch, not per entry.

This module does the moving (``integrate``, ``integrate_all``), the catching up of readers
(``catch_up``) and the slow path of a transaction that needs its seq before it commits
(``sequence``). Who integrates when (after each commit, in a thread, on demand) is
``integration``'s.

Rolling back an integrating transaction rolls back the seq assignments with it; the pending rows
are still there for the next integrator, so no seq is ever skipped or reused.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, NotFound
from latentops.governance import audit_chain, audit_mac
from latentops.governance.tables import AuditEntry, AuditPending

log = logging.getLogger(__name__)

# Pending entries moved per statement batch; a backlog is moved in several.
BATCH = 1000

ENTRIES = AuditEntry.__table__
PENDING = AuditPending.__table__
PENDING_COLUMNS = (PENDING.c.id, PENDING.c.at, PENDING.c.actor, PENDING.c.action, PENDING.c.resource,
                   PENDING.c.outcome, PENDING.c.details, PENDING.c.mac)


@dataclass(frozen=True)
class Placement:
    """Where a pending entry landed in the chain."""

    pending_id: int
    seq: int
    hash: str
    prev_hash: str


class Written(Protocol):
    """An entry as ``audit.record`` returns it (``audit.AuditRecord``), as far as placing it goes."""

    id: int
    action: str
    resource: str

    @property
    def engine(self) -> Engine: ...

    @property
    def integrated(self) -> bool: ...

    @property
    def committed(self) -> bool: ...

    def place(self, seq: int | None, hash: str | None, prev_hash: str | None) -> None: ...

    def _rolled_back(self) -> None: ...


def _waiting(session: Session) -> Any:
    """Pending rows not yet refused by this process, in id order."""
    query = sa.select(*PENDING_COLUMNS).order_by(PENDING.c.id)
    refused = audit_mac.refused_ids(audit_chain.database_key(session))
    return query.where(PENDING.c.id.not_in(sorted(refused))) if refused else query


def move(session: Session, limit: int) -> dict[int, Placement]:
    """Move up to ``limit`` pending entries into the chain. The caller holds the chain lock.

    A row without the application's valid MAC, a copy of an entry already in the chain, or one
    written more than the allowed skew before the entry written just before it is refused (skipped,
    alarmed, left pending; see ``audit_mac``).
    """
    rows = session.execute(_waiting(session).limit(limit)).all()
    if not rows:
        return {}
    head = audit_chain.verified_head(session)  # alarms and raises instead of extending a broken chain
    key, skew, database = audit_mac.current_key(), audit_mac.max_skew(), audit_chain.database_key(session)
    macs = [row.mac for row in rows if row.mac]
    in_chain = set(session.execute(sa.select(ENTRIES.c.mac).where(ENTRIES.c.mac.in_(macs))).scalars()) if macs else set()
    values, placed = [], {}
    previous: tuple[int, dt.datetime | None] | None = None  # (pending id, time) of the last row placed
    for row in rows:
        # Times must move forward in write order (pending ids); a row that follows the one placed
        # just before it needs no look-up, one after a gap (refused or still uncommitted rows) does.
        if previous is None or row.id != previous[0] + 1:
            previous = (row.id - 1, audit_mac.written_before(session, row.id))
        refusal = audit_mac.judge(row, key=key, previous_at=previous[1], skew=skew, macs_in_chain=in_chain)
        if refusal is not None:
            audit_mac.refuse(database, refusal)
            continue
        in_chain.add(row.mac)
        previous = (row.id, row.at)
        seq = head.seq + 1
        payload = {"seq": seq, "at": audit_chain.format_time(row.at), "actor": row.actor, "action": row.action,
                   "resource": row.resource, "outcome": row.outcome, "details": row.details, "prev_hash": head.hash}
        digest = audit_chain.entry_hash(payload)
        values.append({"seq": seq, "at": row.at, "actor": row.actor, "action": row.action, "resource": row.resource,
                       "outcome": row.outcome, "details": row.details, "prev_hash": head.hash, "hash": digest,
                       "pending_id": row.id, "mac": row.mac})
        placed[row.id] = Placement(row.id, seq, digest, head.hash)
        head = audit_chain.Head(seq, digest)
    if not values:
        return {}
    session.execute(ENTRIES.insert(), values)
    # The database lets a pending row go only once an identical entry carries its id (migration 0010).
    session.execute(PENDING.delete().where(PENDING.c.id.in_(list(placed))))
    audit_chain.hold_head(session, head)
    for record in session.info.get("audit_records", ()):
        if record.id in placed:
            where = placed[record.id]
            record.place(where.seq, where.hash, where.prev_hash)
    log.debug("integrated %d audit entries up to seq %d", len(placed), head.seq)
    return placed


def integrate(session: Session, *, limit: int = BATCH, lock_timeout_s: float | None = None) -> dict[int, Placement]:
    """In the caller's transaction: take the chain lock and move up to ``limit`` pending entries
    (those committed by others and this transaction's own). Returns pending id -> placement."""
    audit_chain.lock_chain(session, timeout_s=lock_timeout_s)
    return move(session, limit)


def integrate_all(session: Session, *, lock_timeout_s: float | None = None) -> int:
    """``integrate`` until nothing visible is pending; the number of entries moved."""
    moved = 0
    while True:
        placed = integrate(session, lock_timeout_s=lock_timeout_s)
        moved += len(placed)
        if len(placed) < BATCH:
            return moved


def pending_count(session: Session) -> int:
    return int(session.execute(sa.select(sa.func.count()).select_from(PENDING)).scalar_one())


def catch_up(session: Session) -> int:
    """Before reading the chain: integrate whatever is pending, in the caller's transaction.

    The chain lock is taken only when something is pending (then held until the caller's
    transaction ends), so a reader of a settled chain stays lock-free. Rows this process has
    refused do not count.
    """
    if session.execute(_waiting(session).with_only_columns(PENDING.c.id).limit(1)).first() is None:
        return 0
    return integrate_all(session)


def sequence(session: Session) -> None:
    """Give every entry this open transaction wrote its seq now: the slow path, holding the chain
    lock until the transaction ends, for callers that must store the seq in the same transaction."""
    records = [record for record in session.info.get("audit_records", ()) if not record.integrated]
    while records:
        placed = integrate(session)
        records = [record for record in records if not record.integrated]
        if records and len(placed) < BATCH:
            # Placed earlier in this transaction (and forgotten after a savepoint rolled back)?
            place(records, placements(session, [record.id for record in records]))
            records = [record for record in records if not record.integrated]
            raise_refused(session.get_bind().engine, records)
            for record in records:  # written in a savepoint that rolled back: never recorded
                record._rolled_back()
            if records:
                raise NotFound(f"audit entry {records[0].id} ({records[0].action}): rolled back with its savepoint")
            return


def placements(session: Session, pending_ids: Iterable[int]) -> dict[int, Placement]:
    """Where the entries with these pending ids are in the chain (those that are)."""
    rows = session.execute(sa.select(ENTRIES.c.pending_id, ENTRIES.c.seq, ENTRIES.c.hash, ENTRIES.c.prev_hash)
                           .where(ENTRIES.c.pending_id.in_(list(pending_ids)))).all()
    return {row.pending_id: Placement(row.pending_id, row.seq, row.hash, row.prev_hash) for row in rows}


def integrator_session(engine: Engine) -> Session:
    """A session of its own for integrating (or checkpointing) outside any caller's transaction."""
    session = Session(bind=engine, expire_on_commit=False)
    session.info["audit_integrator"] = True  # it re-checks for pending work itself, not via the hook
    return session


def place(records: Sequence[Written], placed: dict[int, Placement]) -> None:
    """Tell ``records`` where they landed, those among ``placed``."""
    for record in records:
        where = placed.get(record.id)
        if where is not None:
            record.place(where.seq, where.hash, where.prev_hash)


def raise_refused(engine: Engine, records: Sequence[Written]) -> None:
    """Raise ``IntegrityViolation`` for the first of ``records`` that this process's integrator refused."""
    refused = audit_mac.refused_ids(str(engine.url))
    for record in records:
        if not record.integrated and record.id in refused:
            raise IntegrityViolation(f"audit entry {record.id} ({record.action} {record.resource}) was refused by the "
                                 "integrator (see the integrity alarm); it stays pending",
                                 reasons=[{"kind": "refused", "pending_id": record.id}])
