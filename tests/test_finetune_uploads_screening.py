"""Fine-tune uploads are content-screened as generated images are, before anything is accepted.

``POST /api/v1/finetune`` with a real detector (a tiny random-init CLIP imported like real weights)
and thresholds set in policy data so that one picture is flagged and another is not: the flagged
upload is refused naming the file and its category with nothing kept, the clean one is queued, and
every decision is in the audit trail. Without CLIP weights the upload is decided as a generated
image is: held by the policy's rule for unscreened images until policy data releases them.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user
from fastapi.testclient import TestClient
from generation_helpers import catalogue
from PIL import Image
from test_screening import picture, tiny_clip_files  # noqa: F401  (a fixture)

from latentops.governance import policy, screening
from latentops.governance.detectors import CATEGORIES
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, Job, ScreeningResult

FORM = {"model": "tiny", "instance_prompt": "a sks pattern", "attest_licence": "true", "attest_consent": "true",
        "params": json.dumps({"steps": 2, "rank": 4, "resolution": 32})}
FLAGGED, CLEAN = picture(11), picture(12)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _answers(sock: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


@pytest.fixture
def local_broker(settings_env) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A real Redis on the home's default broker socket (the server ``latentops up`` runs), so jobs queue."""
    from latentops.platform import stack
    from latentops.platform.queue.app import celery_app

    sock = settings_env.local_redis_socket
    sock.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([stack.redis_executable(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                                "--appendonly", "no", "--dir", str(sock.parent)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _answers(sock):
        assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    celery_app.cache_clear()
    yield settings_env
    celery_app.cache_clear()
    process.terminate()
    process.wait(30)


@pytest.fixture
def world(local_broker, source: Path, fresh_policy) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The tiny model (policy data as shipped: unscreened images are not released), alice a submitter."""
    catalogue(local_broker, source, release_unscreened=False)
    alice = make_user(local_broker.database_url, "alice@example.com", "submitter", "design")
    return {"api": TestClient(create_app(local_broker)), "alice": bearer(alice), "settings": local_broker}


def _upload(world: dict[str, Any], *images: tuple[str, Image.Image]) -> Any:
    files = [("images", (name, _png(image), "image/png")) for name, image in images]
    return world["api"].post("/api/v1/finetune", headers=world["alice"], data=FORM, files=files)


def _nothing_kept(settings: Any) -> None:
    uploads = settings.home / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert not (settings.artifacts_dir / "finetune-uploads").exists()


def _rows(database_url: str) -> tuple[list[ScreeningResult], list[AuditEntry], int]:
    with session_scope(database_url) as db:
        results = list(db.scalars(sa.select(ScreeningResult).order_by(ScreeningResult.id)))
        entries = list(db.scalars(sa.select(AuditEntry).where(AuditEntry.action.in_(
            ["screening.result", "screening.training_upload"])).order_by(AuditEntry.seq)))
        jobs = int(db.scalar(sa.select(sa.func.count(Job.id))) or 0)
        db.expunge_all()
    return results, entries, jobs


def _flag_one(settings: Any, database_url: str, tiny_clip_files: tuple[Path, Path]) -> str:  # noqa: F811
    """Import the tiny CLIP and put one category's threshold between the two pictures' scores."""
    config, weights = tiny_clip_files
    with session_scope(database_url) as db:
        screening.import_clip(db, settings=settings, arch="tiny-clip", weights=weights, config=config, actor="cli:test")
    detectors = screening.active_detectors(settings)
    _label, (flagged, clean) = screening.score_content([FLAGGED, CLEAN], detectors)
    category = max((c for c in CATEGORIES if c != "sexual"), key=lambda c: flagged[c] - clean[c])
    assert flagged[category] - clean[category] > 1e-5, (flagged, clean)  # the detector tells them apart
    thresholds = {c: 1.0 for c in CATEGORIES} | {category: round((flagged[category] + clean[category]) / 2, 6)}
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.thresholds", value=thresholds, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
    return category


def test_a_flagged_upload_is_refused_naming_the_file_and_a_clean_one_is_queued(  # type: ignore[no-untyped-def]
        world, database_url: str, tiny_clip_files) -> None:  # noqa: F811
    settings = world["settings"]
    category = _flag_one(settings, database_url, tiny_clip_files)
    refused = _upload(world, ("clean.png", CLEAN), ("flagged.png", FLAGGED))
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["error"] == "policy_denied"
    assert body["detail"] == f"training upload refused by content screening: flagged.png ({category})"
    assert body["reasons"] and all(r.startswith(f"flagged.png: {category} score ") for r in body["reasons"])
    _nothing_kept(settings)
    results, entries, jobs = _rows(database_url)
    assert jobs == 0
    assert [(r.source, r.kind, r.verdict) for r in results] == [
        ("clean.png", "training_upload", "release"), ("flagged.png", "training_upload", "quarantine")]
    assert [(e.action, e.outcome) for e in entries] == [
        ("screening.result", "release"), ("screening.result", "quarantine"), ("screening.training_upload", "deny")]
    flagged_entry = json.loads(entries[1].details)
    assert flagged_entry["kind"] == "training_upload" and flagged_entry["detector"].startswith("clip")
    assert f"screening.{category}" in flagged_entry["rule_ids"] and not flagged_entry["unscreened"]
    assert json.loads(entries[2].details) == {"files": 2, "refused": ["flagged.png"],
                                              "results": [results[0].id, results[1].id]}

    accepted = _upload(world, ("clean.png", CLEAN))
    assert accepted.status_code == 201, accepted.text
    results, entries, jobs = _rows(database_url)
    assert jobs == 1 and (results[-1].source, results[-1].verdict) == ("clean.png", "release")
    assert (entries[-1].action, entries[-1].outcome) == ("screening.training_upload", "success")


def test_without_clip_an_upload_is_decided_as_a_generated_image_is(world, database_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = world["settings"]
    with session_scope(database_url) as db:  # the same picture as a generated image
        generated = screening.screen(db, settings=settings, image=CLEAN, actor="cli:test", kind="output")
    held = [(rule, reason) for rule, reason in zip(generated.rule_ids, generated.reasons, strict=True)
            if rule.startswith("screening.")]
    assert held  # policy data as shipped holds what no detector (or not every category) screened
    refused = _upload(world, ("pattern.png", CLEAN))
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"].startswith("training upload refused by content screening: pattern.png (")
    assert refused.json()["reasons"] == [f"pattern.png: {reason}" for _, reason in held]
    _nothing_kept(settings)
    results, _entries, jobs = _rows(database_url)
    assert jobs == 0 and [(r.kind, r.verdict) for r in results] == [("output", "quarantine"),
                                                                     ("training_upload", "quarantine")]
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
    accepted = _upload(world, ("pattern.png", CLEAN))
    assert accepted.status_code == 201, accepted.text
    results, entries, jobs = _rows(database_url)
    assert jobs == 1 and (results[-1].kind, results[-1].verdict) == ("training_upload", "release")
    assert (entries[-1].action, entries[-1].outcome) == ("screening.training_upload", "success")
