"""The governed path: the one way the platform turns a request into images.

Interactive generation (CLI, REST, portal), validation images and DreamBooth class images of a
training run, and every image of a synthetic dataset come through here, in this order:

1. **Resolve** the model (``NAME``, ``NAME@alias``, ``NAME@3``) and the optional LoRA adapter.
2. **Authorise** (:func:`authorize`): the prompt policy for every prompt and the negative prompt,
   and the models policy for ``use`` of the base model and of the adapter. Each decision is
   recorded and audited by ``policy.decide``; any deny raises ``PolicyDenied`` with the reasons.
   The result is an :class:`Authorization`, which :func:`generate` checks against what it runs.
3. **Generate** with the engine (``pipelines.engine``). This module is the engine's only caller
   that hands pixels on (``tests/test_generation_path.py`` enforces it).
4. **Admit** each image (``quarantine.admit_batch``): content and copyright screening, then either
   provenance (C2PA manifest + watermark) and a released asset, or quarantine, where a flagged
   image waits for a compliance officer and its pixels are never returned.
5. **Record** a ``generation.request`` audit entry naming the decisions and assets; the prompt text
   is sealed to the requesting user (erasable), the entry itself carries only prompt hashes.

Everything is written in the caller's transaction. A denial is kept as evidence when that
transaction is ``database.session_scope``'s (the CLI, the API and the job handler): it commits a
``PolicyDenied`` before it propagates.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound, ServiceUnavailable
from latentops.core.settings import Settings
from latentops.governance import audit, policy, quarantine
from latentops.governance.imagefile import load_image
from latentops.platform.services import grants as grants_service
from latentops.platform.services import models as models_service
from latentops.platform.services import teams
from latentops.platform.services.users import actor_user, team_names
from latentops.platform.tables import AccessGrant, Job, LoraAdapter, ModelRecord, ModelVersion, Team

if TYPE_CHECKING:  # the engine imports torch lazily; keep this module cheap to import
    from latentops.pipelines.engine import AdapterRef, Engine, WeightsRef
    from latentops.pipelines.finetune.validation import RenderRequest

log = logging.getLogger(__name__)

REF_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,99})(?:@(?P<at>[A-Za-z0-9._-]{1,64}))?$")
MAX_IMAGES = 64
PURPOSES = ("generation", "dataset", "validation", "class_images", "samples")


# --- 1. resolving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The weights a request runs: a model version and, optionally, one LoRA adapter version."""

    model: ModelRecord
    version: ModelVersion
    weights: WeightsRef
    lora: LoraAdapter | None = None
    adapter: AdapterRef | None = None

    @property
    def label(self) -> str:
        text = f"{self.model.name}@{self.version.version}"
        return text + (f" + {self.lora.name}@{self.lora.version}" if self.lora else "")


def split_ref(ref: str, field_name: str) -> tuple[str, str | None]:
    match = REF_RE.match(ref.strip())
    if not match:
        raise InvalidInput(f"{field_name}: {ref!r} is not NAME, NAME@alias or NAME@version")
    return match["name"], match["at"]


def _pick(rows: Sequence[Any], at: str | None, what: str) -> Any:
    """The row named by ``at``: a version number, an alias, or the latest when ``at`` is None."""
    if not rows:
        raise NotFound(f"{what}: has no versions")
    if at is None:
        return rows[-1]
    number = at[1:] if at[:1] in {"v", "V"} and at[1:].isdigit() else at
    if number.isdigit():
        found = [r for r in rows if r.version == int(number)]
    else:
        found = [r for r in rows if at in (r.aliases or [])]
    if not found:
        raise NotFound(f"{what}: no version or alias {at!r}")
    return found[-1]


def resolve(session: Session, *, model: str, lora: str | None = None) -> Target:
    """The model version (and adapter) named by ``model`` / ``lora`` references."""
    from latentops.pipelines.engine import AdapterRef

    name, at = split_ref(model, "model")
    record = models_service.get_model(session, name=name)
    version = _pick(models_service.versions_of(session, model=record), at, f"model {name!r}")
    weights = models_service.weights_ref(session, version=version)
    if lora is None or not lora.strip():
        return Target(record, version, weights)
    lora_name, lora_at = split_ref(lora, "lora")
    rows = list(session.scalars(sa.select(LoraAdapter).where(LoraAdapter.name == lora_name, LoraAdapter.removed_at.is_(None))
                                .order_by(LoraAdapter.version)))
    if not rows:
        raise NotFound(f"lora: no adapter named {lora_name!r}")
    adapter = _pick(rows, lora_at, f"lora {lora_name!r}")
    if adapter.base_version_id != version.id:
        base = session.get(ModelVersion, adapter.base_version_id)
        raise InvalidInput(f"lora: {lora_name}@{adapter.version} was trained on another base model version "
                           f"({base.content_hash[:12] if base else adapter.base_version_id}), not {record.name}@{version.version}")
    path = Path(adapter.path)
    return Target(record, version, weights, adapter,
                  AdapterRef(content_hash=adapter.content_hash, path=path if path.is_dir() else path.parent))


# --- 2. authorising -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Authorization:
    """What the policies allowed: these prompts on this target, with the decisions that said so."""

    target_key: tuple[int, int | None]
    prompts: frozenset[str]
    decision_ids: tuple[int, ...]
    revision: str


def prompt_ref(prompt: str) -> str:
    """The hash stored with an asset instead of the prompt text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _lora_input(session: Session, target: Target) -> dict[str, Any]:
    assert target.lora is not None
    teams = team_names(session)
    grants = [{"action": g.action, "team": teams.get(g.team_id) if g.team_id else None, "user_id": g.user_id}
              for g in session.scalars(sa.select(AccessGrant).where(
                  AccessGrant.resource_type == "lora", AccessGrant.resource_id == target.lora.id,
                  AccessGrant.revoked_at.is_(None)))]
    owner = teams.get(target.lora.team_id) if target.lora.team_id else None
    if owner:  # the team that trained an adapter may use it
        grants.append({"action": "use", "team": owner, "user_id": None})
    return {"model": {"name": f"lora:{target.lora.name}", "sensitivity": target.model.sensitivity, "owner_team": owner},
            "grants": grants}


def authorize(session: Session, *, target: Target, prompts: Sequence[str], negative_prompt: str | None,
              actor: audit.Actor | str, team: str | None = None) -> Authorization:
    """Every decision the request needs; raises ``PolicyDenied`` (decisions flushed) on the first deny.

    ``team`` is the team the images are for: the console operator acts for it (its grants count).
    """
    for_team = {"team": team} if team else {}
    distinct = sorted({p for p in prompts} | ({negative_prompt} if negative_prompt else set()))
    if not distinct:
        raise InvalidInput("prompt: give at least one prompt")
    decisions = []
    for text in distinct:
        decisions.append(policy.require("prompt", {"prompt": text}, session=session, actor=actor))
    decisions.append(policy.require("models", {"action": "use", **grants_service.model_input(session, target.model), **for_team},
                                    session=session, actor=actor))
    if target.lora is not None:
        decisions.append(policy.require("models", {"action": "use", **_lora_input(session, target), **for_team},
                                        session=session, actor=actor))
    return Authorization(target_key=(target.version.id, target.lora.id if target.lora else None),
                         prompts=frozenset(distinct), decision_ids=tuple(d.decision_id for d in decisions if d.decision_id),
                         revision=decisions[0].revision)


# --- 3-5. generating, admitting, recording ---------------------------------------------------------


@dataclass
class GenerationSpec:
    """What to render: ``images_per_prompt`` images per prompt; image ``i`` uses seed ``seed + i``."""

    prompts: list[str]
    negative_prompt: str | None = None
    images_per_prompt: int = 1
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 5.0
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None

    @property
    def count(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    def prompt_of(self, index: int) -> str:
        return self.prompts[index // self.images_per_prompt]

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "height": self.height, "width": self.width, "negative_prompt_ref":
                    prompt_ref(self.negative_prompt) if self.negative_prompt else None}


@dataclass
class GeneratedImage:
    """One image's outcome. ``png`` (the signed file) only when released; never for a flagged image."""

    index: int
    seed: int
    prompt: str
    asset_id: int
    status: str
    png: bytes | None
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    screening_result_id: int | None = None

    @property
    def released(self) -> bool:
        return self.png is not None

    def image(self) -> Image.Image:
        if self.png is None:
            raise NotFound(f"asset {self.asset_id}: quarantined; its pixels are not handed out")
        return load_image(self.png, name=f"asset {self.asset_id}")


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    decision_ids: list[int]
    target: str
    policy_revision: str
    audit_id: int | None = None

    @property
    def released(self) -> list[GeneratedImage]:
        return [i for i in self.images if i.released]

    @property
    def quarantined(self) -> list[GeneratedImage]:
        return [i for i in self.images if not i.released]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "policy_revision": self.policy_revision, "decision_ids": self.decision_ids,
                "images": [{"index": i.index, "seed": i.seed, "asset_id": i.asset_id, "status": i.status,
                            "reasons": i.reasons} for i in self.images],
                "released": len(self.released), "quarantined": len(self.quarantined)}


def resolve_team(session: Session, *, actor: audit.Actor | str, team: str | None) -> tuple[str | None, int | None]:
    """``teams.resolve`` for an actor, as ``(name, id)``; ``(None, None)`` when it runs for no team."""
    row = teams.resolve(session, actor, team)
    return (row.name, row.id) if row else (None, None)


def generate(session: Session, *, settings: Settings, actor: audit.Actor | str, target: Target, spec: GenerationSpec,
             authorization: Authorization | None = None, team: str | None = None, team_id: int | None = None,
             job_id: int | None = None, dataset_id: int | None = None, purpose: str = "generation",
             engine: Engine | None = None) -> GenerationResult:
    """Steps 2-5 of the module docstring for ``spec`` on ``target``."""
    from latentops.pipelines.engine import GenerationRequest, default_engine

    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose: {purpose!r} must be one of {', '.join(PURPOSES)}")
    if not 1 <= spec.count <= MAX_IMAGES:
        raise InvalidInput(f"n: a request makes 1..{MAX_IMAGES} images (got {spec.count})")
    # 2. Authorise, or check that the authorisation given covers exactly this request.
    if authorization is None:
        authorization = authorize(session, target=target, prompts=spec.prompts, negative_prompt=spec.negative_prompt,
                                  actor=actor, team=team)
    wanted = set(spec.prompts) | ({spec.negative_prompt} if spec.negative_prompt else set())
    if authorization.target_key != (target.version.id, target.lora.id if target.lora else None) or not (
            wanted <= authorization.prompts):
        raise InvalidInput("authorization: does not cover this model, adapter or these prompts")
    # 3. Generate.
    request = GenerationRequest(prompts=list(spec.prompts), negative_prompt=spec.negative_prompt,
                                images_per_prompt=spec.images_per_prompt, steps=spec.steps,
                                guidance_scale=spec.guidance_scale, scheduler=spec.scheduler, seed=spec.seed,
                                height=spec.height, width=spec.width)
    engine = engine or default_engine()
    pictures = engine.generate(target.weights, request, [target.adapter] if target.adapter else [])
    # 4. Screen each image; release with provenance, or quarantine.
    user = actor_user(session, actor)
    params = {**spec.params(), "request_decisions": list(authorization.decision_ids), "target": target.label}
    images: list[GeneratedImage] = []
    admissions = quarantine.admit_batch(
        session, settings=settings, images=pictures, actor=actor, seeds=[spec.seed + i for i in range(len(pictures))],
        prompt_refs=[prompt_ref(spec.prompt_of(i)) for i in range(len(pictures))], team=team, team_id=team_id,
        owner_id=user.id if user else None, job_id=job_id, dataset_id=dataset_id, model_version_id=target.version.id,
        lora_adapter_id=target.lora.id if target.lora else None, purpose=purpose, params=params)
    for index, admission in enumerate(admissions):
        text = spec.prompt_of(index)
        asset = admission.asset
        # The asset's decision is the request's (the screening decisions hang off its screening result).
        asset.params = {**params, "screening_decisions": admission.outcome.decision_ids}
        if authorization.decision_ids:
            asset.policy_decision_id = authorization.decision_ids[0]
        images.append(GeneratedImage(index=index, seed=spec.seed + index, prompt=text, asset_id=asset.id,
                                     status=asset.status, png=admission.image, reasons=admission.outcome.reasons,
                                     scores=admission.outcome.scores, screening_result_id=admission.outcome.result_id))
    session.flush()
    # 5. Record the request.
    entry = audit.record(
        session, actor=actor, action="generation.request", resource=f"model_version:{target.version.id}",
        outcome="success" if all(i.released for i in images) else "partial",
        details={"purpose": purpose, "target": target.label, "lora_adapter_id": target.lora.id if target.lora else None,
                 "decisions": list(authorization.decision_ids), "assets": [i.asset_id for i in images],
                 "released": sum(i.released for i in images), "quarantined": sum(not i.released for i in images),
                 "seed": spec.seed, "prompt_refs": sorted({prompt_ref(p) for p in spec.prompts}),
                 "job_id": job_id, "dataset_id": dataset_id, "policy_revision": authorization.revision},
        personal={"prompts": list(spec.prompts), "negative_prompt": spec.negative_prompt} if user else None,
        subject=f"user:{user.id}" if user else None,
    )
    log.info("generated %d image(s) on %s: %d released, %d quarantined", len(images), target.label,
             sum(i.released for i in images), sum(not i.released for i in images),
             extra={"job_id": job_id, "dataset_id": dataset_id})
    return GenerationResult(images, list(authorization.decision_ids), target.label, authorization.revision, entry.id)


# --- training renders ---------------------------------------------------------------------------


def render_for_training(request: RenderRequest, *, device: str = "cpu") -> list[Image.Image]:
    """The fine-tuning seam: the ``Renderer`` (``pipelines.finetune.validation``) the fine-tune service
    hands to every run it starts.

    Validation images, final samples and DreamBooth class images of a run take the governed path:
    prompt decisions, screening, provenance, assets and audit entries, on behalf of the run's job.
    Access to the base model was decided when the job was submitted (the jobs policy); the weights
    are matched to their catalogue version by content hash when they are catalogued. Returns the
    released images in order; quarantined ones are left out (a training run never sees them).
    """
    from latentops.core.settings import get_settings
    from latentops.platform.database import session_scope

    settings = get_settings()
    if not _migrated(settings.database_url):
        raise ServiceUnavailable(
            "rendering: training images take the governed path, which needs the platform database "
            "migrated: run latentops db upgrade and set LATENTOPS_HOME")
    actor = request.actor if request.actor != "system" or request.job_id is None else f"job:{request.job_id}"
    spec = GenerationSpec(prompts=list(request.prompts), images_per_prompt=request.images_per_prompt,
                          seed=request.seed, steps=request.steps, **{k: v for k, v in request.extra.items()
                                                                     if k in {"guidance_scale", "height", "width"}})
    with session_scope(settings.database_url) as session:
        version = session.scalar(sa.select(ModelVersion).where(ModelVersion.content_hash == request.weights.content_hash)
                                 .order_by(ModelVersion.id.desc()).limit(1))
        decisions = [policy.require("prompt", {"prompt": p}, session=session, actor=actor) for p in sorted(set(spec.prompts))]
        result = _render(session, settings=settings, actor=actor, request=request, spec=spec, version=version,
                         decision_ids=[d.decision_id for d in decisions if d.decision_id], device=device)
    return [load_image(i.png, name=f"asset {i.asset_id}") for i in result if i.png is not None]


def _migrated(url: str) -> bool:
    from latentops.platform.database import get_engine

    try:
        return bool(sa.inspect(get_engine(url)).has_table("assets"))
    except sa.exc.SQLAlchemyError:
        return False


def _render(session: Session, *, settings: Settings, actor: str, request: RenderRequest, spec: GenerationSpec,
            version: ModelVersion | None, decision_ids: list[int], device: str) -> list[GeneratedImage]:
    from latentops.pipelines.engine import GenerationRequest
    from latentops.pipelines.finetune import validation

    generation = GenerationRequest(prompts=spec.prompts, images_per_prompt=spec.images_per_prompt, steps=spec.steps,
                                   seed=spec.seed, **request.extra)
    engine = validation.training_engine(device)
    adapters = [request.adapter] if request.adapter is not None else []
    pictures = engine.generate(request.weights, generation, adapters)
    engine.cache.clear()  # training keeps its own copy of the model; do not hold a second one
    images = []
    # The renders belong to the job's team, so the team that runs the fine-tune may see them.
    job = session.get(Job, request.job_id) if request.job_id is not None else None
    team = session.get(Team, job.team_id) if job is not None and job.team_id else None
    admissions = quarantine.admit_batch(
        session, settings=settings, images=pictures, actor=actor, seeds=[spec.seed + i for i in range(len(pictures))],
        prompt_refs=[prompt_ref(spec.prompt_of(i)) for i in range(len(pictures))], job_id=request.job_id,
        team=team.name if team else None, team_id=team.id if team else None,
        model_version_id=version.id if version else None, purpose=request.purpose,
        params={"steps": spec.steps, "weights": request.weights.content_hash,
                "adapter": request.adapter.content_hash if request.adapter else None, "request_decisions": decision_ids})
    for index, admission in enumerate(admissions):
        text = spec.prompt_of(index)
        if decision_ids:
            admission.asset.policy_decision_id = decision_ids[0]
        admission.asset.params = {**admission.asset.params, "screening_decisions": admission.outcome.decision_ids}
        images.append(GeneratedImage(index, spec.seed + index, text, admission.asset.id, admission.asset.status,
                                     admission.image, admission.outcome.reasons))
    audit.record(session, actor=actor, action="generation.request",
                 resource=f"model_version:{version.id}" if version else f"weights:{request.weights.content_hash[:64]}",
                 outcome="success" if all(i.png for i in images) else "partial",
                 details={"purpose": request.purpose, "job_id": request.job_id, "decisions": decision_ids,
                          "assets": [i.asset_id for i in images], "released": sum(i.png is not None for i in images),
                          "quarantined": sum(i.png is None for i in images), "seed": spec.seed,
                          "prompt_refs": sorted({prompt_ref(p) for p in spec.prompts})})
    return images


# --- queued generation -----------------------------------------------------------------------------


def spec_from(params: dict[str, Any]) -> GenerationSpec:
    return GenerationSpec(prompts=list(params["prompts"]), negative_prompt=params.get("negative_prompt") or None,
                          images_per_prompt=int(params.get("images_per_prompt", 1)), seed=int(params.get("seed", 0)),
                          steps=int(params.get("steps", 20)), guidance_scale=float(params.get("guidance_scale", 5.0)),
                          scheduler=params.get("scheduler") or None, height=params.get("height"), width=params.get("width"))


def run_job(ctx: Any) -> dict[str, Any]:
    """The ``generate`` job handler: the governed path on behalf of the job's requester."""
    from latentops.platform.database import session_scope

    params = ctx.params
    actor = params.get("actor") or f"job:{ctx.job_id}"
    with session_scope(ctx.settings.database_url) as session:  # a denial commits: it is evidence
        target = resolve(session, model=params["model"], lora=params.get("lora"))
        team = teams.resolve(session, actor, params.get("team"))
        result = generate(session, settings=ctx.settings, actor=actor, target=target, spec=spec_from(params),
                          team=team.name if team else None, team_id=team.id if team else None,
                          job_id=ctx.job_id, purpose="generation")
        summary = result.to_json()
    ctx.progress(1, 1)
    return summary
