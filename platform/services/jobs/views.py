"""What a caller may see of the jobs: team isolation and the JSON of a job.

Shared by the REST routes (``/api/v1/jobs``, generations, datasets, fine-tune) and the portal's
pages. A job belongs to the team it was submitted for; another team's job is ``NotFound``, exactly
like a job that does not exist. Lists show only the caller's teams' jobs unless the access policy
lets the caller's role see every team.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.governance import access
from latentops.governance.access import Principal
from latentops.platform.services import teams
from latentops.platform.services.jobs.control import as_dict, queue_position
from latentops.platform.services.users import team_names
from latentops.platform.tables import Job, Team


def job_json(session: Session, job: Job, names: dict[int, str] | None = None,
             positions: dict[int, int | None] | None = None) -> dict[str, Any]:
    names = names if names is not None else team_names(session)
    position = positions[job.id] if positions is not None else queue_position(session, job)
    return {**as_dict(job), "team": names.get(job.team_id) if job.team_id else None, "queue_position": position}


def visible_job(session: Session, principal: Principal, job_id: int, action: str = "jobs.read") -> Job:
    """The job if the caller may ``action`` it; another team's job is NotFound, like a missing one."""
    return teams.visible_row(session, principal, Job, job_id, action=action, missing=f"job: no job with id {job_id}")


def submitted_json(session: Session, job: Job) -> dict[str, Any]:
    """The JSON of a job this request submitted: its team is in the session already, and its queue
    position is counted in the request's transaction, before the commit hands the job to the broker."""
    team = session.get(Team, job.team_id) if job.team_id else None
    return job_json(session, job, names={team.id: team.name} if team else {})


def visible_team_ids(session: Session, principal: Principal, action: str) -> list[int] | None:
    """The ids of the teams whose resources the caller may ``action``; None: every team."""
    if access.sees_all_teams(session, principal=principal, action=action):
        return None
    names = principal.teams
    return list(session.scalars(sa.select(Team.id).where(Team.name.in_(names)))) if names else []
