"""Fine-tuning as a governed service: refusals before queueing, a queued job on a real worker,
one MLflow run and one registered version per job, and the approval that moves ``production``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from job_helpers import submit_finetune
from PIL import Image
from test_finetune_recipe import _release_unscreened
from test_jobs_queue import wait_finished

from latentops.core.errors import InvalidInput, PolicyDenied
from latentops.governance import copyright
from latentops.pipelines import tiny
from latentops.pipelines.finetune import tracking
from latentops.platform.database import session_scope
from latentops.platform.services import adapters, finetune, jobs, users
from latentops.platform.services import grants as grants_service
from latentops.platform.services import models as models_service
from latentops.platform.tables import AuditEntry, Job, JobEvent, LoraAdapter, PolicyDecision

CONSOLE = "cli:tester"
SETTINGS = {"instance_prompt": "a sks pattern", "steps": 4, "rank": 4, "resolution": 32, "checkpoint_every": 2,
            "validation_steps": 1, "lr": 1e-3}


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.create("sd1", tmp_path_factory.mktemp("tiny") / "sd1")


@pytest.fixture
def instances(tmp_path: Path) -> Path:
    folder = tmp_path / "instances"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for index in range(3):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.NEAREST).save(folder / f"p{index}.png")
    (folder / "broken.png").write_bytes(b"")
    return folder


@pytest.fixture
def catalogue(settings_env, tiny_sd1: Path):  # type: ignore[no-untyped-def]
    with session_scope(settings_env.database_url) as db:
        models_service.import_model(db, source=tiny_sd1, name="tiny", actor=CONSOLE, store_root=settings_env.model_store,
                                    sensitivity="public")
        models_service.import_model(db, source=tiny_sd1, name="internal-tiny", actor=CONSOLE,
                                    store_root=settings_env.model_store, sensitivity="internal")
        users.create_user(db, email="sam@example.com", role="submitter", team="design", password=None, actor=CONSOLE)
    _release_unscreened(settings_env)
    return settings_env


def _request(instances: Path, **changes: object) -> finetune.Request:
    values = {**SETTINGS, **changes.pop("values", {})}  # type: ignore[dict-item]
    options = {"attest_licence": True, "attest_consent": True, **changes}
    return finetune.Request(**{"model": "tiny", "instance_dir": instances, "values": values, **options})  # type: ignore[arg-type]


def _jobs(url: str) -> int:
    with session_scope(url) as db:
        return int(db.scalar(sa.select(sa.func.count(Job.id))) or 0)


def test_bad_requests_are_refused_before_anything_is_queued(queue_settings, catalogue, instances: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = queue_settings
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_text("not a picture")
    with pytest.raises(InvalidInput, match="no valid training image") as refused:
        submit_finetune(settings, actor=CONSOLE, request=_request(empty))
    assert refused.value.reasons == ["a.jpg: not an image (its content matches no image format, whatever its name)"]
    with pytest.raises(InvalidInput, match="^lr:"):
        submit_finetune(settings, actor=CONSOLE, request=_request(instances, values={"lr": 5.0}))
    with pytest.raises(PolicyDenied) as denied:
        submit_finetune(settings, actor=CONSOLE, request=_request(instances, attest_consent=False))
    assert "training uploads need a licence and consent attestation" in " ".join(map(str, denied.value.reasons))
    with pytest.raises(PolicyDenied, match="no grant lets you use model 'internal-tiny'"):
        submit_finetune(settings, actor="sam@example.com", request=_request(instances, model="internal-tiny"))
    with pytest.raises(PolicyDenied):  # over the submitter's rank limit
        submit_finetune(settings, actor="sam@example.com", request=_request(instances, values={"rank": 64}))
    assert _jobs(settings.database_url) == 0
    with session_scope(settings.database_url) as db:  # the denials are kept as evidence
        denials = db.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.allow.is_(False)))
    assert denials and denials >= 3


def test_a_protected_work_is_refused_unless_the_team_holds_a_licence(queue_settings, catalogue, instances: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = queue_settings
    works = tmp_path / "works"
    works.mkdir()
    Image.open(instances / "p1.png").resize((256, 256)).save(works / "work.png")
    with session_scope(settings.database_url) as db:
        copyright.add_references(db, settings=settings, directory=works, owner="Acme Pictures", licence="arr", actor=CONSOLE)
        users.get_or_create_team(db, name="design", actor=CONSOLE)
    with pytest.raises(PolicyDenied, match="protected works") as denied:
        submit_finetune(settings, actor=CONSOLE, request=_request(instances, team="design"))
    assert any(str(r).startswith("p1.png:") for r in denied.value.reasons)
    assert _jobs(settings.database_url) == 0
    with session_scope(settings.database_url) as db:
        copyright.grant_licence(db, team="design", owner="Acme Pictures", actor=CONSOLE)
    job_id = submit_finetune(settings, actor=CONSOLE, request=_request(instances, team="design"))
    with session_scope(settings.database_url) as db:
        job = jobs.get(db, job_id)
        assert job.kind == "finetune" and job.queue == "gpu"
        assert job.params["lineage"]["screening"] == {"files": 3, "matches": 1, "verdict": "licensed"}
        assert job.params["lineage"]["policy_decision_ids"]
        # What runs is a frozen copy of what was screened (the broken file left out).
        assert sorted(p.name for p in Path(job.params["instance_dir"]).iterdir()) == ["metadata.jsonl", "p0.png", "p1.png", "p2.png"]


@pytest.mark.one_backend
@pytest.mark.slow
def test_a_submitted_job_trains_on_a_worker_registers_once_and_needs_an_approver_for_production(  # type: ignore[no-untyped-def]
        queue_settings, catalogue, instances: Path, cli, start_worker) -> None:
    settings = queue_settings
    done = cli("finetune", "submit", "--model", "tiny", "--method", "lora", "--instance-dir", str(instances),
               "--instance-prompt", "a sks pattern", "--steps", "4", "--rank", "4", "--resolution", "32",
               "--checkpoint-every", "2", "--lr", "0.001", "--attest-licence", "--attest-consent", "--name", "pattern",
               "--json", env={"LATENTOPS_BROKER_URL": settings.broker_url})
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    start_worker("gpu")
    job = wait_finished(settings.database_url, job_id, timeout=900)
    assert job.state.value == "succeeded", job.error
    assert job.result["adapter"] == "pattern" and job.result["steps"] == 4
    assert job.progress["step"] == 4 and "loss" in job.progress
    with session_scope(settings.database_url) as db:  # trained in a fresh process, relayed to the job
        events = db.scalars(sa.select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert "starting the training process" in events and any(e.startswith("feature cache ready") for e in events)
    client = tracking.client(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`latentops.job_id` = '{job_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["rank"] == "4" and run.data.params["base_model_hash"] and run.data.params["dataset_hash"]
    assert run.data.params["distributed_type"] == "NO"  # one process: no process group, no DDP wrapper
    assert {"loss", "lr", "step_time_s", "images_per_s", "peak_memory_mb"} <= set(run.data.metrics)
    versions = client.search_model_versions("name = 'lora-pattern'")
    assert len(versions) == 1 and versions[0].tags["latentops.job_id"] == str(job_id)
    assert json.loads(versions[0].tags["latentops.policy_decision_ids"])
    assert tracking.aliases(settings.mlflow_tracking_uri, "lora-pattern") == {"candidate": "1"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lora", "samples", "config.json", "manifest.json", "lora_model"} <= artifacts
    mlmodel = Path(client.download_artifacts(run.info.run_id, "lora_model/MLmodel")).read_text()
    assert "diffusers:" in mlmodel and "adapter_type: lora" in mlmodel

    # Completing again (a later attempt of the same job) reuses the run, the version and the row.
    from latentops.pipelines.finetune.lora import TrainingResult

    result_json = json.loads((settings.jobs_dir / str(job_id) / "out" / "result.json").read_text())
    result = TrainingResult(**{**result_json, **{k: Path(result_json[k]) for k in ("out_dir", "weights_path")},
                               "kohya_path": None, "samples": [], "sample_grid": None})
    tracker = tracking.MlflowTracker(tracking_uri=settings.mlflow_tracking_uri, base_model_path=settings.model_store,
                                     registered_name="lora-pattern", out_dir=result.out_dir, job_id=job_id)
    from latentops.pipelines.finetune.config import build_config

    tracker.start(config=build_config(SETTINGS), meta={}, resumed_from=4)
    tracker.finish(result=result)
    assert tracker.run_id == run.info.run_id and tracker.model_version == "1"
    assert len(client.search_model_versions("name = 'lora-pattern'")) == 1
    with session_scope(settings.database_url) as db:
        again = finetune.register_adapter(db, name="pattern", version_id=1, job_id=job_id, team=None, result=result,
                                          model_uri=None, actor="test")
        assert again.version == 1
        assert db.scalar(sa.select(sa.func.count(LoraAdapter.id))) == 1

    # Production needs an approver: a submitter is refused, the console admin approves.
    with pytest.raises(PolicyDenied), session_scope(settings.database_url) as db:
        adapters.promote(db, settings=settings, name="pattern", version=1, actor="sam@example.com")
    assert "production" not in tracking.aliases(settings.mlflow_tracking_uri, "lora-pattern")
    promoted = cli("finetune", "promote", "pattern", "--version", "1")
    assert promoted.returncode == 0, promoted.stderr
    assert tracking.aliases(settings.mlflow_tracking_uri, "lora-pattern") == {"candidate": "1", "production": "1"}
    with session_scope(settings.database_url) as db:
        adapter = db.scalar(sa.select(LoraAdapter))
        assert adapter is not None and adapter.aliases == ["candidate", "production"]
        entry = db.scalar(sa.select(AuditEntry).where(AuditEntry.action == "lora.promote"))
        assert entry is not None
        details = json.loads(entry.details)
        assert details["approved_by"].startswith("cli:") and details["policy_decision_id"]


@pytest.mark.one_backend
@pytest.mark.slow
def test_finetune_run_in_process_stops_and_resumes_from_a_toml_config(catalogue, instances: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    job = tmp_path / "job.toml"
    job.write_text(f'[finetune]\nmodel = "tiny"\ninstance-dir = "{instances}"\ninstance-prompt = "a sks pattern"\n'
                   'steps = 4\nrank = 4\nresolution = 32\ncheckpoint-every = 2\nvalidation-steps = 1\n'
                   'attest-licence = true\nattest-consent = true\n')
    out = tmp_path / "out"
    first = cli("finetune", "run", "--config", str(job), "--out", str(out), "--stop-after", "2", "--no-track")
    assert first.returncode == 0, first.stderr
    assert "stopped after step 2" in first.stdout
    second = cli("finetune", "run", "--config", str(job), "--out", str(out), "--resume", "--no-track", "--json")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["resumed_from"] == 2 and result["steps"] == 4 and result["adapter"] == "tiny-lora"
    refused = cli("finetune", "run", "--config", str(job), "--out", str(tmp_path / "o2"), "--rank", "0")
    assert refused.returncode == 1 and "rank:" in refused.stderr


def test_the_console_uses_a_model_through_a_grant_to_the_team_it_names(queue_settings, catalogue, instances: Path) -> None:  # type: ignore[no-untyped-def]
    settings = queue_settings
    with pytest.raises(PolicyDenied, match="no grant lets you use model 'internal-tiny'"):
        submit_finetune(settings, actor=CONSOLE, request=_request(instances, model="internal-tiny", team="design"))
    with session_scope(settings.database_url) as db:
        users.get_or_create_team(db, name="vision", actor=CONSOLE)
        grants_service.grant(db, model="internal-tiny", action="use", actor=CONSOLE, team="vision")
    with pytest.raises(PolicyDenied, match="no grant lets you use model 'internal-tiny'"):  # the grant is vision's
        submit_finetune(settings, actor=CONSOLE, request=_request(instances, model="internal-tiny", team="design"))
    job_id = submit_finetune(settings, actor=CONSOLE, request=_request(instances, model="internal-tiny", team="vision"))
    with session_scope(settings.database_url) as db:
        decision = db.scalars(sa.select(PolicyDecision).where(PolicyDecision.path == "jobs").order_by(PolicyDecision.id.desc())).first()
        assert decision is not None and decision.allow and decision.input_masked["subject"]["acting_for"] == "vision"
        assert jobs.get(db, job_id).kind == "finetune"
