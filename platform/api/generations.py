"""``/api/v1/generations``: queue governed image generation and read back its released images.

``POST`` asks the prompt and models policies at once (a denied prompt answers 403 with the
reasons and queues nothing; a model the caller cannot see answers 404, like one that does not
exist), then queues a ``generate`` job with params built on the server
(``services.generations_submit``); the worker runs the governed path on the requester's behalf.
``GET /generations/{job_id}`` reports the job and, when it is done, the images: released ones
with their download URL, quarantined ones by asset id only (``services.generation_views``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services import generations_submit
from latentops.platform.services.generation_views import generation_json
from latentops.platform.services.job_requests import GenerationBody
from latentops.platform.services.jobs.views import submitted_json

router = APIRouter(tags=["generations"])


@router.post("/generations", status_code=201)
def create(body: GenerationBody, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a generation; the prompt and model access are decided before anything is queued."""
    return submitted_json(session, generations_submit.submit(session, settings, principal, body))


@router.get("/generations/{job_id}")
def show(job_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """The generation job and its images (released ones with their URL)."""
    return generation_json(session, principal, job_id)
