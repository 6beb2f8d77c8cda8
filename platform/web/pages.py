"""The portal's pages for submitters and data scientists: jobs, fine-tuning, generate and datasets.

Each page asks the access policy like its REST twin (and calls the same services for team
isolation), then renders a template. Live parts are htmx fragments: the jobs table, a job's whole
view, a generation and a dataset poll every two seconds until they have finished; the prompt box
asks the prompt policy as the user types and enables Generate only for an allowed prompt. A form
that is refused is shown again with the reason and what the user entered.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentops.core.errors import LatentopsError, NotFound, PolicyDenied
from latentops.governance import access, policy
from latentops.pipelines.finetune.config import build_config
from latentops.platform import database
from latentops.platform.api import limits
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services import (
    finetune_policy,
    finetune_uploads,
    generation_views,
    generations_submit,
    job_requests,
    teams,
)
from latentops.platform.services import jobs as jobs_service
from latentops.platform.services import models as models_service
from latentops.platform.services import users as users_service
from latentops.platform.services.jobs import views as job_views
from latentops.platform.tables import Asset, ModelRecord
from latentops.platform.web import protected_names as protected_names_page
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)


def service_available(module: str) -> bool:
    """Whether a capability's service is installed (fine-tuning, generation and datasets land separately)."""
    return importlib.util.find_spec(module) is not None


def keep_only_evidence(session: Any, error: LatentopsError) -> None:
    """What a refused form leaves in the request's transaction: a policy denial's decisions (they are
    evidence, as ``session_scope`` keeps them), nothing else; the work it registered is dropped too."""
    if isinstance(error, PolicyDenied):
        return
    session.rollback()
    database.discard_after_commit(session)


_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def shown(text: str) -> str:
    """A message for a person: server paths are reduced to their last part (the file's own name)."""
    return _SERVER_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


# --- jobs --------------------------------------------------------------------------------------


def _jobs_page(request: Request, session: Any, principal: Any, offset: int) -> dict[str, Any]:
    access.check(session, principal=principal, action="jobs.read")
    team_ids = job_views.visible_team_ids(session, principal, "jobs.read")
    rows = jobs_service.list_jobs(session, offset=offset, limit=26, team_ids=team_ids)
    names = users_service.team_names(session)
    return {"jobs": [job_views.job_json(session, job, names) for job in rows[:25]], "offset": offset,
            "next_offset": offset + 25 if len(rows) > 25 else None}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, principal: PortalUser,
              offset: int = Query(default=0, ge=0)) -> HTMLResponse:
    can_submit = access.allowed(session, principal=principal, action="jobs.submit")
    return render(request, "jobs.html", session=session, principal=principal, can_submit=can_submit,
                  finetune=service_available("latentops.platform.services.finetune"),
                  can_generate=access.allowed(session, principal=principal, action="generations.create"),
                  can_dataset=access.allowed(session, principal=principal, action="datasets.create"),
                  **_jobs_page(request, session, principal, offset))


@router.get("/jobs/table", response_class=HTMLResponse)
def jobs_table(request: Request, session: SessionDep, principal: PortalUser,
               offset: int = Query(default=0, ge=0)) -> HTMLResponse:
    return render(request, "fragments/jobs_table.html", **_jobs_page(request, session, principal, offset))


def _loss_chart(job: dict[str, Any]) -> dict[str, str]:
    """SVG polyline points (300x120 box) for the job's training loss history and, once the run has
    evaluated its held-out images (``validation_split``), the held-out loss at its steps, on one
    scale; "" for a series with too few points."""
    series = job["result"].get("losses") or job["result"].get("loss_history") or job["progress"].get("losses") or []
    values = [float(v) for v in series if isinstance(v, int | float)]
    held = [(int(s), float(v)) for s, v in job["result"].get("val_losses") or [] if isinstance(v, int | float)]
    if len(values) < 2:
        return {"train": "", "held_out": ""}
    steps = max(int(job["progress"].get("total") or 0), len(job["result"].get("losses") or []), 2)
    low, high = min(values + [v for _, v in held]), max(values + [v for _, v in held])
    span = (high - low) or 1.0

    def y(value: float) -> str:
        return f"{110 - 100 * (value - low) / span:.1f}"

    every = 300.0 / (len(values) - 1)
    return {"train": " ".join(f"{i * every:.1f},{y(v)}" for i, v in enumerate(values)),
            "held_out": " ".join(f"{300.0 * (s - 1) / (steps - 1):.1f},{y(v)}" for s, v in held) if held else ""}


JOB_IMAGE_PURPOSES = ("validation", "samples", "generation")  # a job's own renders; not class or dataset images
LOG_TAIL = 200


def _job_view(request: Request, session: Any, principal: Any, job_id: int) -> dict[str, Any]:
    """Everything the job page shows: state, ETA, loss chart, validation images, the log's tail and,
    for a finished fine-tune, the adapter it registered."""
    job = job_views.job_json(session, job_views.visible_job(session, principal, job_id))
    events = jobs_service.events(session, job_id)
    can_control = access.allowed(session, principal=principal, action="jobs.control")
    # Validation images and samples are the job's assets: released ones are shown, held ones counted.
    assets = session.execute(sa.select(Asset.id, Asset.status).where(
        Asset.job_id == job_id, Asset.purpose.in_(JOB_IMAGE_PURPOSES)).order_by(Asset.id)).all()
    return {"job": job, "events": events[-LOG_TAIL:], "events_hidden": max(0, len(events) - LOG_TAIL),
            "loss_chart": _loss_chart(job), "can_control": can_control,
            "images": [str(a.id) for a in assets if a.status == "released"],
            "held": sum(1 for a in assets if a.status != "released"),
            "adapter": generation_views.adapter_of_job(session, job_id) if job["state"] == "succeeded" else None,
            "mlflow_run": job["result"].get("mlflow_run_id")}


@router.get("/jobs/{job_id:int}", response_class=HTMLResponse)
def job_page(job_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    return render(request, "job.html", session=session, principal=principal,
                  **_job_view(request, session, principal, job_id))


@router.get("/jobs/{job_id:int}/live", response_class=HTMLResponse)
def job_live(job_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    """The job view as one fragment: the page swaps it in every two seconds until the job has finished."""
    return render(request, "fragments/job_live.html", principal=principal,
                  **_job_view(request, session, principal, job_id))


@router.get("/jobs/{job_id:int}/images/{asset_id:int}")
def job_image(job_id: int, asset_id: int, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    """A released image of a job the caller may see (its validation images and samples)."""
    job_views.visible_job(session, principal, job_id)
    asset = session.get(Asset, asset_id)
    if asset is None or asset.job_id != job_id or asset.status != "released" or not asset.path \
            or not Path(asset.path).is_file():
        raise NotFound(f"image: job {job_id} has no released image {asset_id}")
    return Response(content=Path(asset.path).read_bytes(), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.post("/jobs/{job_id:int}/cancel", response_class=HTMLResponse)
def cancel_job(job_id: int, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    job_views.visible_job(session, principal, job_id, "jobs.control")
    jobs_service.cancel(session, job_id=job_id, actor=principal.email)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


# --- generate ----------------------------------------------------------------------------


def _usable_models(session: Any, principal: Any) -> list[str]:
    return _usable_model_names(session, principal)


@router.get("/generate", response_class=HTMLResponse)
def generate_page(request: Request, session: SessionDep, principal: PortalUser,
                  model: Annotated[str, Query(max_length=200)] = "",
                  lora: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
    """The generate form; ``model`` and ``lora`` preselect a base model and an adapter (a fine-tune's link)."""
    access.check(session, principal=principal, action="prompt.check")
    can_generate = access.allowed(session, principal=principal, action="generations.create")
    adapters = generation_views.usable_adapters(session, principal) if can_generate else []
    chosen = next((a for a in adapters if a["ref"] == lora or a["name"] == lora), None) if lora else None
    return render(request, "generate.html", session=session, principal=principal, generation=True,
                  can_generate=can_generate, models=_usable_models(session, principal) if can_generate else [],
                  adapters=adapters, form={"model": chosen["model"] if chosen else model,
                                           "lora": chosen["ref"] if chosen else ""})


@router.post("/generate", response_class=HTMLResponse)
def generate_submit(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                    model: Annotated[str, Form(min_length=1, max_length=200)],
                    prompt: Annotated[str, Form(min_length=1, max_length=20_000)],
                    negative_prompt: Annotated[str, Form(max_length=20_000)] = "",
                    n: Annotated[int, Form(ge=1, le=64)] = 4, seed: Annotated[int, Form(ge=0)] = 0,
                    steps: Annotated[int, Form(ge=1, le=500)] = 20, guidance: Annotated[float, Form(ge=0, le=50)] = 5.0,
                    lora: Annotated[str, Form(max_length=200)] = "",
                    team: Annotated[str, Form(max_length=100)] = "") -> Response:
    form = {"model": model, "lora": lora, "prompt": prompt, "negative_prompt": negative_prompt, "n": n, "seed": seed,
            "steps": steps, "guidance": guidance, "team": team}
    try:
        body = job_requests.parse(job_requests.GenerationBody, {
            "model": model, "lora": lora or None, "prompt": prompt, "negative_prompt": negative_prompt or None, "n": n,
            "seed": seed, "steps": steps, "guidance": guidance, "team": team or None}, source="")
        job = generations_submit.submit(session, settings, principal, body)
    except LatentopsError as error:  # shown on the form, with everything the user entered
        keep_only_evidence(session, error)
        can_generate = access.allowed(session, principal=principal, action="generations.create")
        return render(request, "generate.html", session=session, principal=principal, generation=True,
                      can_generate=can_generate, models=_usable_models(session, principal) if can_generate else [],
                      adapters=generation_views.usable_adapters(session, principal) if can_generate else [], form=form,
                      error=shown(error.detail), reasons=[shown(str(r)) for r in error.reasons
                                                           if str(r) != error.detail],
                      status_code=error.status_code)
    return RedirectResponse(f"/generate/{job.id}", status_code=303)


@router.get("/generate/{job_id:int}", response_class=HTMLResponse)
def generation_page(job_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    data = generation_views.generation_json(session, principal, job_id)  # NotFound unless visible
    row = jobs_service.get(session, job_id)
    return render(request, "generation.html", session=session, principal=principal,
                  request_params=generation_views.request_view(row.params or {}), **data)


@router.get("/generate/{job_id:int}/status", response_class=HTMLResponse)
def generation_status(job_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    """The generation's live part; once it has finished, status 286 tells htmx to stop polling."""
    data = generation_views.generation_json(session, principal, job_id)
    finished = data["job"]["state"] in {"succeeded", "failed", "cancelled"}
    return render(request, "fragments/generation_status.html", status_code=286 if finished else 200, **data)


@router.post("/generate/check", response_class=HTMLResponse)
def prompt_check(request: Request, session: SessionDep, principal: PortalUser,
                 prompt: Annotated[str, Form(max_length=20_000)] = "") -> HTMLResponse:
    """The prompt policy's verdict, and the Generate button (out of band): disabled while the prompt is refused."""
    access.check(session, principal=principal, action="prompt.check")
    can_generate = access.allowed(session, principal=principal, action="generations.create")
    if not prompt.strip():
        return render(request, "fragments/prompt_verdict.html", decision=None, can_generate=can_generate)
    policy.get_service().refresh(session)
    decision = policy.evaluate("prompt", {"prompt": prompt})
    reasons = list(zip(decision.rule_ids, decision.reasons, strict=True))
    return render(request, "fragments/prompt_verdict.html", decision=decision, reasons=reasons, can_generate=can_generate)


# --- fine-tuning --------------------------------------------------------------------------------


def _native_resolution(session: Any, model: str) -> int:
    """The pixels the model makes natively (its latest version's UNet sample size × VAE scale); 0 when unknown."""
    record = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == model, ModelRecord.removed_at.is_(None)))
    versions = models_service.versions_of(session, model=record) if record is not None else []
    if not versions:
        return 0
    return models_service.native_resolution(models_service.weights_ref(session, version=versions[-1]).path)


def _presets(native: int) -> dict[str, dict[str, Any]]:
    """The presets for a base model: each trains at the model's native resolution when it is known."""
    return {name: {**values, "resolution": native or values["resolution"]}
            for name, values in finetune_uploads.PRESETS.items()}


def _recipe(session: Any, settings: Any, *, model: str, preset: str, params: str, instance_prompt: str) -> dict[str, Any]:
    """The recipe values: the preset at the model's native resolution, overridden by the explicit ``params``."""
    values = finetune_uploads.recipe_values(preset, params, instance_prompt, max_depth=settings.max_json_depth)
    explicit = limits.loads(params, field="params", max_depth=settings.max_json_depth) if params.strip() else {}
    native = _native_resolution(session, model)
    if native and "resolution" not in explicit:
        values["resolution"] = native
    return values


def _usable_model_names(session: Any, principal: Any) -> list[str]:
    rows = session.scalars(sa.select(ModelRecord).where(ModelRecord.removed_at.is_(None)).order_by(ModelRecord.name))
    return [r.name for r in rows if access.allowed(session, principal=principal, action="models.read",
                                                   resource=models_service.resource_of(session, principal, r))]


def _finetune_form(request: Request, session: Any, principal: Any, *, form: dict[str, Any], error: str = "",
                   reasons: list[str] | None = None, status_code: int = 200) -> HTMLResponse:
    models = _usable_model_names(session, principal)
    model = form.get("model") if form.get("model") in models else (models[0] if models else "")
    return render(request, "finetune.html", session=session, principal=principal, models=models,
                  presets=_presets(_native_resolution(session, model) if model else 0),
                  form={**form, "model": model}, error=error, reasons=reasons or [], status_code=status_code)


@router.get("/jobs/new", response_class=HTMLResponse)
def finetune_page(request: Request, session: SessionDep, principal: PortalUser,
                  model: Annotated[str, Query(max_length=100)] = "") -> HTMLResponse:
    access.check(session, principal=principal, action="jobs.submit")
    return _finetune_form(request, session, principal, form={"model": model, "preset": "standard"})


@router.get("/jobs/new/presets", response_class=HTMLResponse)
def finetune_presets(request: Request, session: SessionDep, principal: PortalUser,
                     model: Annotated[str, Query(max_length=100)] = "",
                     preset: Annotated[str, Query(max_length=32)] = "standard") -> HTMLResponse:
    """The preset options for the chosen base model (at its native resolution)."""
    access.check(session, principal=principal, action="jobs.submit")
    native = _native_resolution(session, model) if model in _usable_model_names(session, principal) else 0
    return render(request, "fragments/preset_options.html", presets=_presets(native), selected=preset)


@router.post("/jobs/new/check", response_class=HTMLResponse)
def finetune_check(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                   model: Annotated[str, Form(max_length=100)] = "", preset: Annotated[str, Form(max_length=32)] = "standard",
                   team: Annotated[str, Form(max_length=100)] = "",
                   instance_prompt: Annotated[str, Form(max_length=500)] = "") -> HTMLResponse:
    """Policy feedback before submitting: the jobs policy for this model, preset and team, and the prompt."""
    access.check(session, principal=principal, action="jobs.submit")
    problems: list[tuple[str, str]] = []
    revision = ""
    try:
        record = models_service.visible_model(session, principal, model)
        values = _recipe(session, settings, model=record.name, preset=preset, params="",
                         instance_prompt=instance_prompt or "x")
        team_row = teams.resolve(session, principal, team or None)
        policy.get_service().refresh(session)
        # The submit path's document (services.finetune.preflight): the same limits and the team's real usage.
        decision = policy.evaluate("jobs", finetune_policy.jobs_input(
            session, model=record, team=team_row, config=build_config(values), uploads=1, attest_licence=True,
            attest_consent=True, priority=None, subject=principal.subject))
        problems += list(zip(decision.rule_ids, decision.reasons, strict=True))
        revision = decision.revision
        if instance_prompt.strip():
            prompt = policy.evaluate("prompt", {"prompt": instance_prompt})
            problems += list(zip(prompt.rule_ids, prompt.reasons, strict=True))
    except LatentopsError as error:  # a bad field reads ("invalid_input", detail), like any other reason
        problems.append((error.error, error.detail))
    decision_view = type("Verdict", (), {"allow": not problems, "revision": revision})()
    return render(request, "fragments/verdict.html", decision=decision_view, reasons=problems)


@router.post("/jobs/new", response_class=HTMLResponse)
async def finetune_submit(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                          model: Annotated[str, Form(min_length=1, max_length=100)],
                          images: Annotated[list[UploadFile], File()],
                          captions: Annotated[list[str] | None, Form()] = None,
                          instance_prompt: Annotated[str, Form(max_length=500)] = "",
                          preset: Annotated[str, Form(max_length=32)] = "standard",
                          params: Annotated[str, Form(max_length=10_000)] = "",
                          team: Annotated[str, Form(max_length=100)] = "",
                          attest_licence: Annotated[bool, Form()] = False,
                          attest_consent: Annotated[bool, Form()] = False) -> Response:
    """Submit a fine-tune; a refusal is shown on the form (naming the file and the reason, no server
    paths) with everything entered kept, except the files, which a browser never lets a page refill."""
    form = {"model": model, "instance_prompt": instance_prompt, "preset": preset, "params": params, "team": team,
            "attest_licence": attest_licence, "attest_consent": attest_consent,
            "files": [upload.filename or "" for upload in images]}
    try:
        values = await run_in_threadpool(_recipe, session, settings, model=model, preset=preset, params=params,
                                         instance_prompt=instance_prompt)
        folder = await finetune_uploads.stage_uploads(settings, images, captions or [])
        job = await run_in_threadpool(finetune_uploads.submit_staged, session, settings, principal, folder=folder,
                                      model=model, values=values, team=team or None, adapter_name=None,
                                      attest_licence=attest_licence, attest_consent=attest_consent, priority=None)
    except LatentopsError as error:
        await run_in_threadpool(keep_only_evidence, session, error)
        reasons = [shown(str(r)) for r in error.reasons if str(r) != error.detail]
        return await run_in_threadpool(_finetune_form, request, session, principal, form=form,
                                       error=shown(error.detail), reasons=reasons, status_code=error.status_code)
    return RedirectResponse(f"/jobs/{job['id']}", status_code=303)


router.include_router(protected_names_page.router)  # compliance edits of the protected names: its own module
