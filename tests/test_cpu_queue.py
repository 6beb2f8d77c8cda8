"""The ``cpu`` queue's kinds through a real Redis broker and real worker processes: a worker started
with ``--queues cpu`` runs a copyright index, an audit export and a dataset package to the end with
progress while a ``gpu`` job submitted beside them waits for a gpu worker; bad input and callers
without the role are refused before anything is queued."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user, team_id
from fastapi.testclient import TestClient
from test_jobs_queue import wait_finished
from test_screening import _png, picture

from latentops.core.errors import Conflict, InvalidInput
from latentops.governance import integration
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import cpu_jobs, jobs
from latentops.platform.tables import AuditEntry, CopyrightReference, Dataset, Job, JobState

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CPU_JOB_TIMEOUT_S = 180.0
WORKS = 30  # more than one INDEX_BATCH, so progress moves more than once


@pytest.fixture
def api(queue_settings, fresh_policy) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(queue_settings))


def make_dataset(settings: Any, *, team: str, state: str = "ready", name: str = "digits-aug") -> int:
    """A dataset as the dataset job leaves it: ImageFolder splits with metadata, manifest, card and
    the run's working files (which a package leaves out)."""
    with session_scope(settings.database_url) as db:
        row = Dataset(name=name, team_id=team_id(settings.database_url, team), format="imagefolder", state=state,
                      path="", stats={"images": 6}, spec={})
        db.add(row)
        db.flush()
        root = settings.artifacts_dir / "datasets" / f"{row.id}-{name}"
        row.path = str(root)
        dataset_id = row.id
    for split, count in (("train", 4), ("validation", 2)):
        rows = []
        for k in range(count):
            label = "seven" if k % 2 else "one"
            (root / split / label).mkdir(parents=True, exist_ok=True)
            picture(k + (10 if split == "validation" else 0), 32).save(root / split / label / f"{k:06d}.png")
            rows.append({"file_name": f"{label}/{k:06d}.png", "label": label, "prompt": f"a digit {label}", "seed": k})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "croissant.json").write_text(json.dumps({"name": name}))
    (root / "README.md").write_text(f"# {name}\n")
    (root / ".latentops").mkdir()
    (root / ".latentops" / "run.json").write_text("{}")
    return dataset_id


def _files(count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    works = [(f"work-{i:02d}.png", _png(picture(2000 + i, 96))) for i in range(count - 1)]
    works.append(("notes.txt", b"not an image"))
    return [("files", (name, data, "application/octet-stream")) for name, data in works]


def _audit_actions(url: str, prefix: str) -> list[str]:
    with session_scope(url) as db:
        integration.catch_up(db)  # the worker's last entries may still be pending
        return list(db.scalars(sa.select(AuditEntry.action).where(AuditEntry.action.like(prefix + "%"))
                               .order_by(AuditEntry.seq)))


def test_a_cpu_worker_runs_each_cpu_kind_while_a_gpu_job_waits(  # type: ignore[no-untyped-def]
        api, queue_settings, people, start_worker, tmp_path: Path) -> None:
    url = queue_settings.database_url
    dataset_id = make_dataset(queue_settings, team="design")
    start_worker(queues="cpu")
    carol, alice = bearer(people["carol"]), bearer(people["alice"])
    erin = bearer(make_user(url, "erin@example.com", "data_scientist", "design"))  # may export design's datasets

    gpu = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {"steps": 2}}, headers=alice)
    assert gpu.status_code == 201, gpu.text
    index = api.post("/api/v1/copyright/references/jobs", files=_files(WORKS),
                     data={"owner": "Acme Pictures", "licence": "all rights reserved"}, headers=carol)
    assert index.status_code == 201, index.text
    export = api.post("/api/v1/audit/exports", params={"format": "csv", "name": "trail.csv"}, headers=carol)
    assert export.status_code == 201, export.text
    package = api.post(f"/api/v1/datasets/{dataset_id}/packages", headers=erin)
    assert package.status_code == 201, package.text
    assert [index.json()["queue"], export.json()["queue"], package.json()["queue"]] == ["cpu"] * 3
    assert gpu.json()["queue"] == "gpu"

    # The copyright index: every file read, the non-image listed with its reason, progress in files.
    indexed = wait_finished(url, index.json()["id"], timeout=CPU_JOB_TIMEOUT_S)
    assert indexed.state == JobState.SUCCEEDED, indexed.error
    assert indexed.progress["step"] == indexed.progress["total"] == WORKS and indexed.progress["percent"] == 100.0
    assert indexed.progress["added"] == WORKS - 1
    assert indexed.result["added"] == WORKS - 1 and indexed.result["failed"] == 1
    assert indexed.result["failures"][0]["file"].endswith("notes.txt")
    with session_scope(url) as db:
        owners = list(db.scalars(sa.select(CopyrightReference.owner)))
    assert owners == ["Acme Pictures"] * (WORKS - 1)
    assert _audit_actions(url, "copyright.") == ["copyright.index.queue", "copyright.reference.add",
                                                 "copyright.reference.add"]

    # The audit export: the same zip as POST /audit/export, downloaded once the job succeeded.
    exported = wait_finished(url, export.json()["id"], timeout=CPU_JOB_TIMEOUT_S)
    assert exported.state == JobState.SUCCEEDED, exported.error
    assert exported.progress["step"] == exported.progress["total"] == 3 and exported.progress["entries"] > 0
    download = api.get(f"/api/v1/audit/exports/{exported.id}", headers=carol)
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == ["trail.csv", "trail.csv.proofs.json"]
        proofs = json.loads(archive.read("trail.csv.proofs.json"))
        assert proofs["entries"] == exported.result["entries"] == len(archive.read("trail.csv").splitlines()) - 1
    assert api.get(f"/api/v1/audit/exports/{exported.id}", headers=alice).status_code == 403
    assert api.get(f"/api/v1/audit/exports/{index.json()['id']}", headers=carol).status_code == 404

    # The dataset package: splits, manifest and card at the zip's root, the run's files left out,
    # and it loads in one line of Hugging Face datasets.
    packaged = wait_finished(url, package.json()["id"], timeout=CPU_JOB_TIMEOUT_S)
    assert packaged.state == JobState.SUCCEEDED, packaged.error
    assert packaged.progress["step"] == packaged.progress["total"] == packaged.result["files"] == 10
    # A submitter of the team may read the dataset but not take it (the datasets policy's export).
    refused = api.get(f"/api/v1/datasets/{dataset_id}/packages/{packaged.id}", headers=alice)
    assert refused.status_code == 403 and refused.json()["reasons"][0].startswith("datasets.role:")
    got = api.get(f"/api/v1/datasets/{dataset_id}/packages/{packaged.id}", headers=erin)
    assert got.status_code == 200, got.text
    path = tmp_path / "package.zip"
    path.write_bytes(got.content)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert {"croissant.json", "README.md", "train/metadata.jsonl"} <= set(names)
    assert not any(".latentops" in name for name in names)
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_files={s: f"zip://{s}/**::{path}" for s in ("train", "validation")},
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded["train"].num_rows == 4 and loaded["validation"].num_rows == 2
    assert sorted(loaded["train"]["prompt"]) == ["a digit one", "a digit one", "a digit seven", "a digit seven"]
    # Another team's member may not take it: the package is answered like a missing dataset.
    assert api.get(f"/api/v1/datasets/{dataset_id}/packages/{packaged.id}",
                   headers=bearer(people["bob"])).status_code == 404
    assert _audit_actions(url, "dataset.") == ["dataset.package", "dataset.export"]

    # The gpu job was never taken by the cpu worker; a gpu worker runs it.
    with session_scope(url) as db:
        assert jobs.get(db, gpu.json()["id"]).state == JobState.QUEUED
    start_worker(queues="gpu")
    assert wait_finished(url, gpu.json()["id"], timeout=CPU_JOB_TIMEOUT_S).state == JobState.SUCCEEDED


def test_bad_input_and_callers_without_the_role_are_refused_before_anything_is_queued(  # type: ignore[no-untyped-def]
        api, queue_settings, people, tmp_path: Path) -> None:
    url = queue_settings.database_url
    carol, alice = bearer(people["carol"]), bearer(people["alice"])
    empty = tmp_path / "texts"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with session_scope(url) as db, pytest.raises(InvalidInput, match=r"^folder: .*/missing does not exist$"):
        cpu_jobs.submit_copyright_index(db, queue_settings, actor="cli:op", folder=tmp_path / "missing",
                                        owner="Acme", licence="CC-BY-4.0")
    with session_scope(url) as db, pytest.raises(InvalidInput, match=r"^folder: .*/texts holds no images"):
        cpu_jobs.submit_copyright_index(db, queue_settings, actor="cli:op", folder=empty, owner="Acme",
                                        licence="CC-BY-4.0")
    with session_scope(url) as db, pytest.raises(InvalidInput, match="^owner: must be 1 to 200 characters$"):
        cpu_jobs.submit_copyright_index(db, queue_settings, actor="cli:op", folder=empty, owner=" ", licence="x")
    with session_scope(url) as db, pytest.raises(InvalidInput, match="^format: must be jsonl or csv"):
        cpu_jobs.submit_audit_export(db, queue_settings, actor="cli:op", fmt="xml", filters={})

    form = {"owner": "Acme", "licence": "all rights reserved"}
    denied = api.post("/api/v1/copyright/references/jobs", files=_files(2), data=form, headers=alice)
    assert denied.status_code == 403 and denied.json()["reasons"][0].startswith("access.role:")
    texts = [("files", ("a.txt", b"text", "text/plain"))]
    no_images = api.post("/api/v1/copyright/references/jobs", files=texts, data=form, headers=carol)
    assert no_images.status_code == 422 and no_images.json()["detail"].startswith("folder: ")
    assert "holds no images" in no_images.json()["detail"]
    assert not any((queue_settings.artifacts_dir / cpu_jobs.UPLOADS_DIR).iterdir())  # the staged files went
    assert api.post("/api/v1/audit/exports", headers=alice).status_code == 403
    bad_time = api.post("/api/v1/audit/exports", params={"since": "yesterday"}, headers=carol)
    assert bad_time.status_code == 422 and bad_time.json()["detail"].startswith("since: "), bad_time.text
    bad_name = api.post("/api/v1/audit/exports", params={"name": "../x"}, headers=carol)
    assert bad_name.status_code == 422 and bad_name.json()["detail"].startswith("name: ")

    pending = make_dataset(queue_settings, team="design", state="running", name="pending")
    assert api.post(f"/api/v1/datasets/{pending}/packages", headers=alice).status_code == 409
    with session_scope(url) as db, pytest.raises(Conflict, match=f"^dataset {pending} is running"):
        cpu_jobs.submit_dataset_package(db, queue_settings, actor="cli:op", dataset_id=pending)
    ready = make_dataset(queue_settings, team="design", name="ready")
    assert api.post(f"/api/v1/datasets/{ready}/packages", headers=bearer(people["bob"])).status_code == 404

    with session_scope(url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0


def test_the_console_queues_each_cpu_kind_and_writes_the_files(  # type: ignore[no-untyped-def]
        start_worker, queue_settings, people, cli, tmp_path: Path) -> None:
    url = queue_settings.database_url
    start_worker(queues="cpu")
    works = tmp_path / "works"
    works.mkdir()
    for i in range(3):
        picture(3000 + i, 96).save(works / f"w{i}.png")
    missing = cli("copyright", "add", str(tmp_path / "nowhere"), "--owner", "Acme", "--licence", "x", "--queue")
    assert missing.returncode != 0 and "folder: " in missing.stderr and "does not exist" in missing.stderr
    queued = cli("copyright", "add", str(works), "--owner", "Acme", "--licence", "x", "--queue", "--json")
    assert queued.returncode == 0, queued.stderr
    (job_id,) = json.loads(queued.stdout)["jobs"]
    watched = cli("jobs", "watch", str(job_id))
    assert watched.returncode == 0 and "succeeded 100.0%" in watched.stdout, watched.stdout + watched.stderr
    with session_scope(url) as db:
        assert db.scalar(sa.select(sa.func.count(CopyrightReference.id))) == 3

    out = tmp_path / "evidence" / "trail.jsonl"
    exported = cli("audit", "export", "--out", str(out), "--queue")
    assert exported.returncode == 0, exported.stderr
    assert "on the cpu queue" in exported.stdout and "succeeded 100.0%" in exported.stdout
    proofs = json.loads(out.with_name("trail.jsonl.proofs.json").read_text())
    assert proofs["entries_file"] == "trail.jsonl" and proofs["entries"] == len(out.read_text().splitlines()) > 0

    dataset_id = make_dataset(queue_settings, team="design")
    packaged = cli("datasets", "package", str(dataset_id), "--out", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    with zipfile.ZipFile(tmp_path / f"digits-aug-{dataset_id}.zip") as archive:
        assert "croissant.json" in archive.namelist()
