"""Synthetic dataset jobs: from a spec to a screened, documented, loadable dataset.

Steps of :func:`run` (in process for ``latentops datasets generate``, or as the ``dataset`` job):

1. **Check** (``dataset_checks.preflight``): the spec's model and adapters exist; the ``datasets``
   policy lets the requester generate this many images at this resolution for the team; the prompt
   and models policies are asked for every class (``generation.authorize``). A class whose prompt
   is denied is reported with its reasons and skipped; the others continue.
2. **Generate** every class in fixed batches through the governed path
   (``generation.generate``): screening, provenance, quarantine, assets and audit entries. Each
   finished batch is committed, its released images written to ``OUT/.latentops/images`` and its
   record to ``OUT/.latentops/batches``, in that order. An interrupted run (crash, cancel, full
   disk) resumes from there: finished batches are never generated again, and because image ``k``
   of a class has a fixed seed and prompt (``pipelines.datasets.spec``) and batches have fixed
   boundaries, the result is the same as an uninterrupted run.
3. **Filter** each class (CLIP score when real CLIP weights are imported, near-duplicates by
   perceptual hash, a user classifier's confidence) and **split** train/validation by a seeded
   hash of each image's seed.
4. **Write** ImageFolder or WebDataset, the Croissant-style manifest and the card
   (``pipelines.datasets.formats``), log the dataset and its files to MLflow, mark the ``Dataset``
   row ready with its statistics and write ``dataset.complete``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import (
    Conflict,
    LatentopsError,
    NotFound,
    ServiceUnavailable,
)
from latentops.core.settings import Settings
from latentops.governance import access, audit, screening
from latentops.governance.access import Principal
from latentops.pipelines.datasets import filters, formats
from latentops.pipelines.datasets.spec import DatasetSpec
from latentops.pipelines.finetune.run import Hooks, QuietHooks
from latentops.platform.database import session_scope
from latentops.platform.services import generation, users
from latentops.platform.services.dataset_checks import Plan, classifier_root, preflight, resolve_target
from latentops.platform.tables import Dataset, Job, Team

log = logging.getLogger(__name__)

STATE_DIR = ".latentops"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


# --- the dataset row -----------------------------------------------------------------------------


def create_record(session: Session, *, spec: DatasetSpec, actor: audit.Actor | str, team_id: int | None, path: Path,
                  job_id: int | None = None) -> Dataset:
    user = users.actor_user(session, actor)
    row = Dataset(name=spec.name, team_id=team_id, owner_id=user.id if user else None, job_id=job_id,
                  spec=spec.model_dump(mode="json"), format=spec.format, path=str(path), state="pending", stats={})
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="dataset.create", resource=f"dataset:{row.id}",
                 details={"name": spec.name, "images": spec.total_images, "format": spec.format,
                          "fingerprint": spec.fingerprint(), "job_id": job_id})
    return row


def get(session: Session, dataset_id: int) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound(f"dataset: no dataset with id {dataset_id}")
    return row


def list_datasets(session: Session, *, team_ids: list[int | None] | None = None, limit: int = 100) -> list[Dataset]:
    query = sa.select(Dataset).order_by(Dataset.id.desc()).limit(limit)
    if team_ids is not None:
        query = query.where(sa.or_(Dataset.team_id.in_([t for t in team_ids if t is not None]),
                                   Dataset.team_id.is_(None) if None in team_ids else sa.false()))
    return list(session.scalars(query))


def as_dict(session: Session, row: Dataset) -> dict[str, Any]:
    team = session.get(Team, row.team_id) if row.team_id else None
    return {"id": row.id, "name": row.name, "team": team.name if team else None, "job_id": row.job_id,
            "format": row.format, "state": row.state, "path": row.path, "stats": row.stats, "spec": row.spec,
            "created_at": row.created_at.isoformat() if row.created_at else None}


# --- 2. generation in resumable batches ------------------------------------------------------------


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return any(m in text for m in ("database or disk is full", "No space left", "File too large", "Disk quota"))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def pixel_sha256(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()


@dataclass
class _Batch:
    class_index: int
    index: int
    start: int
    stop: int

    def record_path(self, state: Path) -> Path:
        return state / "batches" / f"{self.class_index:04d}-{self.index:06d}.json"


def _batches(spec: DatasetSpec, allowed: set[str]) -> list[_Batch]:
    found = []
    for class_index, cls in enumerate(spec.classes):
        if cls.name not in allowed:
            continue
        count = spec.count(cls)
        found += [_Batch(class_index, b, start, min(start + spec.batch_size, count))
                  for b, start in enumerate(range(0, count, spec.batch_size))]
    return found


def _generate_batch(settings: Settings, *, spec: DatasetSpec, batch: _Batch, plan: Plan, actor: audit.Actor | str,
                    dataset_id: int, job_id: int | None, state: Path, engine: Any) -> list[dict[str, Any]]:
    cls = spec.classes[batch.class_index]
    prompts = [spec.prompt_of(cls, k) for k in range(batch.start, batch.stop)]
    with session_scope(settings.database_url) as session:
        target = resolve_target(session, spec.model, spec.lora_of(cls))
        result = generation.generate(
            session, settings=settings, actor=actor, target=target, authorization=plan.authorizations[cls.name],
            spec=generation.GenerationSpec(prompts=prompts, negative_prompt=spec.negative_of(cls),
                                           seed=spec.seed_of(batch.class_index, batch.start), steps=spec.steps,
                                           guidance_scale=spec.guidance, height=spec.height, width=spec.width),
            team=plan.team, team_id=plan.team_id, job_id=job_id, dataset_id=dataset_id, purpose="dataset", engine=engine)
        records = []
        for image in result.images:
            k = batch.start + image.index
            record: dict[str, Any] = {"k": k, "seed": image.seed, "prompt": image.prompt, "asset_id": image.asset_id,
                                      "status": image.status}
            if image.png is not None:
                picture = image.image()
                relative = f"images/{batch.class_index:04d}/{k:06d}.png"
                _write_atomic(state / relative, image.png)
                record.update(file=relative, pixel_sha256=pixel_sha256(picture), phash=f"{filters.phash(picture):016x}")
            else:
                record["reasons"] = image.reasons
            records.append(record)
    # Only once the assets are committed does the batch count as finished.
    _write_atomic(batch.record_path(state), json.dumps({"class": cls.name, "records": records}, sort_keys=True).encode())
    return records


def _load_state(out: Path, spec: DatasetSpec) -> dict[str, Any]:
    path = out / STATE_DIR / "run.json"
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    if state.get("fingerprint") != spec.fingerprint():
        raise Conflict(f"out: {out.name} holds a dataset run of a different spec (model, seeds, classes or counts "
                       "changed); use a new folder or the original spec")
    return dict(state)


def run(settings: Settings, *, spec: DatasetSpec, out: Path, actor: audit.Actor | str, hooks: Hooks | None = None,
        dataset_id: int | None = None, job_id: int | None = None, engine: Any = None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; resumes from ``out`` when it holds an unfinished run."""
    hooks = hooks or QuietHooks()
    out = Path(out).resolve()
    state_dir = out / STATE_DIR
    previous = _load_state(out, spec)
    dataset_id = dataset_id or previous.get("dataset_id")
    # 1. Checks (session_scope commits a denial: it is evidence).
    with session_scope(settings.database_url) as session:
        plan = preflight(session, settings=settings, actor=actor, spec=spec)
        if dataset_id is None:
            dataset_id = create_record(session, spec=spec, actor=actor, team_id=plan.team_id, path=out,
                                       job_id=job_id).id
        row = get(session, dataset_id)
        row.state, row.path = "running", str(out)
    assert dataset_id is not None
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(state_dir / "run.json", json.dumps({"fingerprint": spec.fingerprint(), "dataset_id": dataset_id,
                                                          "spec": spec.model_dump(mode="json")}, sort_keys=True).encode())
        # 2. Generate what is missing.
        batches = _batches(spec, set(plan.authorizations))
        total = sum(b.stop - b.start for b in batches)
        done = sum(b.stop - b.start for b in batches if b.record_path(state_dir).exists())
        resumed = done
        if done:
            hooks.log(f"resuming: {done}/{total} images already generated")
        from latentops.pipelines.engine import default_engine

        engine = engine or default_engine()
        for batch in batches:
            if batch.record_path(state_dir).exists():
                continue
            hooks.check_cancelled()
            _generate_batch(settings, spec=spec, batch=batch, plan=plan, actor=actor, dataset_id=dataset_id,
                            job_id=job_id, state=state_dir, engine=engine)
            done += batch.stop - batch.start
            hooks.progress(done, total)
        # 3-4. Filter, split, write, record.
        summary = _finish(settings, spec=spec, out=out, plan=plan, actor=actor, dataset_id=dataset_id)
    except LatentopsError as error:
        _mark_failed(settings, dataset_id, error.detail)
        raise
    except Exception as error:
        if _disk_full(error):
            message = (f"disk full while writing the dataset ({type(error).__name__}); finished batches are kept "
                       f"in {out.name}/{STATE_DIR}; free space and run it again to resume")
            _mark_failed(settings, dataset_id, message)
            raise ServiceUnavailable(message) from None
        _mark_failed(settings, dataset_id, f"{type(error).__name__}: {error}")
        raise
    summary["resumed_images"] = resumed
    return summary


def _mark_failed(settings: Settings, dataset_id: int, message: str) -> None:
    try:
        with session_scope(settings.database_url) as session:
            row = get(session, dataset_id)
            row.state, row.stats = "failed", {**row.stats, "error": message[:2000]}
    except Exception:  # the database may be what failed (full disk): the run's files still say how far it got
        log.exception("dataset %s: could not record the failure", dataset_id)


# --- 3-4. filter, split, write -------------------------------------------------------------------


def _validation_seeds(spec: DatasetSpec, seeds: list[int]) -> set[int]:
    """The validation share of one class's kept images: round(n x fraction), at least one once the
    fraction is above 0 and the class has two or more, never all; chosen by a seeded hash, so the
    same spec gives the same split. (A draw per image let 10 % of 3 images leave 1 to train on.)"""
    if spec.split.validation <= 0 or len(seeds) < 2:
        return set()
    count = min(len(seeds) - 1, max(1, round(len(seeds) * spec.split.validation)))
    return set(sorted(seeds, key=lambda s: hashlib.sha256(f"{spec.seed}:{s}".encode()).digest())[:count])


def _filter_class(settings: Settings, spec: DatasetSpec, label: int, records: list[dict[str, Any]], state: Path,
                  clip: Any, classifier: filters.Classifier | None, stats: dict[str, int]) -> list[dict[str, Any]]:
    cls = spec.classes[label]
    released = [r for r in records if r.get("file")]
    images = [Image.open(state / r["file"]).convert("RGB") for r in released]
    for record in released:
        record["scores"] = {}
    keep = [True] * len(released)
    if clip is not None and spec.filters.clip_min_score is not None and released:
        texts = [f"a photo of a {cls.name}", *cls.rendered_prompts()]
        for index, score in enumerate(filters.clip_scores(clip, images, texts)):
            released[index]["scores"]["clip"] = score
            if score < spec.filters.clip_min_score:
                keep[index] = False
                stats["clip"] += 1
    if classifier is not None and released:
        assert spec.filters.classifier is not None
        for index, confidence in enumerate(classifier.confidences(images, [label] * len(images))):
            released[index]["scores"]["classifier"] = confidence
            if confidence < spec.filters.classifier.min_confidence and keep[index]:
                keep[index] = False
                stats["classifier"] += 1
    if spec.filters.dedupe_distance is not None:
        candidates = [i for i, flag in enumerate(keep) if flag]
        flags = filters.dedupe([int(released[i]["phash"], 16) for i in candidates], spec.filters.dedupe_distance)
        for index, flag in zip(candidates, flags, strict=True):
            if not flag:
                keep[index] = False
                stats["duplicates"] += 1
    return [r for r, flag in zip(released, keep, strict=True) if flag]


def _finish(settings: Settings, *, spec: DatasetSpec, out: Path, plan: Plan, actor: audit.Actor | str,
            dataset_id: int) -> dict[str, Any]:
    state = out / STATE_DIR
    clip = screening.load_clip(settings) if spec.filters.clip_min_score is not None else None
    classifier = (filters.Classifier(classifier_root(settings), spec.filters.classifier.id, len(spec.classes))
                  if spec.filters.classifier is not None else None)
    stats = {"clip": 0, "classifier": 0, "duplicates": 0}
    released = quarantined = 0
    samples: list[formats.Sample] = []
    counts: dict[str, dict[str, int]] = {}
    for label, cls in enumerate(spec.classes):
        if cls.name not in plan.authorizations:
            continue
        records = []
        for path in sorted((state / "batches").glob(f"{label:04d}-*.json")):
            records += json.loads(path.read_text())["records"]
        released += sum(1 for r in records if r.get("file"))
        quarantined += sum(1 for r in records if not r.get("file"))
        kept = _filter_class(settings, spec, label, records, state, clip, classifier, stats)
        validation = _validation_seeds(spec, [r["seed"] for r in kept])
        for record in kept:
            split = "validation" if record["seed"] in validation else "train"
            counts.setdefault(split, {}).setdefault(cls.name, 0)
            counts[split][cls.name] += 1
            samples.append(formats.Sample(
                source=state / record["file"], class_name=cls.name, label=label, k=record["k"], split=split,
                metadata={"label": cls.name, "prompt": record["prompt"], "seed": record["seed"],
                          "model_version": f"{plan.model['name']}@{plan.model['version']}",
                          "lora_version": plan.loras.get(cls.name), "asset_id": record["asset_id"],
                          "pixel_sha256": record["pixel_sha256"], "scores": record["scores"]}))
    files = (formats.write_imagefolder(out, samples) if spec.format == "imagefolder"
             else formats.write_webdataset(out, samples))
    detector = screening.status(settings)
    filter_facts = {"clip_min_score": spec.filters.clip_min_score, "clip_applied": clip is not None,
                    "dedupe_distance": spec.filters.dedupe_distance,
                    "classifier_min_confidence": spec.filters.classifier.min_confidence if spec.filters.classifier else None,
                    "dropped": dict(stats)}
    if spec.filters.clip_min_score is not None and clip is None:
        filter_facts["clip_skipped"] = "no real CLIP weights imported (latentops screening import-clip)"
    facts = formats.Facts(
        name=spec.name, description=spec.description, licence=spec.licence, format=spec.format,
        classes=[c.name for c in spec.classes if c.name in plan.authorizations], counts=counts,
        model={k: v for k, v in plan.model.items() if k != "version_id"}, loras=plan.loras,
        policy_revision=plan.revision,
        screening={"released": released, "quarantined": quarantined, "detector": "+".join(detector["detectors"]) or "none",
                   "unscreened": not detector["real_detector"]},
        filters=filter_facts, denied_classes=plan.denied, spec=spec.model_dump(mode="json"),
        fingerprint=spec.fingerprint(), files=files)
    manifest_path, card_path = formats.write_manifest_and_card(out, facts)
    mlflow_run = _log_mlflow(settings, out=out, spec=spec, facts=facts, files=[manifest_path, card_path, *files])
    summary = {"dataset_id": dataset_id, "out": str(out), "images": len(samples), "counts": counts,
               "released": released, "quarantined": quarantined, "filtered": stats, "denied_classes": plan.denied,
               "manifest": manifest_path.relative_to(out).as_posix(), "mlflow_run_id": mlflow_run}
    with session_scope(settings.database_url) as session:
        row = get(session, dataset_id)
        row.state, row.stats = "ready", {k: v for k, v in summary.items() if k not in {"out"}}
        audit.record(session, actor=actor, action="dataset.complete", resource=f"dataset:{dataset_id}",
                     outcome="success" if not plan.denied else "partial",
                     details={"images": len(samples), "released": released, "quarantined": quarantined,
                              "denied_classes": [d["class"] for d in plan.denied], "policy_revision": plan.revision,
                              "manifest_sha256": formats.sha256_file(manifest_path), "mlflow_run_id": mlflow_run})
    return summary


def _log_mlflow(settings: Settings, *, out: Path, spec: DatasetSpec, facts: formats.Facts, files: list[Path]) -> str | None:
    """The dataset as an MLflow dataset input and its manifest, card and metadata as artifacts."""
    import mlflow
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    rows = []
    for path in files:
        if path.name == "metadata.jsonl":
            rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "scores"} for r in rows]) if rows else pd.DataFrame(
        {"classes": facts.classes})
    client_uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(client_uri)
    experiment = mlflow.set_experiment("latentops-datasets")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=spec.name) as active:
        mlflow.log_params({"model": f"{facts.model.get('name')}@{facts.model.get('version')}", "format": spec.format,
                           "per_class": spec.per_class, "seed": spec.seed, "steps": spec.steps, "guidance": spec.guidance,
                           "fingerprint": facts.fingerprint[:16], "policy_revision": facts.policy_revision[:16]})
        mlflow.log_input(from_pandas(frame, source=str(out), name=spec.name), context="synthetic")
        mlflow.log_metrics({"images": float(sum(sum(c.values()) for c in facts.counts.values())),
                            "quarantined": float(facts.screening["quarantined"])})
        for path in files:
            if path.suffix != ".tar":  # shards can be large; the manifest lists them with their hashes
                mlflow.log_artifact(str(path), artifact_path="dataset" if path.parent == out else f"dataset/{path.parent.name}")
        return str(active.info.run_id)


# --- queued jobs ---------------------------------------------------------------------------------


def default_out(settings: Settings, dataset_id: int, name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)[:60]
    return settings.artifacts_dir / "datasets" / f"{dataset_id}-{safe}"


def submit(session: Session, settings: Settings, *, actor: audit.Actor | str, spec: DatasetSpec,
           owner_email: str | None = None, priority: int = 0) -> tuple[Dataset, Job]:
    """Queue a dataset job after the same checks as an in-process run, in the caller's transaction;
    the job goes to the broker once it commits. Returns the dataset's row and its job.

    The datasets policy admits the job for its team (:func:`preflight`); a denial raises
    ``PolicyDenied`` with its decisions left in the transaction, which ``session_scope`` keeps.
    """
    from latentops.platform.services import jobs

    jobs.ping_broker(settings)  # before the checks: an unreachable broker refuses the job at once
    plan = preflight(session, settings=settings, actor=actor, spec=spec)
    row = create_record(session, spec=spec, actor=actor, team_id=plan.team_id, path=Path(""))
    row.path = str(default_out(settings, row.id, spec.name))
    owner = users.actor_user(session, actor if owner_email is None else owner_email)
    team = session.get(Team, plan.team_id) if plan.team_id is not None else None
    job = jobs.submit(session, settings, kind="dataset", params={"spec": spec.model_dump(mode="json"),
                                                                 "dataset_id": row.id, "out": row.path,
                                                                 "actor": audit.actor_name(actor)},
                      actor=actor, owner=owner, team=team, priority=priority, admitted=True)
    row.job_id, row.state = job.id, "queued"
    return row, job


def submit_request(session: Session, settings: Settings, principal: Principal, spec: DatasetSpec) -> tuple[Dataset, Job]:
    """:func:`submit` for an authenticated caller (``POST /datasets``, ``POST /jobs`` with kind
    ``dataset``, the portal). The spec names only what the caller chose (no output folder, record
    id or actor): its models must be visible to the caller (``NotFound`` otherwise, like a missing
    one), and the job's params are built here after the datasets, prompt and models policies
    allowed it."""
    from latentops.platform.services import job_requests

    access.check(session, principal=principal, action="datasets.create")
    job_requests.check_dataset_models(session, principal=principal, spec=spec)
    return submit(session, settings, actor=principal.email, spec=spec)


def run_job(ctx: Any) -> dict[str, Any]:
    """The ``dataset`` job handler: the same run, resuming from the job's folder on a retry."""
    from latentops.pipelines.datasets import spec as spec_module

    params = ctx.params
    spec = spec_module.parse(params["spec"], source="params.spec")
    out = Path(params["out"])
    summary = run(ctx.settings, spec=spec, out=out, actor=params.get("actor") or f"job:{ctx.job_id}",
                  hooks=ctx, dataset_id=params["dataset_id"], job_id=ctx.job_id)
    return {**summary, "out": out.name}  # a job's result names its folder, not the server's path

