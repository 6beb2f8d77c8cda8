"""``/api/v1/generations``: queue governed image generation and read back its released images.

``POST`` asks the prompt and models policies at once (a denied prompt answers 403 with the
reasons and queues nothing; a model the caller cannot see answers 404, like one that does not
exist), then queues a ``generate`` job with params built on the server
(``services.generations_submit``); the worker runs the governed path on the requester's behalf.
``GET /generations/{job_id}`` reports the job and, when it is done, the images: released ones
with their download URL, quarantined ones by asset id only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.governance.access import Principal
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services import generations_submit
from latentops.platform.services.job_requests import GenerationBody
from latentops.platform.services.jobs.views import job_json, submitted_json, visible_job
from latentops.platform.tables import Asset

router = APIRouter(tags=["generations"])


def generation_json(session: Session, principal: Principal, job_id: int) -> dict[str, Any]:
    job = visible_job(session, principal, job_id)
    if job.kind != "generate":
        raise NotFound(f"generation: no generation with job id {job_id}")
    assets = session.scalars(sa.select(Asset).where(Asset.job_id == job.id).order_by(Asset.id)).all()
    return {"job": job_json(session, job),
            "images": [{"asset_id": a.id, "seed": a.seed, "status": a.status,
                        "url": f"/api/v1/assets/{a.id}/image" if a.status == "released" else None} for a in assets]}


@router.post("/generations", status_code=201)
def create(body: GenerationBody, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a generation; the prompt and model access are decided before anything is queued."""
    return submitted_json(session, generations_submit.submit(session, settings, principal, body))


@router.get("/generations/{job_id}")
def show(job_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """The generation job and its images (released ones with their URL)."""
    return generation_json(session, principal, job_id)
