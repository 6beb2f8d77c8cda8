"""Fine-tuning as a governed service: check, screen, decide, queue, run, register, promote.

``submit`` does everything that can refuse a job before anything is queued, in this order:
1. the recipe config (an out-of-range value names its field), the base model and its version;
2. the instance images (each refused file named with its reason; no valid image, no job);
3. copyright screening of every upload against the reference index (a protected work without the
   team's licence grant is refused; the decisions are kept as evidence even then);
4. the ``jobs`` policy: role, model use grant, limits on steps/resolution/rank/batch, the team's
   quotas (current concurrent jobs and GPU-hours are passed as usage) and the licence/consent
   attestation for uploads.
Then the accepted images are frozen in a content-addressed upload folder (so what runs is what
was screened), the job row and its audit entry are written in the caller's transaction, and only
once that commits is the id handed to the broker.

``run`` is the handler the queue calls (kind ``finetune`` on queue ``gpu``); it delegates to the
recipe with the job context for progress, logs, cancellation and its checkpoint folder, then
registers the adapter. ``run_local`` is the same path for ``latentops finetune run`` in process.
Listing adapters and approving one for production are ``platform/services/adapters``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import audit, copyright, normalize, policy
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import data, dreambooth, heldout, interop, tracking
from latentops.pipelines.finetune.config import FinetuneConfig, build_config
from latentops.pipelines.finetune.lora import Hooks, TrainingResult
from latentops.platform.database import session_scope
from latentops.platform.services import finetune_policy, generation, jobs, teams
from latentops.platform.services import models as models_service
from latentops.platform.services.finetune_request import Request
from latentops.platform.tables import (
    Job,
    LoraAdapter,
    ModelRecord,
    Team,
    User,
)

logger = logging.getLogger(__name__)
KIND = "finetune"
ADAPTER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass
class Preflight:
    """A request that passed every check, with the evidence the run and the registry carry."""

    config: FinetuneConfig
    weights: WeightsRef
    version_id: int
    team: str
    team_id: int | None
    adapter_name: str
    instance_dir: Path
    images: list[data.InstanceImage]
    decision_ids: list[int] = field(default_factory=list)
    screening: dict[str, Any] = field(default_factory=dict)
    priority: int = 0

    def lineage(self, job_id: int | None) -> dict[str, Any]:
        return {"job_id": job_id, "policy_decision_ids": self.decision_ids, "screening": self.screening}


# --- checks ------------------------------------------------------------------------------------


def _freeze_uploads(settings: Settings, folder: Path, images: list[data.InstanceImage]) -> Path:
    """Copy the accepted images (and their captions) to a folder named by the dataset hash."""
    target = settings.artifacts_dir / "finetune-uploads" / data.dataset_hash(images)
    if target.exists():
        return target
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lines = []
    for image in images:
        shutil.copy2(folder / image.file, staging / image.file)
        lines.append(json.dumps({"file_name": image.file, "text": image.caption}))
    (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    staging.replace(target)
    return target


def preflight(session: Session, *, settings: Settings, actor: audit.Actor | str, request: Request) -> Preflight:
    """Every check a fine-tuning request must pass; raises before anything is stored but decisions."""
    # 1. Config, base model and version.
    version = models_service.get_version(session, name=request.model, version=request.model_version)
    weights = models_service.weights_ref(session, version=version)
    values = {**request.values}
    if values.get("resolution") is None:  # unset: the model's own resolution (32 px for a tiny model, not 512)
        values.pop("resolution", None)
        native = models_service.native_resolution(weights.path)
        if native:
            values["resolution"] = native
    config = build_config(values)
    for name in ("instance_prompt", "class_prompt"):
        if normalize.is_blank(str(getattr(config, name, "x"))):
            raise InvalidInput(f"{name}: is empty once control and zero-width characters are removed")
    model = session.get(ModelRecord, version.model_id)
    assert model is not None
    adapter_name = (request.adapter_name or f"{model.name}-{config.method}").strip().lower()
    if not ADAPTER_NAME_RE.match(adapter_name):
        raise InvalidInput(f"name: {adapter_name!r} is not a valid adapter name (lowercase letters, digits, '.', '-', '_')")
    # 2. Images: nothing is queued for a folder without one valid image.
    images = data.require_instances(Path(request.instance_dir), instance_prompt=config.instance_prompt)
    heldout.split(images, config.validation_split, seed=config.seed)  # a split that leaves none to train is refused
    team_row = teams.resolve(session, actor, request.team)
    team, team_id = (team_row.name, team_row.id) if team_row else ("", None)
    # 3. Copyright screening of each upload (normalised pixels, so 16-bit and CMYK files screen too).
    uploads = [(i.file, _png(Path(request.instance_dir) / i.file)) for i in images]
    results = copyright.screen_training_upload(session, settings=settings, images=uploads, team=team, actor=actor)
    # Anything denied raised above: what is left is clear, or matches covered by the team's licence.
    matched = sum(len(r["matches"]) for r in results)
    screening = {"files": len(results), "matches": matched, "verdict": "licensed" if matched else "clear"}
    # 4. The jobs policy: role, model grant, limits, priority, quotas, attestation.
    decision = policy.require("jobs", finetune_policy.jobs_input(
        session, model=model, team=team_row, config=config, uploads=len(images), attest_licence=request.attest_licence,
        attest_consent=request.attest_consent, priority=request.priority), session=session, actor=actor)
    frozen = _freeze_uploads(settings, Path(request.instance_dir), images)
    return Preflight(config=config, weights=weights, version_id=version.id, team=team, team_id=team_id,
                     adapter_name=adapter_name, instance_dir=frozen, images=images,
                     decision_ids=[d for d in (decision.decision_id,) if d is not None], screening=screening,
                     priority=int(decision.obligations.get("priority", 0)))


def _png(path: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    data.decode(path).save(buffer, format="PNG")
    return buffer.getvalue()


# --- submitting --------------------------------------------------------------------------------


def submit(session: Session, settings: Settings, *, actor: audit.Actor | str, request: Request,
           owner_email: str | None = None) -> Job:
    """Check, screen and decide in the caller's transaction, then submit the job; it goes to the
    broker once that transaction commits. A denial raises ``PolicyDenied`` with its decisions left
    in the transaction (``session_scope`` commits them: they are evidence)."""
    jobs.ping_broker(settings)  # before the checks: an unreachable broker refuses the job at once
    checked = preflight(session, settings=settings, actor=actor, request=request)
    owner = session.scalar(sa.select(User).where(User.email == owner_email)) if owner_email else None
    params = {
        "config": checked.config.params(), "weights": _weights_json(checked.weights),
        "version_id": checked.version_id, "instance_dir": str(checked.instance_dir),
        "class_dir": str(request.class_dir) if request.class_dir else None,
        "adapter_name": checked.adapter_name, "team": checked.team, "lineage": checked.lineage(None),
    }
    team = session.get(Team, checked.team_id) if checked.team_id is not None else None
    # The jobs policy admitted it in preflight (action fine_tune), which also set its priority.
    return jobs.submit(session, settings, kind=KIND, params=params, actor=actor, owner=owner, team=team,
                       priority=checked.priority, admitted=True)


def _weights_json(weights: WeightsRef) -> dict[str, str]:
    return {"content_hash": weights.content_hash, "path": str(weights.path), "family": weights.family,
            "format": weights.format}


# --- running -----------------------------------------------------------------------------------


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """The queue's handler: train with the job's checkpoints (resuming any), then register."""
    params = ctx.params
    config, weights = build_config(params["config"]), WeightsRef(**{**params["weights"], "path": Path(params["weights"]["path"])})
    tracker = _tracker(ctx.settings, weights, params["adapter_name"], ctx.workdir / "out", ctx.job_id,
                       {**params["lineage"], "job_id": ctx.job_id})
    with _metrics_sent(tracker):
        result = dreambooth.run(config, weights=weights, instance_dir=Path(params["instance_dir"]),
                                out_dir=ctx.workdir / "out", class_dir=Path(params["class_dir"]) if params.get("class_dir") else None,
                                hooks=ctx, tracker=tracker, resume=True, job_id=ctx.job_id, cache_dir=cache_dir(ctx.settings),
                                renderer=generation.render_for_training, own_process=True)
    with session_scope(ctx.settings.database_url) as session:
        adapter = register_adapter(session, name=params["adapter_name"], version_id=params["version_id"], job_id=ctx.job_id,
                                   team=params.get("team") or None, result=result, model_uri=tracker.model_uri,
                                   actor=f"job:{ctx.job_id}")
        return _summary(result, adapter, tracker, root=ctx.workdir)


def run_local(settings: Settings, *, actor: audit.Actor | str, request: Request, out_dir: Path, hooks: Hooks,
              resume: bool = False, stop_after: int | None = None, track: bool = True) -> dict[str, Any]:
    """``latentops finetune run``: the same checks and recipe as a job, in this process."""
    with session_scope(settings.database_url) as session:  # a denial commits: it is evidence
        checked = preflight(session, settings=settings, actor=actor, request=request)
    tracker = _tracker(settings, checked.weights, checked.adapter_name, out_dir, None, checked.lineage(None)) if track else None
    with _metrics_sent(tracker):
        result = dreambooth.run(checked.config, weights=checked.weights, instance_dir=checked.instance_dir, out_dir=out_dir,
                                class_dir=request.class_dir, hooks=hooks, tracker=tracker, resume=resume,
                                stop_after=stop_after, cache_dir=cache_dir(settings), renderer=generation.render_for_training)
    if result.stopped_early:
        return {"stopped_at": result.steps, "out": str(out_dir), "losses": result.losses}
    with session_scope(settings.database_url) as session:
        adapter = register_adapter(session, name=checked.adapter_name, version_id=checked.version_id, job_id=None,
                                   team=checked.team or None, result=result,
                                   model_uri=tracker.model_uri if tracker else None, actor=actor)
        return _summary(result, adapter, tracker)


@contextmanager
def _metrics_sent(tracker: tracking.MlflowTracker | None) -> Iterator[None]:
    """Whatever the run's end, the metrics the tracker still holds reach its MLflow run (a finished run
    sends them itself; a failed or stopped one would lose its last second of them). A store that
    cannot take them then does not hide the run's own error."""
    try:
        yield
    finally:
        if tracker is not None:
            try:
                tracker.flush()
            except Exception as error:  # noqa: BLE001 - the run's own error, if any, is the one to report
                logger.warning("finetune: the last metrics did not reach MLflow: %s", error)


def cache_dir(settings: Settings) -> Path:
    """Shared by every job of this installation: features are keyed by base model version."""
    return settings.home / "cache" / "finetune"


def _tracker(settings: Settings, weights: WeightsRef, adapter_name: str, out_dir: Path, job_id: int | None,
             lineage: dict[str, Any]) -> tracking.MlflowTracker:
    return tracking.MlflowTracker(tracking_uri=settings.mlflow_tracking_uri, base_model_path=weights.path,
                                  registered_name=registered_name(adapter_name), out_dir=out_dir, job_id=job_id,
                                  lineage=lineage)


def registered_name(adapter_name: str) -> str:
    return f"lora-{adapter_name}"


def _summary(result: TrainingResult, adapter: LoraAdapter, tracker: tracking.MlflowTracker | None,
             root: Path | None = None) -> dict[str, Any]:
    """What a run reports; a job (``root``: its work folder) names its files relative to that folder."""

    def shown(path: Path | None) -> str | None:
        if path is None or root is None:
            return None if path is None else str(path)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name

    return {"adapter": adapter.name, "adapter_version": adapter.version, "weights": shown(result.weights_path),
            "kohya": shown(result.kohya_path), "steps": result.steps,
            "final_loss": result.final_loss, "resumed_from": result.resumed_from,
            "mlflow_run_id": tracker.run_id if tracker else None, "mlflow_model_uri": adapter.mlflow_model_uri,
            "seconds_per_step": result.seconds_per_step, "first_step_at": result.first_step_at,
            "loop_seconds": result.loop_seconds, "losses": _thinned(result.losses),
            "val_losses": [[step, value] for step, value in result.val_losses]}


def _thinned(values: list[float], points: int = 200) -> list[float]:
    """At most ``points`` evenly spaced values of a loss history, for the job page's plot."""
    stride = max(1, -(-len(values) // points))
    return [float(v) for v in values[::stride]]


# --- the adapter catalogue ---------------------------------------------------------------------


def register_adapter(session: Session, *, name: str, version_id: int, job_id: int | None, team: str | None,
                     result: TrainingResult, model_uri: str | None, actor: audit.Actor | str) -> LoraAdapter:
    """The ``lora_adapters`` row for a finished run (one per job, however many attempts)."""
    if job_id is not None:
        existing = session.scalar(sa.select(LoraAdapter).where(LoraAdapter.job_id == job_id))
        if existing is not None:
            return existing
    team_id = session.scalar(sa.select(Team.id).where(Team.name == team)) if team else None
    latest = session.scalar(sa.select(sa.func.max(LoraAdapter.version)).where(LoraAdapter.name == name)) or 0
    adapter = LoraAdapter(name=name, version=latest + 1, base_version_id=version_id, team_id=team_id, job_id=job_id,
                          content_hash=interop.file_sha256(result.weights_path), path=str(result.weights_path.parent),
                          aliases=["candidate"], mlflow_model_uri=model_uri)
    session.add(adapter)
    session.flush()
    audit.record(session, actor=actor, action="lora.register", resource=f"lora:{adapter.id}",
                 details={"name": name, "version": adapter.version, "job_id": job_id, "content_hash": adapter.content_hash,
                          "base_model_hash": result.base_model_hash, "dataset_hash": result.dataset_hash,
                          "mlflow_model_uri": model_uri})
    return adapter
