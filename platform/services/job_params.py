"""The parameters a queued job runs with, as the server built them, and their check on the worker.

Every kind has a schema here (``extra="forbid"``, ranges, finite floats, bounded strings). The
kind's validator (``JOB_KINDS``) checks it when the job is written, and the worker checks it again
(:func:`verify`) right before the handler runs, together with what ties the params to their job:
the actor is the job's owner, the team is the job's team, a dataset job writes only its own record
and folder, a fine-tune trains the catalogued weights of its version on frozen uploads. A job
whose stored params fail is failed with the field named, and its handler never runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import normalize
from latentops.pipelines.datasets.spec import DatasetSpec
from latentops.pipelines.finetune.config import build_config
from latentops.platform.tables import Dataset, Job, ModelVersion, Team, User

MAX_IMAGES = 64  # generation.MAX_IMAGES; this module stays light (no PIL) for the API's startup
ADAPTER_NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"
TEAM_NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateParams(_Stored):
    model: str = Field(min_length=1, max_length=200)
    lora: str | None = Field(default=None, max_length=200)
    prompts: list[str] = Field(min_length=1, max_length=MAX_IMAGES)
    negative_prompt: str | None = Field(default=None, max_length=20_000)
    images_per_prompt: int = Field(default=1, ge=1, le=MAX_IMAGES)
    seed: int = Field(default=0, ge=0, le=2**62)
    steps: int = Field(default=20, ge=1, le=500)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=50.0)
    scheduler: str | None = Field(default=None, max_length=64)
    height: int | None = Field(default=None, ge=8, le=4096, multiple_of=8)
    width: int | None = Field(default=None, ge=8, le=4096, multiple_of=8)
    team: str | None = Field(default=None, pattern=TEAM_NAME)
    actor: str = Field(min_length=1, max_length=320)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        for index, prompt in enumerate(value):
            if len(prompt) > 20_000 or normalize.is_blank(prompt):
                raise ValueError(f"prompt {index} is empty or longer than 20000 characters")
        return value

    @model_validator(mode="after")
    def _count(self) -> GenerateParams:
        if len(self.prompts) * self.images_per_prompt > MAX_IMAGES:
            raise ValueError(f"images_per_prompt: a request makes 1..{MAX_IMAGES} images")
        return self


class DatasetParams(_Stored):
    spec: DatasetSpec
    dataset_id: int = Field(ge=1, le=2**62)
    out: str = Field(min_length=1, max_length=4096)
    actor: str = Field(min_length=1, max_length=320)


class WeightsParams(_Stored):
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    path: str = Field(min_length=1, max_length=4096)
    family: str = Field(min_length=1, max_length=32)
    format: str = Field(min_length=1, max_length=32)


class FinetuneParams(_Stored):
    config: dict[str, Any]
    weights: WeightsParams
    version_id: int = Field(ge=1, le=2**62)
    instance_dir: str = Field(min_length=1, max_length=4096)
    class_dir: str | None = Field(default=None, max_length=4096)
    adapter_name: str = Field(pattern=ADAPTER_NAME)
    team: str = Field(default="", max_length=100)
    lineage: dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            build_config(value)
        except InvalidInput as error:
            raise ValueError(error.detail) from None
        return value


SCHEMAS: dict[str, type[_Stored]] = {"generate": GenerateParams, "dataset": DatasetParams, "finetune": FinetuneParams}


def parsed(kind: str, params: Any) -> Any:
    """The kind's params schema applied to ``params``; ``InvalidInput`` naming ``params.FIELD``."""
    if not isinstance(params, dict):
        raise InvalidInput("params: must be an object")
    try:
        return SCHEMAS[kind].model_validate(params)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in ("params", *item.get("loc", ())))
            message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "invalid")
            problems.append(f"{where}: {message.removeprefix('Value error, ')}")
        raise InvalidInput("; ".join(problems), reasons=problems) from None


# The kinds' validators (``JOB_KINDS``): the schema at submit time.
def validate_generate(params: dict[str, Any]) -> None:
    parsed("generate", params)


def validate_dataset(params: dict[str, Any]) -> None:
    parsed("dataset", params)


def validate_finetune(params: dict[str, Any]) -> None:
    parsed("finetune", params)


# --- on the worker ------------------------------------------------------------------------------


def _owner_email(session: Session, job: Job) -> str | None:
    return session.scalar(sa.select(User.email).where(User.id == job.owner_id)) if job.owner_id else None


def _team_name(session: Session, job: Job) -> str | None:
    return session.scalar(sa.select(Team.name).where(Team.id == job.team_id)) if job.team_id else None


def verify(session: Session, settings: Settings, job: Job, *, validator: Callable[[Any], object] | None) -> None:
    """The stored params of ``job`` against its kind's validator and the job itself; ``InvalidInput``
    naming the field when anything was changed after the server built them.

    ``validator`` is the kind's own check (its ``JOB_KINDS`` entry, loaded by the worker), None for a
    kind without one; a kind with a schema here is checked against that schema.
    """
    if job.kind not in SCHEMAS:  # a kind checked by its own validator only (diagnostics)
        if validator is not None:
            validator(job.params)
        return
    params = parsed(job.kind, job.params)  # what the kind's validator checks, parsed once
    owner, team = _owner_email(session, job), _team_name(session, job)
    actor = getattr(params, "actor", None)
    if actor is not None and owner is not None and actor != owner:
        raise InvalidInput("params.actor: is not the job's owner")
    if isinstance(params, GenerateParams) and params.team != team:
        raise InvalidInput("params.team: is not the job's team")
    if isinstance(params, DatasetParams):
        _verify_dataset(session, settings, job, params)
    if isinstance(params, FinetuneParams):
        _verify_finetune(session, settings, params, team)


def _verify_dataset(session: Session, settings: Settings, job: Job, params: DatasetParams) -> None:
    row = session.get(Dataset, params.dataset_id)
    if row is None or row.job_id != job.id:
        raise InvalidInput("params.dataset_id: is not this job's dataset")
    out = Path(params.out).resolve()
    if not out.is_relative_to((settings.artifacts_dir / "datasets").resolve()) or out != Path(row.path).resolve():
        raise InvalidInput("params.out: is not the dataset's own folder")


def _verify_finetune(session: Session, settings: Settings, params: FinetuneParams, team: str | None) -> None:
    from latentops.platform.services import models as models_service

    if params.team != (team or ""):
        raise InvalidInput("params.team: is not the job's team")
    version = session.get(ModelVersion, params.version_id)
    if version is None:
        raise InvalidInput("params.version_id: no such model version")
    weights = models_service.weights_ref(session, version=version)
    stored = (params.weights.content_hash, Path(params.weights.path).resolve())
    if stored != (weights.content_hash, Path(weights.path).resolve()):
        raise InvalidInput("params.weights: are not the catalogued weights of params.version_id")
    if not Path(params.instance_dir).resolve().is_relative_to((settings.artifacts_dir / "finetune-uploads").resolve()):
        raise InvalidInput("params.instance_dir: is not a frozen upload folder")
