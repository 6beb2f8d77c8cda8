"""Integration: moving pending audit entries into the hash chain, many per transaction.

``audit.record`` writes an entry to ``audit_pending`` inside the transaction of the change it
records, without any chain lock, so concurrent writers commit in parallel (PostgreSQL groups their
WAL flushes). Integration gives committed pending entries their place: under the chain lock it
reads them in id order, checks that the chain head verifies (``audit.verified_head``), assigns
``seq`` (gapless from 0), ``prev_hash`` and ``hash``, inserts them into ``audit_entries`` with
their pending id and deletes the pending rows, all in one transaction. This is the batching of
transparency-dev/tessera: one chain lock and one WAL flush per batch, not per entry.

Who integrates:

* every writer, right after its commit (``after_commit``, run by the session's commit hook), unless
  another transaction holds the chain lock at that moment: then the writer returns at once and
  the holder takes its entry, because every lock holder looks for pending entries again *after*
  releasing the lock, and the writer committed before it asked. Under load this makes the batches
  (everything committed while one batch was being written) without anyone queueing on the lock;
* in a process that runs an ``Integrator`` (API servers), that thread instead of the writer: a
  commit hands its entries over and returns, and the thread integrates the commits of a short
  window in one batch;
* readers of the chain (verification, proofs, exports, queries, checkpoints) first
  (``catch_up``), so nothing they show is stale;
* ``AuditRecord.seq`` / ``wait`` for a caller that needs its seq after the commit (waits for the
  lock);
* ``latentops audit integrate`` and ``start_background`` (a thread for long-running processes)
  pick up entries whose writer died between its commit and its integration.

An append therefore returns once its entry is durable (committed in ``audit_pending``); its
place in the chain is assigned moments later by the same or another process.

A transaction that reads ``AuditRecord.seq`` before committing is integrated at once in that
transaction (``sequence``), holding the chain lock until it ends: correct, but serial.

Rolling back an integrating transaction rolls back the seq assignments with it; the pending rows
are still there for the next integrator, so no seq is ever skipped or reused.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, LatentopsError, NotFound, ServiceUnavailable
from latentops.governance import audit, audit_chain, audit_mac
from latentops.governance.tables import AuditEntry, AuditPending

log = logging.getLogger(__name__)

# Pending entries moved per statement batch; a backlog is moved in several.
BATCH = 1000
# How long a writer waits for the chain lock after its commit before leaving its entries to the
# next integrator (they are durable either way).
LOCK_TIMEOUT_S = 10.0
WAIT_TIMEOUT_S = 60.0

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


def _waiting(session: Session) -> Any:
    """Pending rows not yet refused by this process, in id order."""
    query = sa.select(*PENDING_COLUMNS).order_by(PENDING.c.id)
    refused = audit_mac.refused_ids(audit_chain.database_key(session))
    return query.where(PENDING.c.id.not_in(sorted(refused))) if refused else query


def _move(session: Session, limit: int) -> dict[int, Placement]:
    """Move up to ``limit`` pending entries into the chain. The caller holds the chain lock.

    A row without the application's valid MAC, a copy of an entry already in the chain, or one
    written more than the allowed skew before the entry written just before it is refused (skipped,
    alarmed, left pending; see ``audit_mac``).
    """
    rows = session.execute(_waiting(session).limit(limit)).all()
    if not rows:
        return {}
    head = audit.verified_head(session)  # alarms and raises instead of extending a broken chain
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
        payload = {"seq": seq, "at": audit.format_time(row.at), "actor": row.actor, "action": row.action,
                   "resource": row.resource, "outcome": row.outcome, "details": row.details, "prev_hash": head.hash}
        digest = audit.entry_hash(payload)
        values.append({"seq": seq, "at": row.at, "actor": row.actor, "action": row.action, "resource": row.resource,
                       "outcome": row.outcome, "details": row.details, "prev_hash": head.hash, "hash": digest,
                       "pending_id": row.id, "mac": row.mac})
        placed[row.id] = Placement(row.id, seq, digest, head.hash)
        head = audit.Head(seq, digest)
    if not values:
        return {}
    session.execute(ENTRIES.insert(), values)
    # The database lets a pending row go only once an identical entry carries its id (migration 0010).
    session.execute(PENDING.delete().where(PENDING.c.id.in_(list(placed))))
    audit.hold_head(session, head)
    for record in session.info.get("audit_records", ()):
        if record.id in placed:
            where = placed[record.id]
            record.place(where.seq, where.hash, where.prev_hash)
    log.debug("integrated %d audit entries up to seq %d", len(placed), head.seq)
    return placed


def integrate(session: Session, *, limit: int = BATCH, lock_timeout_s: float | None = None) -> dict[int, Placement]:
    """In the caller's transaction: take the chain lock and move up to ``limit`` pending entries
    (those committed by others and this transaction's own). Returns pending id -> placement."""
    audit.lock_chain(session, timeout_s=lock_timeout_s)
    return _move(session, limit)


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
    """Give every entry this open transaction wrote its seq now (the slow path; see the module)."""
    records = [record for record in session.info.get("audit_records", ()) if not record.integrated]
    while records:
        placed = integrate(session)
        records = [record for record in records if not record.integrated]
        if records and len(placed) < BATCH:
            # Placed earlier in this transaction (and forgotten after a savepoint rolled back)?
            _place(records, _placements(session, [record.id for record in records]))
            records = [record for record in records if not record.integrated]
            _raise_refused(session.get_bind().engine, records)
            for record in records:  # written in a savepoint that rolled back: never recorded
                record._rolled_back()
            if records:
                raise NotFound(f"audit entry {records[0].id} ({records[0].action}): rolled back with its savepoint")
            return


def _placements(session: Session, pending_ids: Iterable[int]) -> dict[int, Placement]:
    rows = session.execute(sa.select(ENTRIES.c.pending_id, ENTRIES.c.seq, ENTRIES.c.hash, ENTRIES.c.prev_hash)
                           .where(ENTRIES.c.pending_id.in_(list(pending_ids)))).all()
    return {row.pending_id: Placement(row.pending_id, row.seq, row.hash, row.prev_hash) for row in rows}


def _integrator_session(engine: Engine) -> Session:
    session = Session(bind=engine, expire_on_commit=False)
    session.info["audit_integrator"] = True  # it re-checks for pending work itself, not via the hook
    return session


def _place(records: Sequence[audit.AuditRecord], placed: dict[int, Placement]) -> None:
    for record in records:
        where = placed.get(record.id)
        if where is not None:
            record.place(where.seq, where.hash, where.prev_hash)


def integrate_when_free(engine: Engine, connection: sa.Connection | None = None) -> dict[int, Placement]:
    """Integrate everything pending, unless another transaction holds the chain lock right now.

    Never waits for the lock: a writer turned away leaves its entry to the holder, because every
    holder looks for pending entries *after* releasing the lock (here: the loop; elsewhere: the
    commit hook) and the turned-away writer committed before it asked. On SQLite, which has one
    writer at a time, it waits for the write lock instead.

    ``connection``: the committed writer's own connection, outside any transaction (the commit
    hook passes it, saving a checkout); another is taken from the pool otherwise.
    """
    if engine.dialect.name != "postgresql":
        placed = _integrate_waiting(engine)
    elif connection is not None and not connection.closed and not connection.invalidated \
            and not connection.in_transaction():
        placed = _integrate_on(connection)
    else:
        with engine.connect() as own:
            placed = _integrate_on(own)
    if placed:
        maybe_checkpoint(engine, size=max(p.seq for p in placed.values()) + 1)
    return placed


def _integrate_on(connection: sa.Connection) -> dict[int, Placement]:
    placed: dict[int, Placement] = {}
    raw: Any = connection.connection.dbapi_connection
    try:
        while True:
            # A session-level lock, tried outside any transaction in one round trip, so that the
            # batch's own transaction runs under it.
            raw.autocommit = True
            if not raw.execute(f"SELECT pg_try_advisory_lock({audit.ADVISORY_LOCK_KEY})").fetchone()[0]:
                return placed
            try:
                raw.autocommit = False
                with Session(bind=connection, expire_on_commit=False) as session:
                    session.info["audit_integrator"] = True
                    with session.begin():
                        while True:
                            batch = _move(session, BATCH)
                            placed.update(batch)
                            if len(batch) < BATCH:
                                break
            finally:
                more = _release(connection, raw)
            if not more:
                return placed
    finally:
        if not connection.invalidated:
            raw.autocommit = False  # the pool's connections are transactional


def _release(connection: sa.Connection, raw: Any) -> bool:
    """Release the session-level chain lock and look for entries committed while it was held.

    One round trip: the two statements run in order, so the look (its own snapshot) comes after
    the release. Closing the connection releases the lock when the release itself fails.
    """
    try:
        connection.rollback()  # nothing after a commit; ends a batch that failed
        raw.autocommit = True
        refused = audit_mac.refused_ids(str(connection.engine.url))
        skip = f" WHERE id NOT IN ({', '.join(str(int(i)) for i in sorted(refused))})" if refused else ""
        cursor = raw.execute(f"SELECT pg_advisory_unlock({audit.ADVISORY_LOCK_KEY}); "
                             f"SELECT count(*) FROM (SELECT 1 FROM audit_pending{skip} LIMIT 1) AS waiting")
        cursor.nextset()
        return bool(cursor.fetchone()[0])
    except Exception:
        connection.invalidate()
        raise


def _integrate_waiting(engine: Engine) -> dict[int, Placement]:
    placed: dict[int, Placement] = {}
    with _integrator_session(engine) as session, session.begin():
        audit.lock_chain(session)
        while True:
            batch = _move(session, BATCH)
            placed.update(batch)
            if len(batch) < BATCH:
                return placed


def after_commit(engine: Engine, records: Sequence[audit.AuditRecord], connection: sa.Connection | None = None) -> None:
    """The commit hook of a transaction that wrote entries or held the chain lock.

    Hands the entries to the process's ``Integrator`` when one runs for ``engine``; otherwise
    integrates what is pending unless someone else is integrating (who will take this
    transaction's entries too). Never raises: the entries are durable in ``audit_pending``
    whatever happens here; ``AuditRecord.seq`` and ``wait`` integrate them on demand.
    """
    integrator = integrator_for(engine)
    if integrator is not None:
        integrator.take(records)
        return
    try:
        _place(records, integrate_when_free(engine, connection))
    except (LatentopsError, sa.exc.SQLAlchemyError) as error:
        # A damaged chain has already alarmed (CRITICAL, metric); anything else is transient.
        log.warning("audit entries committed but not integrated now: %s", error)
    except Exception:  # the commit has happened: raising here would tell the caller it failed
        log.exception("audit integration after commit failed; the entries stay pending")


def _settle(engine: Engine, records: Sequence[audit.AuditRecord], lock_timeout_s: float) -> None:
    """One transaction on ``engine`` under the chain lock (waiting for it): place ``records``,
    integrating everything pending if they are not in the chain yet."""
    wanted = {record.id for record in records}
    with _integrator_session(engine) as session, session.begin():
        audit.lock_chain(session, timeout_s=lock_timeout_s)
        placed = _placements(session, wanted)
        if not wanted <= placed.keys():
            while True:
                batch = _move(session, BATCH)
                placed.update(batch)
                if wanted <= placed.keys() or len(batch) < BATCH:
                    break
            missing = wanted - placed.keys()
            if missing:  # placed by an earlier holder after this transaction's first look
                placed.update(_placements(session, missing))
        still = wanted - placed.keys()
        waiting = set(session.execute(sa.select(PENDING.c.id).where(PENDING.c.id.in_(list(still)))).scalars()) if still else set()
    _place(records, placed)
    for record in records:
        if not record.integrated and record.id not in waiting:
            record._rolled_back()  # written in a savepoint that rolled back: never committed
    integrate_when_free(engine)  # it held the lock: entries turned away meanwhile are its to take
    _raise_refused(engine, records)


def _raise_refused(engine: Engine, records: Sequence[audit.AuditRecord]) -> None:
    refused = audit_mac.refused_ids(str(engine.url))
    for record in records:
        if not record.integrated and record.id in refused:
            raise IntegrityViolation(f"audit entry {record.id} ({record.action} {record.resource}) was refused by the "
                                 "integrator (see the integrity alarm); it stays pending",
                                 reasons=[{"kind": "refused", "pending_id": record.id}])


def wait(records: Iterable[audit.AuditRecord], *, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    """Make sure committed ``records`` are integrated (integrating them if need be) and placed.

    Raises ``IntegrityViolation`` when the chain does not verify (the entries stay pending) and
    ``ServiceUnavailable`` when the chain lock stays taken for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    waiting = [record for record in records if not record.integrated and record.committed]
    while waiting:
        remaining = deadline - time.monotonic()
        try:
            _settle(waiting[0].engine, [r for r in waiting if r.engine is waiting[0].engine],
                    max(0.1, min(LOCK_TIMEOUT_S, remaining)))
        except sa.exc.OperationalError as error:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"audit: the chain lock stayed taken for {timeout_s:.0f}s; entries "
                                         f"{[r.id for r in waiting][:5]} are committed and still pending ({error.orig})") from None
            log.info("audit integration waiting for the chain lock: %s", error.orig)
        waiting = [record for record in waiting if not record.integrated and record.committed]


def run_once(engine: Engine) -> int:
    """Integrate everything pending, waiting for the lock if need be; the number of entries moved."""
    with _integrator_session(engine) as session, session.begin():
        moved = catch_up(session)
    moved += len(integrate_when_free(engine))
    maybe_checkpoint(engine)  # the time rule: entries may have waited long enough with no new one
    return moved


def _checkpoint_due(session: Session, settings: Any) -> tuple[bool, int]:
    """Whether ``audit_checkpoint_entries`` entries, or one older than ``audit_checkpoint_s``,
    lie beyond the latest checkpoint; and that checkpoint's tree size."""
    from latentops.governance.tables import AuditCheckpoint

    covered = session.execute(sa.select(sa.func.max(AuditCheckpoint.tree_size))).scalar() or 0
    last = session.execute(sa.select(sa.func.max(ENTRIES.c.seq))).scalar()
    size = 0 if last is None else int(last) + 1
    beyond = size - covered
    if beyond <= 0:
        return False, covered
    if settings.audit_checkpoint_entries and beyond >= settings.audit_checkpoint_entries:
        return True, covered
    if not settings.audit_checkpoint_s:
        return False, covered
    oldest = session.execute(sa.select(ENTRIES.c.at).where(ENTRIES.c.seq == covered)).scalar()
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
    from latentops.governance import checkpoints

    settings = get_settings()
    if not (settings.audit_checkpoint_entries or settings.audit_checkpoint_s):
        return
    known = _covered.get(str(engine.url))
    if size is not None and (not settings.audit_checkpoint_entries or (
            known is not None and known <= size < known + settings.audit_checkpoint_entries)):
        return  # a chain shorter than the size seen (a database replaced) is looked at again
    if not _deployment_database(engine, settings.database_url):
        return
    try:
        with _integrator_session(engine) as session, session.begin():
            due, covered = _checkpoint_due(session, settings)
            _covered[str(engine.url)] = covered
            if not due:
                return
            key_path = checkpoints.default_key_path(settings)
            made = checkpoints.create(session, signing_key=checkpoints.load_or_create_signing_key(key_path),
                                      sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                                      keyring=checkpoints.signing_keyring(key_path))
            _covered[str(engine.url)] = made.tree_size
            log.info("automatic audit checkpoint: tree size %d", made.tree_size)
    except (LatentopsError, sa.exc.SQLAlchemyError, OSError) as error:
        log.warning("automatic audit checkpoint not made now: %s", error)


class Integrator:
    """A thread that integrates for the writers of this process (an API server).

    While it runs, a commit that wrote audit entries hands them over (``after_commit``) instead of
    integrating them in the request that committed: the request answers sooner, and the commits
    of ``delay_s`` share one batch (one chain lock, one head read, one insert, one WAL flush)
    instead of paying for one each. Every ``interval_s`` it also integrates what writers of other
    processes left pending. ``stop`` integrates whatever is still pending before it returns.

    Nothing is lost by handing over: the entries are committed in ``audit_pending`` before they are
    handed, readers of the chain catch up first, and a process that dies with entries handed but
    not integrated leaves them to the next integrator anywhere.
    """

    def __init__(self, engine: Engine, *, delay_s: float = 0.1, interval_s: float = 5.0) -> None:
        self.engine = engine
        self.delay_s = delay_s
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._records: list[audit.AuditRecord] = []
        self._records_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Integrator:
        with _integrators_lock:
            if self.engine in _integrators:
                raise RuntimeError(f"an audit integrator already runs for {self.engine.url!r}")
            _integrators[self.engine] = self
        self._thread = threading.Thread(target=self._loop, name="audit-integrator", daemon=True)
        self._thread.start()
        return self

    def take(self, records: Sequence[audit.AuditRecord]) -> None:
        """Called by the commit hook: integrate ``records`` (and whatever else is pending) soon."""
        if records:
            with self._records_lock:
                self._records.extend(records)
        self._wake.set()

    def stop(self, timeout_s: float = WAIT_TIMEOUT_S) -> None:
        """Stop taking commits (they integrate in place again), end the thread, and integrate
        everything pending, waiting for the chain lock if need be."""
        with _integrators_lock:
            if _integrators.get(self.engine) is self:
                del _integrators[self.engine]
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        records = self._taken()
        try:
            run_once(self.engine)
        except (LatentopsError, sa.exc.SQLAlchemyError) as error:
            log.warning("audit entries left pending at shutdown: %s", error)
            return
        if records:
            wait(records, timeout_s=timeout_s)  # placed by the run above, or by another process

    def _taken(self) -> list[audit.AuditRecord]:
        with self._records_lock:
            records, self._records = self._records, []
        return records

    def _loop(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.interval_s)
            if self._stop.is_set():
                return
            if woken:
                self._stop.wait(self.delay_s)  # commits made meanwhile join this batch
                self._wake.clear()
            records = self._taken()
            try:
                if woken:
                    # Never waits: a lock holder elsewhere looks for pending entries after it releases.
                    _place(records, integrate_when_free(self.engine))
                else:
                    run_once(self.engine)
            except (LatentopsError, sa.exc.SQLAlchemyError) as error:
                log.warning("audit entries committed but not integrated now: %s", error)
            except Exception:
                log.exception("background audit integration failed; the entries stay pending")


_integrators: dict[Engine, Integrator] = {}
_integrators_lock = threading.Lock()


def integrator_for(engine: Engine) -> Integrator | None:
    """The running ``Integrator`` that takes the commits made on ``engine`` in this process, if any."""
    return _integrators.get(engine)


def start_background(engine: Engine, *, interval_s: float = 1.0, stop: threading.Event | None = None) -> threading.Thread:
    """A daemon thread that integrates every ``interval_s``: for worker processes, so that entries
    of a writer that died between its commit and its integration do not wait for the next append
    (API processes run an ``Integrator``, which does this too). Set ``stop`` to end it."""
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                run_once(engine)
            except (LatentopsError, sa.exc.SQLAlchemyError) as error:
                log.warning("background audit integration failed: %s", error)

    thread = threading.Thread(target=loop, name="audit-integrator", daemon=True)
    thread.start()
    return thread
