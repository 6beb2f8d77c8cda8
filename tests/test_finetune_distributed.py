"""Multi-process fine-tunes on the CPU: real training processes (two per run, gloo) on tiny models.

What a single process does is tested in ``test_finetune_recipe``. Here: a two-process job on a real
worker trains one LoRA that loads, on twice the per-process batch, with one MLflow run fed by rank 0
alone; a run stopped at a step (cancelled) resumes with two processes and ends bit-identical to one
that never stopped; a rank that dies fails the run with that reason and leaves no process behind;
bad ``processes`` values, and more processes than GPUs, are refused before anything runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
import torch
from finetune_helpers import draw_glyphs
from job_helpers import submit_finetune
from safetensors.torch import load_file
from test_finetune_recipe import _release_unscreened
from test_jobs_queue import wait_finished

from latentops.core.errors import InvalidInput
from latentops.pipelines import tiny
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import checkpoint, distributed, lora, tracking
from latentops.pipelines.finetune.config import build_config
from latentops.pipelines.finetune.families import Family
from latentops.platform.database import session_scope
from latentops.platform.services import finetune, jobs
from latentops.platform.services import models as models_service
from latentops.platform.tables import Job

CONSOLE = "cli:tester"
BASE = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 1, "lr": 1e-3, "seed": 7,
        "validation_steps": 1, "processes": 2}


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.create("sd1", tmp_path_factory.mktemp("tiny") / "sd1")


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_glyphs(tmp_path_factory.mktemp("instances"))


@pytest.fixture
def catalogue(settings_env, tiny_sd1: Path):  # type: ignore[no-untyped-def]
    with session_scope(settings_env.database_url) as db:
        models_service.import_model(db, source=tiny_sd1, name="tiny", actor=CONSOLE, store_root=settings_env.model_store,
                                    sensitivity="public")
    _release_unscreened(settings_env)
    return settings_env


def _weights(model: Path) -> WeightsRef:
    return WeightsRef(content_hash="tiny-sd1-seed0", path=model, family="sd1")


def _training_processes() -> list[psutil.Process]:
    """This test process's training processes."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "finetune.distributed import _process_main" in " ".join(child.cmdline()) \
                    and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _initial_lora(model: Path, config) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The LoRA tensors a run starts from: seeded exactly as the recipe seeds them."""
    from diffusers import DiffusionPipeline

    family = Family("sd1", DiffusionPipeline.from_pretrained(str(model)))
    torch.manual_seed(config.seed)
    trained = family.add_lora(rank=config.rank, alpha=config.lora_alpha, text_encoder=False)
    return {f"unet.{n}": p.detach().float().clone() for n, p in trained["unet"].named_parameters() if p.requires_grad}


def _render(pipeline) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return torch.from_numpy(pipeline("a sks glyph", num_inference_steps=2, height=64, width=64, output_type="np",
                                         generator=torch.Generator().manual_seed(0)).images)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the embedded default; one backend is enough here
def test_a_two_process_job_on_a_worker_trains_one_lora_on_twice_the_batch(  # type: ignore[no-untyped-def]
        queue_settings, catalogue, tiny_sd1: Path, instances: Path, start_worker) -> None:
    from diffusers import DiffusionPipeline

    settings = queue_settings
    values = {**BASE, "steps": 4, "checkpoint_every": 2, "batch_size": 2}
    job_id = submit_finetune(settings, actor=CONSOLE, request=finetune.Request(
        model="tiny", instance_dir=instances, values=values, adapter_name="glyph", attest_licence=True,
        attest_consent=True))
    start_worker("gpu")
    job = wait_finished(settings.database_url, job_id, timeout=600)
    assert job.state.value == "succeeded", job.error
    assert job.result["steps"] == 4 and job.progress["step"] == 4

    # What the trainer recorded: two processes, 2 x 2 images a step (counted by the ranks themselves),
    # and a plan whose every global batch holds 4 images, 2 for each rank.
    out = settings.jobs_dir / str(job_id) / "out"
    recorded = json.loads((out / "result.json").read_text())
    assert recorded["processes"] == 2 and recorded["effective_batch_size"] == 4
    kept = checkpoint.load_latest(out / "checkpoints")
    assert kept is not None and kept.step == 4
    assert [len(batch) for batch in kept.state["plan"]] == [4, 4, 4, 4]

    # One MLflow run, fed by rank 0 alone: one loss point per step, not one per rank.
    client = tracking.client(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`latentops.job_id` = '{job_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["processes"] == "2" and run.data.params["effective_batch_size"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.search_model_versions("name = 'lora-glyph'")) == 1
    assert (out / "samples" / "grid.png").exists()  # rendered by rank 0 through the governed path

    # The LoRA moved away from where it started, and it loads in plain diffusers and changes the images.
    config = build_config(values)
    initial = _initial_lora(tiny_sd1, config)
    trained = checkpoint.read_tensors(kept, "trainable.safetensors")
    assert trained.keys() == initial.keys()
    assert all(not torch.equal(trained[name], initial[name]) for name in initial)
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd1))
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe)
    pipe.load_lora_weights(str(out))
    assert not torch.equal(before, _render(pipe))
    assert not _training_processes()


class _StopAfter:
    """The caller's hooks: cancellation is asked for once rank 0 has reported step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.steps: list[int] = []
        self.asked_at: float | None = None

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.steps.append(step)

    def log(self, message: str) -> None:
        pass

    def check_cancelled(self) -> None:
        if self.steps and self.steps[-1] >= self.at:
            self.asked_at = self.asked_at or time.time()
            raise jobs.JobCancelled("cancelled by the test")


@pytest.mark.slow
def test_a_cancelled_two_process_run_stops_within_a_step_and_resumes_bit_identical(  # type: ignore[no-untyped-def]
        tiny_sd1: Path, instances: Path, tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 8, "checkpoint_every": 1, "keep_checkpoints": 20, "samples": False,
                           "ema_decay": 0.9, "lr_schedule": "cosine", "warmup_steps": 2, "crop": "random"})
    cache = tmp_path / "cache"
    straight = lora.train(config, weights=_weights(tiny_sd1), instance_dir=instances, out_dir=tmp_path / "a",
                          cache_dir=cache)
    assert straight.processes == 2 and straight.effective_batch_size == 2 and len(straight.losses) == 8

    hooks = _StopAfter(3)
    with pytest.raises(jobs.JobCancelled, match="cancelled by the test"):
        lora.train(config, weights=_weights(tiny_sd1), instance_dir=instances, out_dir=tmp_path / "b", cache_dir=cache,
                   hooks=hooks)
    assert hooks.asked_at is not None
    assert time.time() - hooks.asked_at < 30  # the ranks stopped at their next step, not after a timeout
    assert not _training_processes()
    written = sorted((tmp_path / "b" / "checkpoints").glob("step-*"))
    after = [p.name for p in written if (p / "state.json").stat().st_mtime > hooks.asked_at]
    assert len(after) <= 2, after  # at most the step in flight and the one that began as the stop was asked
    stopped_at = checkpoint.latest_step(tmp_path / "b" / "checkpoints")
    assert stopped_at is not None and 3 <= stopped_at < 8

    resumed = lora.train(config, weights=_weights(tiny_sd1), instance_dir=instances, out_dir=tmp_path / "b",
                         cache_dir=cache, resume=True)
    assert resumed.resumed_from == stopped_at and resumed.steps == 8
    assert resumed.losses == straight.losses
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _KillARank:
    """The caller's hooks: at step 2, one training process is killed as the kernel's OOM killer would."""

    def __init__(self) -> None:
        self.killed: psutil.Process | None = None

    def progress(self, step: int, total: int, **metrics: float) -> None:
        if step >= 2 and self.killed is None:
            self.killed = max(_training_processes(), key=lambda p: p.pid)  # rank 1: started last
            self.killed.kill()

    def log(self, message: str) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_with_that_reason_and_leaves_no_process(  # type: ignore[no-untyped-def]
        tiny_sd1: Path, instances: Path, tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 200, "checkpoint_every": 100, "samples": False})
    hooks = _KillARank()
    began = time.monotonic()
    with pytest.raises(checkpoint.TrainingFailed,
                       match=r"^training process [01] of 2 died \(killed by SIGKILL, perhaps out of memory\); "
                             r"the other processes were stopped$"):
        lora.train(config, weights=_weights(tiny_sd1), instance_dir=instances, out_dir=tmp_path / "run", hooks=hooks)
    assert hooks.killed is not None
    assert time.monotonic() - began < 300
    assert not _training_processes()


def test_bad_process_counts_are_refused_before_anything_is_queued(queue_settings, catalogue, instances: Path) -> None:  # type: ignore[no-untyped-def]
    settings = queue_settings
    for value, reason in ((0, "greater than or equal to 1"), (9, "less than or equal to 8"), ("two", "valid integer")):
        with pytest.raises(InvalidInput, match=f"^processes: .*{reason}"):
            submit_finetune(settings, actor=CONSOLE, request=finetune.Request(
                model="tiny", instance_dir=instances, values={**BASE, "processes": value}, attest_licence=True,
                attest_consent=True))
    with session_scope(settings.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0


def test_more_processes_than_gpus_or_a_precision_the_device_lacks_is_refused_before_a_process_starts(  # type: ignore[no-untyped-def]
        tiny_sd1: Path, instances: Path, tmp_path: Path) -> None:
    # This machine has no GPU: a two-process run on CUDA asks for two GPUs and is given none.
    with pytest.raises(InvalidInput, match=r"^processes: this fine-tune asks for 2 processes, one per GPU, but this "
                                           r"worker was given 0 GPU\(s\)"):
        lora.train(build_config(BASE), weights=_weights(tiny_sd1), instance_dir=instances, out_dir=tmp_path / "gpu",
                   device=torch.device("cuda"))
    with pytest.raises(InvalidInput, match="given 1 GPU"):
        distributed.require_gpus(4, 1)
    distributed.require_gpus(4, 4)
    with pytest.raises(InvalidInput, match="^mixed_precision: fp16 needs a GPU"):
        lora.train(build_config({**BASE, "mixed_precision": "fp16"}), weights=_weights(tiny_sd1), instance_dir=instances,
                   out_dir=tmp_path / "cpu")
    assert not _training_processes()
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "cpu").exists()
