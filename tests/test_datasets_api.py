"""REST and portal for generation and datasets: decisions before queueing, team isolation, the job
run by the real handler, released images and an audited dataset download."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user
from fastapi.testclient import TestClient
from generation_helpers import catalogue, tiny_source

from latentops.governance import identities
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import jobs as jobs_service
from latentops.platform.tables import AuditEntry, Job

SPEC = {"name": "shapes", "model": "tiny", "per_class": 2, "steps": 1, "batch_size": 2,
        "classes": [{"name": "square", "prompts": ["a photo of a {name}"]}]}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("models"))


@pytest.fixture
def people(queue_settings, source: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    catalogue(queue_settings, source)
    url = queue_settings.database_url
    return {"erin": make_user(url, "erin@example.com", "data_scientist", "research"),
            "sam": make_user(url, "sam@example.com", "submitter", "design"),
            "carol": make_user(url, "carol@example.com", "compliance_officer", "compliance")}


def _run_job(settings, job_id: int) -> None:  # type: ignore[no-untyped-def]
    assert jobs_service.execute(settings, job_id=job_id, worker="test") is not None


@pytest.mark.redis
def test_generation_is_decided_before_queueing_and_returns_released_images(queue_settings, people) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(queue_settings))
    denied = api.post("/api/v1/generations", json={"model": "tiny", "prompt": "a nude person"}, headers=bearer(people["sam"]))
    assert denied.status_code == 403 and denied.json()["reasons"][0].startswith("prompt.")
    with session_scope(queue_settings.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0
    bad = api.post("/api/v1/generations", json={"model": "tiny", "prompt": "x", "n": 0}, headers=bearer(people["sam"]))
    assert bad.status_code == 422 and "n" in bad.json()["detail"]
    made = api.post("/api/v1/generations", json={"model": "tiny@latest", "prompt": "a red square", "n": 2, "steps": 1},
                    headers=bearer(people["sam"]))
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    _run_job(queue_settings, job_id)
    shown = api.get(f"/api/v1/generations/{job_id}", headers=bearer(people["sam"])).json()
    assert shown["job"]["state"] == "succeeded" and [i["status"] for i in shown["images"]] == ["released"] * 2
    image = api.get(shown["images"][0]["url"], headers=bearer(people["sam"]))
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    # Another team's generation is not found.
    assert api.get(f"/api/v1/generations/{job_id}", headers=bearer(people["erin"])).status_code == 404


@pytest.mark.redis
def test_dataset_job_via_api_card_and_audited_download(queue_settings, people) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(queue_settings))
    refused = api.post("/api/v1/datasets", json={**SPEC, "per_class": 0}, headers=bearer(people["erin"]))
    assert refused.status_code == 422 and "per_class" in refused.json()["detail"]
    submitter = api.post("/api/v1/datasets", json=SPEC, headers=bearer(people["sam"]))
    assert submitter.status_code == 403  # the access policy: submitters do not create datasets
    created = api.post("/api/v1/datasets", json=SPEC, headers=bearer(people["erin"]))
    assert created.status_code == 201, created.text
    ids = created.json()
    _run_job(queue_settings, ids["job_id"])
    shown = api.get(f"/api/v1/datasets/{ids['dataset_id']}", headers=bearer(people["erin"])).json()
    assert shown["state"] == "ready" and shown["stats"]["images"] == 2 and shown["team"] == "research"
    assert "# shapes" in api.get(f"/api/v1/datasets/{ids['dataset_id']}/card", headers=bearer(people["erin"])).text
    assert api.get(f"/api/v1/datasets/{ids['dataset_id']}", headers=bearer(people["sam"])).status_code == 404
    download = api.get(f"/api/v1/datasets/{ids['dataset_id']}/download", headers=bearer(people["erin"]))
    assert download.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert "shapes/croissant.json" in names and "shapes/train/metadata.jsonl" in names
    assert not any(".latentops" in n for n in names)
    with session_scope(queue_settings.database_url) as db:
        assert db.scalar(sa.select(AuditEntry.actor).where(AuditEntry.action == "dataset.export")) == identities.stored_actor(
            db, "erin@example.com")
    # The portal pages render the list and the dataset card.
    page = api.get("/datasets", headers=bearer(people["erin"]))
    assert page.status_code == 200 and "shapes" in page.text and "Queue dataset" in page.text
    detail = api.get(f"/datasets/{ids['dataset_id']}", headers=bearer(people["erin"]))
    assert detail.status_code == 200 and "Download (zip)" in detail.text and "Dataset card" in detail.text
    generate = api.get("/generate", headers=bearer(people["erin"]))
    assert generate.status_code == 200 and '<option value="tiny">' in generate.text
