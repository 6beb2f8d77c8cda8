"""Engines and sessions.

One engine per database URL per process. SQLite runs in WAL mode with foreign keys on and a busy
timeout, so the API, the worker and the CLI can share one file. Unreachable databases raise
``ServiceUnavailable`` with one line that names the URL (without its password).

What must happen only once a transaction is durable (handing a new job to the broker) is
registered with :func:`after_commit`; ``session_scope`` runs it right after its commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from latentops.core.errors import PolicyDenied, SchemaNotMigrated, ServiceUnavailable


def redact(url: str) -> str:
    """The URL as it may be printed: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is printed as given, it holds nothing parsable
        return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (created lazily, connections made on first use)."""
    if url in _engines:
        return _engines[url]
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        path = make_url(url).database
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5})
    engine = sa.create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    _engines[url] = engine
    return engine


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    if url not in _sessionmakers:
        _sessionmakers[url] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    return _sessionmakers[url]


_AFTER_COMMIT = "latentops.after_commit"


def discard_after_commit(session: Session) -> None:
    """Forget the callbacks queued by ``after_commit`` (a caller that rolls back a refused request)."""
    session.info.pop(_AFTER_COMMIT, None)


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the transaction of ``session`` has committed.

    ``session_scope`` runs the callbacks in the order they were registered, right after its commit
    succeeds and the session is closed (so none holds a connection while it runs); an error in one
    propagates to the scope's caller and the later ones do not run. A rollback drops them, and so
    does a policy denial: its decision record is committed, but the work it refused is not done.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@contextlib.contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error.

    One exception: a policy denial is committed before it propagates. Services ask the policy
    engine before they change anything, so what a denial leaves in the session is its decision
    record and audit entry, and those must be kept: a refused request is itself evidence.
    After a successful commit the session's :func:`after_commit` callbacks run.
    """
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except PolicyDenied:
        session.commit()
        raise
    except sa.exc.OperationalError as error:
        session.rollback()
        if _is_connection_error(error):
            raise ServiceUnavailable(f"database unreachable at {redact(url)}: {_first_line(error)}") from None
        _raise_if_unmigrated(error, url)
        raise
    except sa.exc.ProgrammingError as error:
        session.rollback()
        _raise_if_unmigrated(error, url)
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        callbacks: list[Callable[[], object]] = session.info.pop(_AFTER_COMMIT, [])
        session.close()
    for callback in callbacks:  # reached only when the commit above succeeded
        callback()


def check_connection(url: str) -> None:
    """Raise ``ServiceUnavailable`` with one line if the database cannot be reached."""
    try:
        with get_engine(url).connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        raise ServiceUnavailable(f"database unreachable at {redact(url)}: {_first_line(error)}") from None


# SQLite's messages and PostgreSQL's SQLSTATEs (undefined table, undefined column) for a schema
# older than the code: the home was never migrated, or was migrated by an older release.
_UNMIGRATED_SQLITE = ("no such table", "no such column", "has no column named")
_UNMIGRATED_SQLSTATES = ("42P01", "42703")


def _raise_if_unmigrated(error: sa.exc.DBAPIError, url: str) -> None:
    """One line naming the fix (``latentops db upgrade``) when the schema lags behind the code."""
    text = str(error.orig).strip()
    if getattr(error.orig, "sqlstate", None) in _UNMIGRATED_SQLSTATES or any(m in text.lower() for m in _UNMIGRATED_SQLITE):
        raise SchemaNotMigrated(f"the database at {redact(url)} is not at this release's schema ({text.splitlines()[0]}); "
                                "run `latentops db upgrade`") from None


def _is_connection_error(error: sa.exc.OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(
        marker in text
        for marker in ("could not connect", "connection refused", "unable to open database", "connection failed",
                       "server closed the connection", "timeout expired", "does not exist")
    )


def _first_line(error: BaseException) -> str:
    inner = getattr(error, "orig", None) or error
    return str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__


def dispose_all() -> None:
    """Close pooled connections and forget engines (after fork, and before dropping a database)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmakers.clear()


def forget_after_fork() -> None:
    """In a forked child: drop inherited pools without closing the parent's connections."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _sessionmakers.clear()
