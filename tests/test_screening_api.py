"""``/api/v1/screening`` against the real database and a real (tiny) CLIP detector: compliance officers
see per category what screens images and the threshold in force; they calibrate the thresholds on an
uploaded labelled set (CSV or JSON Lines with ``file`` and ``label``), which stores a new, audited
policy-data revision; a labelled set without its label column is refused naming the column, with
nothing stored; submitters get 403. The SDK calls the same routes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user
from fastapi.testclient import TestClient
from PIL import Image
from portal_helpers import serving
from test_screening import picture, tiny_clip_files  # noqa: F401  (a fixture)

from latentops.client import Client, InvalidInput, PolicyDenied
from latentops.governance import identities, nsfwjs, screening
from latentops.governance.detectors import CATEGORIES
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, PolicyDataEdit


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    image: Image.Image = picture(seed, 96)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _labelled(count: int = 30) -> tuple[list[tuple[str, bytes]], list[dict[str, str]]]:
    """``count`` images, every third labelled weapons, the rest benign."""
    images = [(f"{i}.png", _png(100 + i)) for i in range(count)]
    rows = [{"file": name, "label": "weapons" if i % 3 == 0 else "none"} for i, (name, _) in enumerate(images)]
    return images, rows


def _csv(rows: list[dict[str, str]], columns: tuple[str, ...] = ("file", "label")) -> bytes:
    return ("\n".join([",".join(columns), *(",".join(row.get(c, "") for c in columns) for row in rows)]) + "\n").encode()


def _post(api: TestClient, who: dict[str, str], labels: tuple[str, bytes], images: list[tuple[str, bytes]],
          target_fpr: float = 0.1) -> Any:
    files = [("labels", (labels[0], labels[1], "text/plain"))] + [("images", (n, d, "image/png")) for n, d in images]
    return api.post("/api/v1/screening/calibrate", headers=who, files=files, data={"target_fpr": str(target_fpr)})


def _stored(database_url: str) -> list[str]:
    with session_scope(database_url) as session:
        return list(session.scalars(sa.select(PolicyDataEdit.key).order_by(PolicyDataEdit.id)))


@pytest.fixture
def with_clip(settings_env, database_url: str, tiny_clip_files, fresh_policy, tmp_path: Path,  # type: ignore[no-untyped-def]  # noqa: F811
              monkeypatch: pytest.MonkeyPatch):
    """The tiny CLIP imported as the only detector (no converted nsfwjs where screening looks by default)."""
    monkeypatch.setenv(nsfwjs.ENV_DIR, str(tmp_path / "no-nsfwjs"))
    config, weights = tiny_clip_files
    with session_scope(database_url) as db:
        screening.import_clip(db, settings=settings_env, arch="tiny-clip", weights=weights, config=config, actor="cli:test")
    return settings_env


@pytest.fixture
def people_with_clip(with_clip) -> dict[str, str]:  # type: ignore[no-untyped-def]
    url = with_clip.database_url
    return {"carol": make_user(url, "carol@example.com", "compliance_officer", "compliance"),
            "alice": make_user(url, "alice@example.com", "submitter", "design")}


def test_status_shows_per_category_the_detectors_and_threshold(with_clip, people_with_clip) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(with_clip))
    status = api.get("/api/v1/screening/status", headers=bearer(people_with_clip["carol"]))
    assert status.status_code == 200
    report = status.json()
    assert report["detectors"] == ["clip"] and report["real_detector"] is True and report["uncovered"] == []
    rows = {row["category"]: row for row in report["categories"]}
    assert list(rows) == list(CATEGORIES)
    assert rows["weapons"] == {"category": "weapons", "detectors": ["clip"], "covered": True, "threshold": 0.7}
    assert rows["sexual"]["threshold"] == 0.5
    refused = api.get("/api/v1/screening/status", headers=bearer(people_with_clip["alice"]))
    assert refused.status_code == 403 and refused.json()["error"] == "policy_denied"
    assert api.get("/api/v1/screening/status").status_code == 401


def test_calibration_on_an_uploaded_csv_stores_an_audited_revision(with_clip, people_with_clip) -> None:  # type: ignore[no-untyped-def]
    url, carol = with_clip.database_url, bearer(people_with_clip["carol"])
    api = TestClient(create_app(with_clip))
    images, rows = _labelled()
    done = _post(api, carol, ("labels.csv", _csv(rows)), images + [("extra.png", _png(7))])
    assert done.status_code == 201, done.text
    report = done.json()
    assert list(report["categories"]) == ["weapons"] and report["images"] == 30 and report["unlabelled"] == ["extra.png"]
    fit = report["categories"]["weapons"]
    assert fit["positives"] == 10 and fit["negatives"] == 20 and fit["fpr"] <= 0.1
    status = api.get("/api/v1/screening/status", headers=carol).json()
    assert {r["category"]: r["threshold"] for r in status["categories"]}["weapons"] == fit["threshold"]
    assert status["thresholds"]["sexual"] == 0.5  # not labelled: unchanged
    history = api.get("/api/v1/policies/data/history", headers=carol).json()["items"]
    assert history[0]["key"] == "screening.thresholds" and history[0]["actor"] == "carol@example.com"
    assert history[0]["note"] == "calibrated on 30 images at target FPR 0.1" and history[0]["revision"] == report["revision"]
    with session_scope(url) as session:
        carol = identities.stored_actor(session, "carol@example.com")
        actions = list(session.scalars(sa.select(AuditEntry.action).where(AuditEntry.actor == carol)))
    assert "policy.data.edit" in actions and "screening.calibrate" in actions


def test_a_labelled_set_without_its_label_column_is_refused_naming_it(with_clip, people_with_clip) -> None:  # type: ignore[no-untyped-def]
    url, carol = with_clip.database_url, bearer(people_with_clip["carol"])
    api = TestClient(create_app(with_clip))
    images, rows = _labelled(6)
    cases = [
        (("labels.csv", _csv([{**r, "category": r["label"]} for r in rows], ("file", "category"))),
         "labels: column 'label' is missing in labels.csv (columns: category, file)"),
        (("labels.jsonl", "\n".join(json.dumps({"file": r["file"], "class": r["label"]}) for r in rows).encode()),
         "labels: column 'label' is missing in labels.jsonl (line 1)"),
        (("labels.csv", _csv([{"file": "0.png", "label": "dragons"}])),
         "labels: line 2: column 'label' names unknown categories dragons"),
        (("labels.csv", _csv([{"file": r["file"], "label": "none"} for r in rows])), "labels: column 'label' names no category"),
    ]
    for labels, message in cases:
        refused = _post(api, carol, labels, images)
        assert refused.status_code == 422 and refused.json()["detail"].startswith(message), refused.json()
    assert _stored(url) == []
    assert _post(api, bearer(people_with_clip["alice"]), ("labels.csv", _csv(rows)), images).status_code == 403


def test_the_sdk_reads_status_and_calibrates_from_jsonl(with_clip, people_with_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images, rows = _labelled(12)
    labels = tmp_path / "set.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with serving(create_app(with_clip)) as base:
        with Client(base, people_with_clip["carol"]) as api:
            assert api.screening.status()["coverage"]["weapons"] == ["clip"]
            report = api.screening.calibrate(labels, images, target_fpr=0.2)
            assert report["categories"]["weapons"]["positives"] == 4 and report["categories"]["weapons"]["fpr"] <= 0.2
            with pytest.raises(InvalidInput, match="labels: column 'label' is missing"):
                api.screening.calibrate(("l.csv", b"file,class\n0.png,weapons\n"), images)
        with Client(base, people_with_clip["alice"]) as api, pytest.raises(PolicyDenied):
            api.screening.status()
    assert _stored(with_clip.database_url) == ["screening.thresholds"]


def test_the_console_calibrates_on_a_server_with_its_own_labels_file(  # type: ignore[no-untyped-def]
        with_clip, people_with_clip, cli, tmp_path: Path) -> None:
    """``screening calibrate --server``: the console's ``file,<category>,...`` labels go as they are,
    with the images they name; a bad row is refused here, before anything is uploaded."""
    images, rows = _labelled(12)
    folder = tmp_path / "set"
    folder.mkdir()
    for name, data in images:
        (folder / name).write_bytes(data)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,weapons,sexual\n" + "".join(f"{r['file']},{int(r['label'] == 'weapons')},0\n" for r in rows)
                      + "gone.png,0,0\n", encoding="utf-8")
    with serving(create_app(with_clip)) as base:
        env = {"LATENTOPS_SERVER": base, "LATENTOPS_TOKEN": people_with_clip["carol"]}
        bad = tmp_path / "bad.csv"
        bad.write_text("file,weapons\n0.png,2\n", encoding="utf-8")
        refused = cli("screening", "calibrate", "--images", str(folder), "--labels", str(bad), env=env)
        assert refused.returncode == 1 and refused.stderr.strip() == (
            "InvalidInput: labels: line 2 must have a file name and 0 or 1 for each of weapons")
        assert _stored(with_clip.database_url) == []
        done = cli("screening", "calibrate", "--images", str(folder), "--labels", str(labels), "--target-fpr", "0.2",
                   "--json", env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["categories"]["weapons"]["positives"] == 4 and report["categories"]["weapons"]["fpr"] <= 0.2
        assert report["categories"]["sexual"]["positives"] == 0  # a column with no positive is fitted on negatives
        assert [f["file"] for f in report["failures"]] == ["gone.png"]  # named, not here: the server says so
    assert _stored(with_clip.database_url) == ["screening.thresholds"]
