"""MLflow for fine-tuning: one run per job, metrics per step, artifacts, and the registered LoRA.

* **One run per job.** The run carries the tag ``latentops.job_id``; a job's later attempts (after
  a crash, a retry) find that run and continue it instead of opening another. Without a job id
  (a local ``finetune run``) the run is found by the output folder.
* **Params**: every config value, plus base model hash, dataset hash, family, optimizer and
  precision. **Metrics** per step: loss, lr, step time, images/s, peak memory; ``val_loss`` (the
  held-out loss, see :mod:`heldout`) at each evaluation. They are sent in batches, at most about
  once a second (``run.METRICS_FLUSH_S``) and at once for a step with validation images, at the end
  and by :meth:`MlflowTracker.flush`: one store write per step cost a queued job's training process the
  CPU its launcher spent beside it (docs/finetune.md, "Queued against in process").
* **Artifacts**: the LoRA weights (diffusers and kohya layouts), the sample grid and samples, the
  config and the data manifest; the validation images of each ``validation_every`` step as they
  are rendered, under ``validation/step-NNNNNN/``. The recipe reports them as the metric
  ``validation_images`` (how many the governed renderer released) once they are on disk in the
  output folder, which is shared by every process of a run: that call is what uploads them, so it
  reaches this tracker through the same relay as every other metric of a multi-process run. Only
  released images are ever written there (a quarantined one never reaches the run).
* **Registry**: the LoRA is logged with MLflow's ``mlflow.diffusers`` flavour (adapter weights plus
  the base model's local path; a ``python_function`` flavour rides along) and registered as a
  version of the adapter's registered model, with lineage tags (job id, policy decision ids,
  screening verdicts, hashes) and the alias ``candidate``. Registration is idempotent: a version
  tagged with this job id is reused, so a job registers exactly one version however many attempts
  it takes. The ``production`` alias is moved only by :func:`set_alias`, which the fine-tune service
  calls after an approval.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from latentops.pipelines.finetune.config import LoraConfig
from latentops.pipelines.finetune.run import METRICS_FLUSH_S, VALIDATION_IMAGES, TrainingResult

logger = logging.getLogger(__name__)
EXPERIMENT = "latentops-finetune"
JOB_TAG = "latentops.job_id"
OUT_TAG = "latentops.out_dir"
MODEL_ARTIFACT = "lora_model"
CANDIDATE, PRODUCTION = "candidate", "production"
BATCH_LIMIT = 1000  # MLflow's limit on the metrics of one log_batch call


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class MlflowTracker:
    """Implements the recipe's ``Tracker`` protocol against an MLflow tracking server or store."""

    def __init__(self, *, tracking_uri: str, base_model_path: Path, registered_name: str, out_dir: Path,
                 job_id: int | None = None, lineage: dict[str, Any] | None = None, experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.client = client(tracking_uri)
        self.base_model_path = Path(base_model_path).resolve()
        self.registered_name = registered_name
        self.out_dir = Path(out_dir).resolve()
        self.job_id = job_id
        self.lineage = lineage or {}
        self.experiment = experiment
        self.run_id: str | None = None
        self.model_version: str | None = None
        self.model_uri: str | None = None
        self._pending: list[Any] = []  # mlflow Metric entries not sent yet
        self._next_flush = 0.0  # monotonic time of the next flush; the first step's metrics go at once

    # -- the run -----------------------------------------------------------------------------------
    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment))
        except Exception:  # noqa: BLE001 - another process created it first
            return str(self.client.get_experiment_by_name(self.experiment).experiment_id)

    def _existing_run(self, experiment_id: str) -> str | None:
        tag, value = (JOB_TAG, str(self.job_id)) if self.job_id is not None else (OUT_TAG, str(self.out_dir))
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def start(self, *, config: LoraConfig, meta: dict[str, Any], resumed_from: int) -> None:
        experiment_id = self._experiment_id()
        self.run_id = self._existing_run(experiment_id)
        if self.run_id is None:
            tags = {OUT_TAG: str(self.out_dir), "mlflow.runName": self.registered_name,
                    **({JOB_TAG: str(self.job_id)} if self.job_id is not None else {})}
            self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
            params = {**{k: json.dumps(v) if isinstance(v, list | tuple | dict) else v for k, v in config.params().items()},
                      **{k: v for k, v in meta.items() if k != "config"}}
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "latentops.resumed_from", str(resumed_from))
        for key, value in self.lineage.items():
            self.client.set_tag(self.run_id, f"latentops.{key}", _tag(value))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.metrics_batch([(step, values)], flush=False)

    def metrics_batch(self, entries: list[tuple[int, dict[str, float]]], *, flush: bool = True) -> None:
        """Several steps' metrics; sent at once (``flush``), else when due or for validation images."""
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        shown = [step for step, values in entries if VALIDATION_IMAGES in values]
        self._pending.extend(Metric(k, float(v), stamp, step) for step, values in entries for k, v in values.items())
        if flush or shown or time.monotonic() >= self._next_flush:
            self.flush()
        for step in shown:
            self.validation_images(step)

    def flush(self) -> None:
        """Send the metrics not sent yet."""
        import time

        pending, self._pending = self._pending, []
        for first in range(0, len(pending), BATCH_LIMIT):
            assert self.run_id is not None
            self.client.log_batch(self.run_id, metrics=pending[first:first + BATCH_LIMIT])
        self._next_flush = time.monotonic() + METRICS_FLUSH_S

    def validation_images(self, step: int) -> list[str]:
        """Upload the released validation images of ``step`` as ``validation/step-NNNNNN/sample-NNN.png``."""
        assert self.run_id is not None
        name = f"step-{step:06d}"
        logged = []
        for path in sorted((self.out_dir / "validation" / name).glob("sample-*.png")):
            self.client.log_artifact(self.run_id, str(path), f"validation/{name}")
            logged.append(f"validation/{name}/{path.name}")
        return logged

    def finish(self, *, result: TrainingResult) -> None:
        assert self.run_id is not None
        run_id = self.run_id
        self.flush()
        for path, folder in ((result.weights_path, "lora"), (result.kohya_path, "lora/kohya"),
                             (result.out_dir / "config.json", None), (result.out_dir / "manifest.json", None),
                             (result.sample_grid, "samples")):
            if path is not None and Path(path).exists():
                self.client.log_artifact(run_id, str(path), folder)
        for sample in result.samples:
            self.client.log_artifact(run_id, str(sample), "samples")
        self._register(result)
        self.client.set_terminated(run_id, status="FINISHED")

    # -- the registry ------------------------------------------------------------------------------
    def _register(self, result: TrainingResult) -> None:
        import mlflow.diffusers
        from mlflow.exceptions import MlflowException

        existing = self._version_for_job()
        if existing is not None:
            self.model_version, self.model_uri = existing, f"models:/{self.registered_name}/{existing}"
            logger.info("job %s already registered as %s version %s", self.job_id, self.registered_name, existing)
            return
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / MODEL_ARTIFACT
            # base_model as an absolute local path: MLflow pins no hub revision and downloads nothing.
            mlflow.diffusers.save_model(adapter_path=str(result.weights_path), path=str(target),
                                        base_model=str(self.base_model_path),
                                        pip_requirements=["diffusers", "peft", "torch", "safetensors"],
                                        metadata={"base_model_hash": result.base_model_hash,
                                                  "dataset_hash": result.dataset_hash})
            self.client.log_artifacts(self.run_id, str(target), MODEL_ARTIFACT)
        try:
            self.client.create_registered_model(self.registered_name, tags={"latentops.kind": "lora"})
        except MlflowException:
            pass  # already registered: add a version to it
        tags = {"latentops.base_model_hash": result.base_model_hash, "latentops.dataset_hash": result.dataset_hash,
                **{f"latentops.{k}": _tag(v) for k, v in self.lineage.items()},
                **({JOB_TAG: str(self.job_id)} if self.job_id is not None else {OUT_TAG: str(self.out_dir)})}
        version = self.client.create_model_version(self.registered_name, source=f"runs:/{self.run_id}/{MODEL_ARTIFACT}",
                                                   run_id=self.run_id, tags=tags)
        self.model_version = str(version.version)
        self.model_uri = f"models:/{self.registered_name}/{self.model_version}"
        self.client.set_registered_model_alias(self.registered_name, CANDIDATE, self.model_version)

    def _version_for_job(self) -> str | None:
        tag, value = (JOB_TAG, str(self.job_id)) if self.job_id is not None else (OUT_TAG, str(self.out_dir))
        try:
            versions = self.client.search_model_versions(f"name = '{self.registered_name}'")
        except Exception:  # noqa: BLE001 - no such registered model yet
            return None
        for version in versions:
            if version.tags.get(tag) == value:
                return str(version.version)
        return None


def _tag(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)[:5000]


def set_alias(tracking_uri: str, registered_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (callers check the approval first)."""
    client(tracking_uri).set_registered_model_alias(registered_name, alias, version)


def aliases(tracking_uri: str, registered_name: str) -> dict[str, str]:
    model = client(tracking_uri).get_registered_model(registered_name)
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}
