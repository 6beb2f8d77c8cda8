"""``POST /api/v1/finetune``: submit a fine-tune with uploaded instance images and captions.

The multipart form carries the base model, a preset (or explicit recipe values as JSON), the
team, the licence and consent attestation and the images, each optionally with a caption. Uploads
are checked (``services.finetune_uploads``) only for what HTTP must guard: a file name is a plain
name (no folders, no ``..``, no hidden files), the count and each file's size are bounded, a
caption belongs to one image. They land in a private staging folder that is removed afterwards
whatever happens; each image is content-screened like a generated one (403 naming the file and
the category when refused), then the fine-tuning service validates the pixels, screens them for
copyright, asks the jobs policy and freezes the accepted files itself. A refused request leaves nothing stored but
the recorded policy decisions. A base model the caller cannot see answers 404, like one that does
not exist.

This is the only way to queue a fine-tune over HTTP: ``POST /jobs`` refuses kind ``finetune``
(422 naming this route), because the images must come with the request and be screened before
the server builds the job's params (the frozen upload folder, the catalogued weights, the team).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.api.jobs import PRIORITY_HELP
from latentops.platform.services.finetune_uploads import recipe_values, stage_uploads, submit_staged

router = APIRouter(tags=["finetune"])


@router.post("/finetune", status_code=201)
async def submit(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                 model: Annotated[str, Form(min_length=1, max_length=100)],
                 images: Annotated[list[UploadFile], File(description="Instance images (plain file names).")],
                 captions: Annotated[list[str] | None, Form(description="One caption per image, in order.")] = None,
                 instance_prompt: Annotated[str, Form(max_length=500)] = "",
                 preset: Annotated[str, Form(max_length=32)] = "standard",
                 params: Annotated[str, Form(max_length=10_000, description="Recipe values as a JSON object.")] = "",
                 team: Annotated[str | None, Form(max_length=100)] = None,
                 adapter_name: Annotated[str | None, Form(max_length=100)] = None,
                 attest_licence: Annotated[bool, Form()] = False, attest_consent: Annotated[bool, Form()] = False,
                 priority: Annotated[int | None, Form(ge=0, le=9, description=PRIORITY_HELP)] = None) -> dict[str, Any]:
    """Submit a fine-tune: uploads are checked, screened and decided before anything is queued."""
    values = recipe_values(preset, params, instance_prompt, max_depth=settings.max_json_depth)
    folder = await stage_uploads(settings, images, captions or [])
    return await run_in_threadpool(submit_staged, session, settings, principal, folder=folder, model=model, values=values,
                                   team=team, adapter_name=adapter_name, attest_licence=attest_licence,
                                   attest_consent=attest_consent, priority=priority)
