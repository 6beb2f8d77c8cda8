"""``session_scope`` and its after-commit callbacks: run once the transaction is durable, in order,
and never for work that was rolled back or refused."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from latentops.core.errors import PolicyDenied, ServiceUnavailable
from latentops.platform.database import after_commit, session_scope
from latentops.platform.tables import Team


def _teams(url: str) -> list[str]:
    with session_scope(url) as db:
        return list(db.scalars(sa.select(Team.name).order_by(Team.name)))


def test_callbacks_run_in_order_after_the_commit_and_see_its_rows(database_url: str) -> None:
    seen: list[tuple[str, list[str]]] = []
    with session_scope(database_url) as db:
        db.add(Team(name="vision"))
        after_commit(db, lambda: seen.append(("first", _teams(database_url))))
        after_commit(db, lambda: seen.append(("second", _teams(database_url))))
        assert seen == []  # nothing runs before the commit
    assert seen == [("first", ["vision"]), ("second", ["vision"])]


def test_a_rollback_drops_the_callbacks(database_url: str) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), session_scope(database_url) as db:
        db.add(Team(name="vision"))
        after_commit(db, lambda: seen.append("ran"))
        raise RuntimeError("boom")
    assert seen == [] and _teams(database_url) == []
    with session_scope(database_url) as db:  # a later scope starts with none
        db.add(Team(name="audio"))
    assert seen == []


def test_a_policy_denial_keeps_its_record_but_drops_the_callbacks(database_url: str) -> None:
    seen: list[str] = []
    with pytest.raises(PolicyDenied), session_scope(database_url) as db:
        db.add(Team(name="evidence"))  # stands for the denial's decision record
        after_commit(db, lambda: seen.append("ran"))
        raise PolicyDenied("refused")
    assert seen == [] and _teams(database_url) == ["evidence"]


def test_a_failing_callback_reaches_the_caller_after_the_commit_and_stops_the_rest(database_url: str) -> None:
    seen: list[str] = []

    def unreachable() -> None:
        raise ServiceUnavailable("broker unreachable")

    with pytest.raises(ServiceUnavailable, match="broker unreachable"), session_scope(database_url) as db:
        db.add(Team(name="vision"))
        after_commit(db, unreachable)
        after_commit(db, lambda: seen.append("ran"))
    assert seen == [] and _teams(database_url) == ["vision"]
