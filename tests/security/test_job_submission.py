"""Job submission is typed and built on the server: no route takes a job's internal params.

Each server-derived field (actor, team ids, output paths, weights, version and dataset ids, the
fine-tune's upload folders) is smuggled through every route that queues work (``/jobs`` with each
kind, ``/generations``, ``/datasets``, ``/finetune``): each answers 422 naming the field, and
nothing is stored or written. Nonsense numbers are refused the same way. A job row whose params
were changed in the database after the server built them is failed by the real executor, with
the field named, before its handler runs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user, team_id
from fastapi.testclient import TestClient
from generation_helpers import catalogue
from PIL import Image

from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import jobs as jobs_service
from latentops.platform.tables import Asset, Dataset, Job, JobState, LoraAdapter, User

pytestmark = pytest.mark.redis

SPEC: dict[str, Any] = {"name": "shapes", "model": "tiny", "per_class": 2, "steps": 1, "batch_size": 2,
                        "classes": [{"name": "square", "prompts": ["a photo of a {name}"]}]}
GENERATION: dict[str, Any] = {"model": "tiny", "prompt": "a red square", "steps": 1}


@pytest.fixture
def world(queue_settings, source: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The tiny public model; erin (research) submits; marketing owns a dataset record as a victim."""
    catalogue(queue_settings, source)
    url = queue_settings.database_url
    people = {"erin": make_user(url, "erin@example.com", "data_scientist", "research"),
              "mara": make_user(url, "mara@example.com", "data_scientist", "marketing")}
    victim_path = queue_settings.artifacts_dir / "datasets" / "1-victim"
    with session_scope(url) as db:
        victim = Dataset(name="victim", team_id=team_id(url, "marketing"), spec={}, format="imagefolder",
                         path=str(victim_path), state="ready", stats={"images": 7})
        db.add(victim)
        db.flush()
        victim_id = victim.id
    return {"api": TestClient(create_app(queue_settings)), "people": people, "victim": victim_id,
            "victim_path": str(victim_path), "settings": queue_settings}


def _png() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _nothing_stored(world: dict[str, Any], written: Path | None = None) -> None:
    settings = world["settings"]
    with session_scope(settings.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0
        assert db.scalar(sa.select(sa.func.count(Dataset.id))) == 1  # the victim alone
        victim = db.get(Dataset, world["victim"])
        assert victim is not None and (victim.path, victim.state, victim.stats) == (
            world["victim_path"], "ready", {"images": 7})
    if written is not None:
        assert not written.exists()


def _refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "reasons"} and field in body["detail"], body


def test_each_server_derived_field_is_refused_by_every_route(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api, erin = world["api"], bearer(world["people"]["erin"])
    target = tmp_path / "escaped"
    smuggled: dict[str, Any] = {
        "actor": "mara@example.com", "team_id": 1, "out": str(target), "path": str(target),
        "weights": {"path": str(target), "content_hash": "0" * 64, "family": "sd1", "format": "diffusers"},
        "version_id": 1, "dataset_id": world["victim"], "instance_dir": str(target), "class_dir": str(target),
        "adapter_team": "marketing", "owner_id": 1,
    }
    for field, value in smuggled.items():
        # POST /jobs with each client kind, and with the internal params of each internal kind.
        _refused(api.post("/api/v1/jobs", json={"kind": "generate", "params": {**GENERATION, field: value}}, headers=erin),
                 f"params.{field}")
        _refused(api.post("/api/v1/jobs", json={"kind": "dataset", "params": {**SPEC, field: value}}, headers=erin),
                 field)
        _refused(api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {"steps": 1, field: value}},
                          headers=erin), f"params.{field}")
        _refused(api.post("/api/v1/jobs", json={"kind": "generate", "params": {**GENERATION, "team": "research"},
                                                field: value}, headers=erin), field)
        # The dedicated routes.
        _refused(api.post("/api/v1/generations", json={**GENERATION, field: value}, headers=erin), field)
        _refused(api.post("/api/v1/datasets", json={**SPEC, field: value}, headers=erin), field)
        _refused(api.post("/api/v1/finetune", headers=erin, files=[("images", ("a.png", _png(), "image/png"))],
                          data={"model": "tiny", "instance_prompt": "a sks mug", "attest_licence": "true",
                                "attest_consent": "true", "params": json.dumps({field: value})}), field)
    # The internal params the worker runs, as they were accepted before: refused whole.
    internal = {
        "dataset": {"spec": SPEC, "dataset_id": world["victim"], "out": str(target), "actor": "mara@example.com"},
        "generate": {"model": "tiny", "prompts": ["a red square"], "team": "marketing", "actor": "mara@example.com"},
    }
    for kind, params in internal.items():
        response = api.post("/api/v1/jobs", json={"kind": kind, "params": params}, headers=erin)
        assert response.status_code == 422 and "params." in response.json()["detail"], response.text
    finetune = api.post("/api/v1/jobs", json={"kind": "finetune", "params": {
        "config": {"instance_prompt": "x"}, "weights": smuggled["weights"], "version_id": 1,
        "instance_dir": str(target), "adapter_name": "stolen", "team": "marketing"}}, headers=erin)
    _refused(finetune, "/api/v1/finetune")
    _nothing_stored(world, target)
    assert not (tmp_path / "escaped").exists() and not Path(world["victim_path"]).exists()


def test_nonsense_numbers_are_refused_naming_the_field(world) -> None:  # type: ignore[no-untyped-def]
    api, erin = world["api"], bearer(world["people"]["erin"])
    generation_cases = [("steps", 10**9), ("n", -1), ("seed", -1), ("guidance", "nan"), ("guidance", "inf"),
                        ("guidance", "-Infinity"), ("steps", "many"), ("n", 10**9)]
    for field, value in generation_cases:
        _refused(api.post("/api/v1/generations", json={**GENERATION, field: value}, headers=erin), field)
        _refused(api.post("/api/v1/jobs", json={"kind": "generate", "params": {**GENERATION, field: value}},
                          headers=erin), f"params.{field}")
    # A literal NaN in the JSON text (Python's parser accepts it) is refused as well.
    raw = json.dumps({**GENERATION, "guidance": float("nan")})
    _refused(api.post("/api/v1/generations", content=raw, headers={**erin, "Content-Type": "application/json"}),
             "guidance")
    for field, value in [("steps", 10**9), ("seed", -1), ("step_delay_s", "nan"), ("steps", "many")]:
        _refused(api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {field: value}}, headers=erin),
                 f"params.{field}")
    dataset_cases = [("per_class", -1), ("per_class", 10**9), ("steps", 10**9), ("seed", -1), ("guidance", "nan"),
                     ("guidance", "inf"), ("height", -8), ("batch_size", "many")]
    for field, value in dataset_cases:
        _refused(api.post("/api/v1/datasets", json={**SPEC, field: value}, headers=erin), field)
        _refused(api.post("/api/v1/jobs", json={"kind": "dataset", "params": {**SPEC, field: value}}, headers=erin),
                 field)
    for field, value in [("steps", 10**9), ("rank", -4), ("seed", -1), ("lr", "nan"), ("steps", "many")]:
        _refused(api.post("/api/v1/finetune", headers=erin, files=[("images", ("a.png", _png(), "image/png"))],
                          data={"model": "tiny", "instance_prompt": "a sks mug", "attest_licence": "true",
                                "attest_consent": "true", "params": json.dumps({field: value})}), field)
    _refused(api.post("/api/v1/finetune", headers=erin, files=[("images", ("a.png", _png(), "image/png"))],
                      data={"model": "tiny", "params": "[" * 5000 + "]" * 5000}), "params")
    _nothing_stored(world)


def _stored_job(settings: Any, *, kind: str, params: dict[str, Any], owner: str, team: str) -> int:
    """A job row written straight into the database, as an attacker with write access would."""
    with session_scope(settings.database_url) as db:
        owner_id = db.scalar(sa.select(User.id).where(User.email == owner))
        job = Job(kind=kind, queue="gpu", params=params, owner_id=owner_id,
                  team_id=team_id(settings.database_url, team))
        db.add(job)
        db.flush()
        return int(job.id)


def _failed_naming(settings: Any, job_id: int, field: str) -> None:
    assert jobs_service.execute(settings, job_id=job_id, worker="test") == JobState.FAILED
    with session_scope(settings.database_url) as db:
        job = db.get(Job, job_id)
        assert job is not None and job.state == JobState.FAILED and field in (job.error or ""), job.error
        assert db.scalar(sa.select(sa.func.count(Asset.id))) == 0  # nothing was generated
        assert db.scalar(sa.select(sa.func.count(LoraAdapter.id))) == 0  # nothing was registered


def test_the_worker_refuses_params_changed_after_the_server_built_them(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, api, erin = world["settings"], world["api"], bearer(world["people"]["erin"])
    good = {"model": "tiny", "prompts": ["a red square"], "images_per_prompt": 1, "seed": 0, "steps": 1,
            "guidance_scale": 5.0, "team": "research", "actor": "erin@example.com"}
    tampered = [
        ({**good, "steps": 10**9}, "params.steps"),
        ({**good, "guidance_scale": "nan"}, "params.guidance_scale"),
        ({**good, "seed": -1}, "params.seed"),
        ({**good, "actor": "mara@example.com"}, "params.actor"),
        ({**good, "team": "marketing"}, "params.team"),
        ({**good, "out": str(tmp_path / "x")}, "params.out"),
    ]
    for params, field in tampered:
        _failed_naming(settings, _stored_job(settings, kind="generate", params=params, owner="erin@example.com",
                                             team="research"), field)
    # A dataset job queued properly, then repointed at another team's record, or at another folder.
    created = api.post("/api/v1/datasets", json=SPEC, headers=erin)
    assert created.status_code == 201, created.text
    ids = created.json()
    with session_scope(settings.database_url) as db:
        job = db.get(Job, ids["job_id"])
        assert job is not None
        built = dict(job.params)
        assert Path(built["out"]).is_relative_to(settings.artifacts_dir / "datasets") and built["actor"] == "erin@example.com"
        job.params = {**built, "dataset_id": world["victim"]}
    _failed_naming(settings, ids["job_id"], "params.dataset_id")
    escaped = tmp_path / "escaped"
    dataset_cases = [({**built, "out": str(escaped)}, "params.out"),
                     ({**built, "actor": "mara@example.com"}, "params.actor"),
                     ({**built, "spec": {**SPEC, "per_class": 10**9}}, "params.spec.per_class")]
    for params, field in dataset_cases:
        with session_scope(settings.database_url) as db:
            job = db.get(Job, ids["job_id"])
            assert job is not None
            job.params, job.state, job.error, job.attempts = params, JobState.QUEUED, None, 0
        _failed_naming(settings, ids["job_id"], field)
    assert not escaped.exists()
    # A fine-tune row with weights from elsewhere and another team's registration.
    with session_scope(settings.database_url) as db:
        version = db.execute(sa.text("SELECT id, content_hash, path FROM model_versions")).first()
        assert version is not None
    finetune = {"config": {"instance_prompt": "a sks mug", "steps": 1}, "version_id": version[0],
                "weights": {"content_hash": version[1], "path": str(tmp_path / "weights"), "family": "sd1",
                            "format": "diffusers"},
                "instance_dir": str(settings.artifacts_dir / "finetune-uploads" / "x"), "class_dir": None,
                "adapter_name": "stolen", "team": "research", "lineage": {}}
    _failed_naming(settings, _stored_job(settings, kind="finetune", params=finetune, owner="erin@example.com",
                                         team="research"), "params.weights")
    marketing = {**finetune, "weights": {**finetune["weights"], "path": version[2]}, "team": "marketing"}
    _failed_naming(settings, _stored_job(settings, kind="finetune", params=marketing, owner="erin@example.com",
                                         team="research"), "params.team")
    outside = {**finetune, "weights": {**finetune["weights"], "path": version[2]}, "instance_dir": str(tmp_path)}
    _failed_naming(settings, _stored_job(settings, kind="finetune", params=outside, owner="erin@example.com",
                                         team="research"), "params.instance_dir")
    with session_scope(settings.database_url) as db:
        victim = db.get(Dataset, world["victim"])
        assert victim is not None and (victim.path, victim.state) == (world["victim_path"], "ready")


def test_typed_requests_still_queue_and_run(world) -> None:  # type: ignore[no-untyped-def]
    """The legitimate path through /jobs: the same builder as /generations, run by the real handler."""
    settings, api, erin = world["settings"], world["api"], bearer(world["people"]["erin"])
    queued = api.post("/api/v1/jobs", json={"kind": "generate", "params": GENERATION}, headers=erin)
    assert queued.status_code == 201, queued.text
    job = queued.json()
    assert job["kind"] == "generate" and job["team"] == "research"
    with session_scope(settings.database_url) as db:
        stored = db.get(Job, job["id"])
        assert stored is not None and stored.params["actor"] == "erin@example.com" and stored.params["team"] == "research"
    assert jobs_service.execute(settings, job_id=job["id"], worker="test") == JobState.SUCCEEDED
    twice = api.post("/api/v1/jobs", json={"kind": "generate", "team": "research",
                                           "params": {**GENERATION, "team": "marketing"}}, headers=erin)
    _refused(twice, "team")
    dataset = api.post("/api/v1/jobs", json={"kind": "dataset", "params": SPEC}, headers=erin)
    assert dataset.status_code == 201, dataset.text
    assert dataset.json()["kind"] == "dataset" and dataset.json()["dataset_id"] > world["victim"]
    assert jobs_service.execute(settings, job_id=dataset.json()["id"], worker="test") == JobState.SUCCEEDED
    with session_scope(settings.database_url) as db:
        result = db.get(Job, dataset.json()["id"]).result  # type: ignore[union-attr]
    # Job results name files relative to the dataset's folder, never by a server path.
    assert result["out"] == Path(result["out"]).name and not Path(result["manifest"]).is_absolute()
    assert str(settings.home) not in json.dumps(result)


def test_a_refused_upload_does_not_show_the_servers_staging_path(world) -> None:  # type: ignore[no-untyped-def]
    api, erin, settings = world["api"], bearer(world["people"]["erin"]), world["settings"]
    refused = api.post("/api/v1/finetune", headers=erin, files=[("images", ("a.png", b"not an image", "image/png"))],
                       data={"model": "tiny", "instance_prompt": "a sks mug", "attest_licence": "true",
                             "attest_consent": "true"})
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["detail"].startswith("images: the upload holds no valid training image"), body
    assert body["reasons"] and body["reasons"][0].startswith("a.png: ")
    assert str(settings.home) not in refused.text and "/uploads/" not in refused.text
    _nothing_stored(world)
