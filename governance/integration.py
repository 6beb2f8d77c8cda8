"""Integration: who moves pending audit entries into the hash chain, and when.

``audit.record`` writes an entry to ``audit_pending`` inside the transaction of the change it
records, without any chain lock, so concurrent writers commit in parallel (PostgreSQL groups their
WAL flushes). Integration gives committed pending entries their place in batches (``placement``
does the moving: one chain lock, one head read, one insert per batch).

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
place in the chain is assigned moments later by the same or another process. Whenever entries
were placed here, an automatic checkpoint is signed if one is due (``checkpoints.maybe_checkpoint``).

A transaction that reads ``AuditRecord.seq`` before committing is integrated at once in that
transaction (``placement.sequence``), holding the chain lock until it ends: correct, but serial.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import LatentopsError, ServiceUnavailable
from latentops.governance import audit_chain, audit_mac
from latentops.governance.checkpoints import maybe_checkpoint
from latentops.governance.placement import (
    BATCH,
    PENDING,
    Placement,
    Written,
    catch_up,
    integrate,
    integrate_all,
    integrator_session,
    move,
    pending_count,
    place,
    placements,
    raise_refused,
    sequence,
)

log = logging.getLogger(__name__)

# Integrating in the caller's transaction (``placement``) is part of this module's API too.
__all__ = [
    "LOCK_TIMEOUT_S", "WAIT_TIMEOUT_S", "Integrator", "Placement", "after_commit", "catch_up", "integrate",
    "integrate_all", "integrate_when_free", "integrator_for", "pending_count", "run_once", "sequence",
    "start_background", "wait",
]

# How long a writer waits for the chain lock after its commit before leaving its entries to the
# next integrator (they are durable either way).
LOCK_TIMEOUT_S = 10.0
WAIT_TIMEOUT_S = 60.0


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
            if not raw.execute(f"SELECT pg_try_advisory_lock({audit_chain.ADVISORY_LOCK_KEY})").fetchone()[0]:
                return placed
            try:
                raw.autocommit = False
                with Session(bind=connection, expire_on_commit=False) as session:
                    session.info["audit_integrator"] = True
                    with session.begin():
                        while True:
                            batch = move(session, BATCH)
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
        cursor = raw.execute(f"SELECT pg_advisory_unlock({audit_chain.ADVISORY_LOCK_KEY}); "
                             f"SELECT count(*) FROM (SELECT 1 FROM audit_pending{skip} LIMIT 1) AS waiting")
        cursor.nextset()
        return bool(cursor.fetchone()[0])
    except Exception:
        connection.invalidate()
        raise


def _integrate_waiting(engine: Engine) -> dict[int, Placement]:
    placed: dict[int, Placement] = {}
    with integrator_session(engine) as session, session.begin():
        audit_chain.lock_chain(session)
        while True:
            batch = move(session, BATCH)
            placed.update(batch)
            if len(batch) < BATCH:
                return placed


def after_commit(engine: Engine, records: Sequence[Written], connection: sa.Connection | None = None) -> None:
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
        place(records, integrate_when_free(engine, connection))
    except (LatentopsError, sa.exc.SQLAlchemyError) as error:
        # A damaged chain has already alarmed (CRITICAL, metric); anything else is transient.
        log.warning("audit entries committed but not integrated now: %s", error)
    except Exception:  # the commit has happened: raising here would tell the caller it failed
        log.exception("audit integration after commit failed; the entries stay pending")


def _settle(engine: Engine, records: Sequence[Written], lock_timeout_s: float) -> None:
    """One transaction on ``engine`` under the chain lock (waiting for it): place ``records``,
    integrating everything pending if they are not in the chain yet."""
    wanted = {record.id for record in records}
    with integrator_session(engine) as session, session.begin():
        audit_chain.lock_chain(session, timeout_s=lock_timeout_s)
        placed = placements(session, wanted)
        if not wanted <= placed.keys():
            while True:
                batch = move(session, BATCH)
                placed.update(batch)
                if wanted <= placed.keys() or len(batch) < BATCH:
                    break
            missing = wanted - placed.keys()
            if missing:  # placed by an earlier holder after this transaction's first look
                placed.update(placements(session, missing))
        still = wanted - placed.keys()
        waiting = set(session.execute(sa.select(PENDING.c.id).where(PENDING.c.id.in_(list(still)))).scalars()) if still else set()
    place(records, placed)
    for record in records:
        if not record.integrated and record.id not in waiting:
            record._rolled_back()  # written in a savepoint that rolled back: never committed
    integrate_when_free(engine)  # it held the lock: entries turned away meanwhile are its to take
    raise_refused(engine, records)


def wait(records: Iterable[Written], *, timeout_s: float = WAIT_TIMEOUT_S) -> None:
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
    with integrator_session(engine) as session, session.begin():
        moved = catch_up(session)
    moved += len(integrate_when_free(engine))
    maybe_checkpoint(engine)  # the time rule: entries may have waited long enough with no new one
    return moved


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
        self._records: list[Written] = []
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

    def take(self, records: Sequence[Written]) -> None:
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

    def _taken(self) -> list[Written]:
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
                    place(records, integrate_when_free(self.engine))
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


def start_background(engine: Engine, *, interval_s: float = 1.0, stop: threading.Event | None = None,
                     guard: contextlib.AbstractContextManager[Any] | None = None) -> threading.Thread:
    """A daemon thread that integrates every ``interval_s``: for worker processes, so that entries
    of a writer that died between its commit and its integration do not wait for the next append
    (API processes run an ``Integrator``, which does this too). Set ``stop`` to end it. Each pass
    runs inside ``guard`` when given (a worker's lock that keeps forks out of database calls)."""
    stop = stop or threading.Event()
    held = guard or contextlib.nullcontext()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                with held:
                    run_once(engine)
            except (LatentopsError, sa.exc.SQLAlchemyError) as error:
                log.warning("background audit integration failed: %s", error)

    thread = threading.Thread(target=loop, name="audit-integrator", daemon=True)
    thread.start()
    return thread
