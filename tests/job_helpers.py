"""Jobs for tests: submitted as the console does, or written as queued without any broker."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from latentops.core.settings import Settings
from latentops.platform.database import session_scope
from latentops.platform.services import jobs
from latentops.platform.services.jobs.submit import _write
from latentops.platform.tables import Job, Team


def submit_job(settings: Settings, *, team_id: int | None = None, **fields: Any) -> int:
    """``jobs.submit`` in a transaction of its own (the job goes to the broker once it commits); the id."""
    with session_scope(settings.database_url) as db:
        team = db.get(Team, team_id) if team_id is not None else None
        job = jobs.submit(db, settings, team=team, **fields)
    return job.id


def queued_job(db: Session, *, kind: str, params: dict[str, Any], actor: str, team_id: int | None = None) -> Job:
    """A queued job as ``jobs.submit`` writes it (row, first event, audit entry), handed to no broker:
    for tests that list, cancel or claim jobs where no broker runs."""
    return _write(db, kind=kind, params=params, actor=actor, owner=None, team_id=team_id, priority=0)


def submit_finetune(settings: Settings, *, actor: str, request: Any) -> int:
    """``finetune.submit`` in a transaction of its own, as the console's ``finetune submit`` runs it; the id.

    A denial raises out of the transaction, which keeps its decisions (they are evidence)."""
    from latentops.platform.services import finetune

    with session_scope(settings.database_url) as db:
        job = finetune.submit(db, settings, actor=actor, request=request)
    return job.id
