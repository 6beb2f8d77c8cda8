"""``/api/v1/jobs``: submit, list, inspect, cancel, retry, logs and a live progress stream.

Team isolation (``services.jobs.views``): a job belongs to the team it was submitted for; another team's job answers 404
exactly like a job that does not exist. Lists show only the caller's teams' jobs unless the access
policy lets the caller's role see every team.

``GET /jobs/{id}/progress`` is a Server-Sent Events stream: an ``event: progress`` with the job's
state, progress and queue position whenever they change (the worker writes progress about once a
second), a comment line every 15 s to keep proxies from closing it, and ``event: done`` when the
job finishes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import access
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.database import session_scope
from latentops.platform.services import generations_submit, job_requests, teams
from latentops.platform.services import jobs as jobs_service
from latentops.platform.services.job_requests import CLIENT_KINDS
from latentops.platform.services.jobs.views import job_json, submitted_json, visible_job, visible_team_ids
from latentops.platform.services.users import team_names

router = APIRouter(tags=["jobs"])
STREAM_POLL_S = 0.5
KEEPALIVE_S = 15.0


PRIORITY_HELP = ("Queue priority 0-9, higher first. Omitted: your role's default (admins 5, others 0); asking "
                 "for more than your role's maximum is refused. Both are jobs policy data.")


PARAMS_HELP = ("The kind's typed request: diagnostics {steps, seed, step_delay_s}; generate: the body of "
               "POST /generations; dataset: the spec of POST /datasets. Unknown fields are refused.")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=32, description="One of " + ", ".join(CLIENT_KINDS) + ".")
    params: dict[str, Any] = Field(default_factory=dict, description=PARAMS_HELP)
    team: str | None = Field(default=None, max_length=100, description="Team to run for; optional with one team.")
    priority: int | None = Field(default=None, ge=0, le=9, description=PRIORITY_HELP)


def _one_team(body: JobRequest, named: str | None) -> str | None:
    if body.team is not None and named is not None and body.team.strip().lower() != named.strip().lower():
        raise InvalidInput(f"team: {body.team!r} and params.team {named!r} differ; name the team once")
    return named if named is not None else body.team


@router.post("/jobs", status_code=201)
def submit(body: JobRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Submit a job for one of the caller's teams; it goes to the broker once the row commits.

    ``params`` is the kind's typed request, never the params the worker runs: those are built on
    the server by the kind's builder, the same one the kind's own route uses (``generate``: the
    body of ``POST /generations``; ``dataset``: the spec of ``POST /datasets``). ``finetune`` is
    refused here (422): its instance images are uploaded with ``POST /finetune``. Internal fields
    (actor, team ids, paths, weights, record ids) are unknown fields, refused with a 422.
    """
    access.check(session, principal=principal, action="jobs.submit")
    if body.kind == "finetune":
        raise InvalidInput(f"kind: finetune jobs are submitted with {job_requests.FINETUNE_ROUTE}, which uploads "
                           "the instance images with the request")
    if body.kind not in CLIENT_KINDS:
        raise InvalidInput(f"kind: unknown job kind {body.kind!r}; one of {', '.join(CLIENT_KINDS)}")
    if body.kind == "generate":
        request = job_requests.parse(job_requests.GenerationBody, body.params, source="params")
        request = request.model_copy(update={"team": _one_team(body, request.team)})
        return submitted_json(session, generations_submit.submit(session, settings, principal, request,
                                                                 priority=body.priority))
    if body.kind == "dataset":
        from latentops.pipelines.datasets.spec import DatasetSpec
        from latentops.platform.services import datasets  # images and screening: imported on first use

        if body.priority is not None:
            raise InvalidInput("priority: dataset jobs run at their team's default priority")
        spec = job_requests.parse(DatasetSpec, body.params, source="params")
        spec = spec.model_copy(update={"team": _one_team(body, spec.team)})
        row, job = datasets.submit_request(session, settings, principal, spec)
        return {**job_json(session, job), "dataset_id": row.id}
    request = job_requests.parse(job_requests.DiagnosticsRequest, body.params, source="params")
    team = teams.resolve(session, principal, body.team)
    job = jobs_service.submit(session, settings, kind=body.kind, params=job_requests.build_diagnostics(request),
                              actor=principal.email, owner=principal.user, team=team, priority=body.priority,
                              subject=principal.subject)
    return submitted_json(session, job)


@router.get("/jobs")
def list_jobs(session: SessionDep, principal: PrincipalDep, state: str | None = Query(default=None, max_length=16),
              offset: int = Query(default=0, ge=0, le=1_000_000), limit: int = Query(default=50, ge=1, le=500)
              ) -> dict[str, Any]:
    """The caller's teams' jobs, newest first, ``limit`` at a time from ``offset``."""
    access.check(session, principal=principal, action="jobs.read")
    team_ids = visible_team_ids(session, principal, "jobs.read")
    rows = jobs_service.list_jobs(session, state=state, offset=offset, limit=limit + 1, team_ids=team_ids)
    names = team_names(session)
    page = rows[:limit]
    positions = jobs_service.queue_positions(session, page)  # one query for the page, not one per job
    return {"items": [job_json(session, job, names, positions) for job in page], "offset": offset, "limit": limit,
            "next_offset": offset + limit if len(rows) > limit else None}


@router.get("/jobs/{job_id}")
def show(job_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """One job: state, progress, result, queue position."""
    return job_json(session, visible_job(session, principal, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Cancel: a queued job at once, a running one at its next step."""
    visible_job(session, principal, job_id, "jobs.control")
    job = jobs_service.cancel(session, job_id=job_id, actor=principal.email)
    return job_json(session, job)


@router.post("/jobs/{job_id}/retry")
def retry(job_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a failed or cancelled job again."""
    visible_job(session, principal, job_id, "jobs.control")
    return job_json(session, jobs_service.retry(session, settings, job_id=job_id, actor=principal.email))


@router.get("/jobs/{job_id}/logs")
def logs(job_id: int, session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """The job's event log: state changes, log lines, warnings."""
    visible_job(session, principal, job_id)
    return [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "data": e.data}
            for e in jobs_service.events(session, job_id)]


def _snapshot(settings: Settings, job_id: int) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        job = jobs_service.get(session, job_id)
        return {"id": job.id, "state": job.state.value, "progress": job.progress, "error": job.error,
                "hold_reason": job.hold_reason, "queue_position": jobs_service.queue_position(session, job),
                "finished": job.state.finished}


async def progress_events(request: Request, settings: Settings, job_id: int) -> AsyncIterator[str]:
    last: dict[str, Any] | None = None
    quiet_since = time.monotonic()
    while True:
        snapshot = await run_in_threadpool(_snapshot, settings, job_id)
        if snapshot != last:
            yield f"event: progress\ndata: {json.dumps(snapshot, sort_keys=True)}\n\n"
            last, quiet_since = snapshot, time.monotonic()
        if snapshot["finished"]:
            yield f"event: done\ndata: {json.dumps({'id': job_id, 'state': snapshot['state']})}\n\n"
            return
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)


@router.get("/jobs/{job_id}/progress", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
def progress_stream(job_id: int, request: Request, session: SessionDep, settings: SettingsDep,
                    principal: PrincipalDep) -> StreamingResponse:
    """Live progress as Server-Sent Events until the job finishes."""
    visible_job(session, principal, job_id)
    return StreamingResponse(progress_events(request, settings, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
