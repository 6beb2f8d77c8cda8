"""What clients may ask the queue for, and the one builder per kind that turns it into job params.

A client never writes a job's parameters. It sends a typed request (``extra="forbid"``, a range on
every number, finite floats, bounded strings); the kind's builder resolves the model the caller can
see (another team's model answers 404, exactly like a missing one), asks the same policies and
screening as the kind's dedicated route, and returns the parameters the worker runs, built on the
server: actor, team, paths, weights and record ids are never taken from the request.

The kinds a client may submit through ``POST /jobs`` are :data:`CLIENT_KINDS`. ``generate`` and
``dataset`` take the same body as ``POST /generations`` and ``POST /datasets`` and go through the
same builder; ``finetune`` needs its instance images uploaded with the request, so it is refused
there with a pointer to ``POST /finetune``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import access, normalize
from latentops.governance.access import Principal
from latentops.platform.services import generation
from latentops.platform.services import models as models_service
from latentops.platform.services.diagnostics import MAX_STEP_DELAY_S, MAX_STEPS
from latentops.platform.services.job_params import GenerateParams
from latentops.platform.services.users import team_names
from latentops.platform.tables import AccessGrant, LoraAdapter, Team

MAX_PROMPT = 20_000
FINETUNE_ROUTE = "POST /api/v1/finetune"
CLIENT_KINDS = ("diagnostics", "generate", "dataset")  # what POST /jobs accepts; each has a typed request


def check_prompt(value: str, field_name: str) -> str:
    if normalize.is_blank(value):
        raise ValueError(f"{field_name}: is empty once control and zero-width characters are removed")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- the requests ---------------------------------------------------------------------------------


class DiagnosticsRequest(_Strict):
    """``diagnostics``: the worker's accelerator and numerics check."""

    steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    seed: int = Field(default=0, ge=0, le=2**62)
    step_delay_s: float = Field(default=0.0, ge=0.0, le=MAX_STEP_DELAY_S)


class GenerationBody(_Strict):
    """``generate``: the body of ``POST /generations`` (and of ``POST /jobs`` with kind ``generate``)."""

    model: str = Field(min_length=1, max_length=200, description="NAME, NAME@alias or NAME@version.")
    lora: str | None = Field(default=None, max_length=200, description="Adapter: NAME or NAME@alias|version.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    n: int = Field(default=1, ge=1, le=generation.MAX_IMAGES)
    seed: int = Field(default=0, ge=0, le=2**62)
    steps: int = Field(default=20, ge=1, le=500)
    guidance: float = Field(default=5.0, ge=0.0, le=50.0)
    team: str | None = Field(default=None, max_length=100)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return check_prompt(value, "prompt")

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, value: str | None) -> str | None:
        return check_prompt(value, "negative_prompt") if value else None


# --- builders -------------------------------------------------------------------------------------


def visible_model(session: Session, principal: Principal, *, ref: str, action: str, field_name: str = "model") -> None:
    """404 for a model the caller cannot see, worded like a model that does not exist."""
    name = generation.split_ref(ref, field_name)[0]
    missing = f"{field_name}: no model named {name!r}"
    try:
        record = models_service.get_model(session, name=name)
    except NotFound:
        raise NotFound(missing) from None
    resource = models_service.resource_of(session, principal, record)  # the catalogue's visibility rule
    access.check(session, principal=principal, action=action, resource=resource, not_found=missing)


def visible_adapter(session: Session, principal: Principal, *, ref: str, action: str, field_name: str = "lora") -> None:
    """404 for a LoRA adapter the caller cannot see (another team's, not granted), like a missing one."""
    name = generation.split_ref(ref, field_name)[0]
    missing = f"{field_name}: no adapter named {name!r}"
    rows = list(session.scalars(sa.select(LoraAdapter).where(LoraAdapter.name == name, LoraAdapter.removed_at.is_(None))
                                .order_by(LoraAdapter.version)))
    if not rows:
        raise NotFound(missing)
    owners = {row.team_id for row in rows}
    if None in owners:  # a platform-wide adapter belongs to no team: everyone may see it
        return
    teams = team_names(session)
    mine = [team_id for team_id, team in teams.items() if team in principal.teams]
    granted = session.scalar(sa.select(sa.func.count(AccessGrant.id)).where(
        AccessGrant.resource_type == "lora", AccessGrant.resource_id.in_([row.id for row in rows]),
        AccessGrant.revoked_at.is_(None), sa.or_(AccessGrant.user_id == principal.user.id, AccessGrant.team_id.in_(mine))))
    owner = next((teams.get(t) for t in owners if t in mine), teams.get(rows[-1].team_id or 0))
    access.check(session, principal=principal, action=action, resource={"team": owner, "granted": bool(granted)},
                 not_found=missing)


def build_diagnostics(request: DiagnosticsRequest) -> dict[str, Any]:
    return request.model_dump(mode="json")


def build_generate(session: Session, *, principal: Principal, team: Team, request: GenerationBody) -> dict[str, Any]:
    """The ``generate`` job's params: the model resolved (404 if not visible), every prompt and the
    model use decided (``PolicyDenied`` with the decisions flushed: the caller commits them)."""
    visible_model(session, principal, ref=request.model, action="generations.create")
    if request.lora:
        visible_adapter(session, principal, ref=request.lora, action="generations.create")
    target = generation.resolve(session, model=request.model, lora=request.lora)
    generation.authorize(session, target=target, prompts=[request.prompt], negative_prompt=request.negative_prompt,
                         actor=principal.email)
    return GenerateParams(model=request.model, lora=request.lora or None, prompts=[request.prompt],
                          negative_prompt=request.negative_prompt, images_per_prompt=request.n, seed=request.seed,
                          steps=request.steps, guidance_scale=request.guidance, team=team.name,
                          actor=principal.email).model_dump(mode="json")


def check_dataset_models(session: Session, *, principal: Principal, spec: Any) -> None:
    """A dataset spec may name only models and adapters the caller can see (404 otherwise)."""
    visible_model(session, principal, ref=spec.model, action="datasets.create")
    for lora in sorted({spec.lora_of(cls) for cls in spec.classes} - {None, ""}):
        visible_adapter(session, principal, ref=lora, action="datasets.create")


# --- reading a request --------------------------------------------------------------------------


def parse(model: type[BaseModel], data: Any, *, source: str) -> Any:
    """``model`` from ``data``; ``InvalidInput`` naming each bad field as ``source.field``."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in (source, *item.get("loc", ())) if p != "")
            message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "invalid")
            problems.append(f"{where}: {message.removeprefix('Value error, ')}")
        raise InvalidInput("; ".join(problems), reasons=problems) from None
