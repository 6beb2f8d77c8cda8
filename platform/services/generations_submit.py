"""Queueing a governed generation for an authenticated caller: decide now, then submit the job.

Shared by ``POST /generations``, ``POST /jobs`` (kind ``generate``) and the portal's generate page,
in the caller's transaction. The prompt and models policies are asked before anything is queued (a
denial raises ``PolicyDenied``, whose decisions the request's transaction keeps as evidence; a
model the caller cannot see is ``NotFound``, like one that does not exist); the job's params are
built on the server by ``job_requests.build_generate``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from latentops.core.settings import Settings
from latentops.governance import access
from latentops.governance.access import Principal
from latentops.platform.services import job_requests, jobs, teams
from latentops.platform.services.job_requests import GenerationBody
from latentops.platform.tables import Job


def submit(session: Session, settings: Settings, principal: Principal, body: GenerationBody, *,
           priority: int | None = None) -> Job:
    """The queued ``generate`` job; it goes to the broker once the caller's transaction commits."""
    access.check(session, principal=principal, action="generations.create")
    team = teams.resolve(session, principal, body.team)
    params = job_requests.build_generate(session, principal=principal, team=team, request=body)
    return jobs.submit(session, settings, kind="generate", params=params, actor=principal.email, owner=principal.user,
                       team=team, priority=priority, subject=principal.subject)
