"""``/api/v1/screening``: what screens images, and calibration of the thresholds, over HTTP.

* ``GET /screening/status``: the detectors in force and, per content category, the detectors
  covering it and the threshold in force (``screening.status``, what ``latentops screening status``
  prints), with the categories no detector covers and what policy does with them.
* ``POST /screening/calibrate`` (multipart: ``labels``, ``images``, ``target_fpr``): fits the
  per-category thresholds on an uploaded labelled set with the detectors in force, as
  ``latentops screening calibrate`` does, and stores them as a new policy-data revision (audited
  ``policy.data.edit`` and ``screening.calibrate``). ``labels`` is CSV with a header or JSON Lines
  (``.jsonl``), one row per image with a ``file`` and a ``label`` column
  (``screening.read_labelled_set``); ``images`` are the labelled files, matched by name. A missing
  column is refused naming it; labelled files that are not uploaded or not readable are listed
  under ``failures`` while the rest are fitted.

Who may call is the access policy's decision: ``screening.read`` and ``screening.calibrate``
(compliance officers and admins).
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from latentops.core.errors import InvalidInput
from latentops.governance import access, calibration, screening
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep

router = APIRouter(tags=["screening"])
MAX_CALIBRATION_FILES = 2000


def status_report(settings: Any) -> dict[str, Any]:
    """``screening.status`` with one row per category: covering detectors and threshold in force."""
    report = screening.status(settings)
    thresholds = report.get("thresholds") or {}
    report["categories"] = [{"category": category, "detectors": covering, "covered": bool(covering),
                             "threshold": thresholds.get(category)} for category, covering in report["coverage"].items()]
    return report


@router.get("/screening/status")
def status(session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """The detectors in force and, per category, what covers it and its threshold."""
    access.check(session, principal=principal, action="screening.read")
    return status_report(settings)


def _file_name(upload: UploadFile, index: int) -> str:
    """The upload's base name (never a path on this machine)."""
    name = PurePosixPath((upload.filename or "").replace("\\", "/")).name.strip()
    if not name or name in {".", ".."}:
        raise InvalidInput(f"images[{index}]: the file has no name; the labels match images by file name")
    if any(ord(c) < 32 for c in name) or len(name.encode()) > 200:
        raise InvalidInput(f"images[{index}]: the file name {name[:80]!r} has control characters or is over 200 bytes")
    return name


def calibrate_upload(session: Any, settings: Any, *, labels: tuple[str, bytes], images: list[tuple[str, bytes]],
                     target_fpr: float, actor: str) -> dict[str, Any]:
    """Calibrate on uploaded files (module docstring); the portal's form calls this too."""
    if not 0 <= target_fpr < 1:
        raise InvalidInput(f"target_fpr: must be at least 0 and below 1 (got {target_fpr})")
    categories, table = screening.read_labelled_set(*labels)
    if not images:
        raise InvalidInput("images: upload the labelled images")
    if len(images) > MAX_CALIBRATION_FILES:
        raise InvalidInput(f"images: at most {MAX_CALIBRATION_FILES} files per calibration (got {len(images)})")
    with tempfile.TemporaryDirectory(prefix="latentops-calibrate-") as folder:
        root = Path(folder)
        (root / "images").mkdir()
        for name, data in images:
            (root / "images" / name).write_bytes(data)
        labels_csv = screening.write_labels_csv(categories, table, root / "labels.csv")
        report = calibration.calibrate(session, settings=settings, images=root / "images", labels=labels_csv,
                                       target_fpr=target_fpr, actor=actor)
    payload = report.to_json()
    payload["unlabelled"] = sorted({name for name, _ in images} - set(table))
    return payload


@router.post("/screening/calibrate", status_code=201)
def calibrate(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
              labels: Annotated[UploadFile, File(description="CSV or JSON Lines: one row per image, columns file and label.")],
              images: Annotated[list[UploadFile], File(description="The labelled images, matched by file name.")],
              target_fpr: Annotated[float, Form(ge=0, lt=1, description="Highest false-positive rate per category.")] = 0.01,
              ) -> dict[str, Any]:
    """Fit per-category thresholds on an uploaded labelled set; a new policy-data revision (audited)."""
    access.check(session, principal=principal, action="screening.calibrate")
    uploads = [(_file_name(upload, i), upload.file.read()) for i, upload in enumerate(images)]
    return calibrate_upload(session, settings, labels=(labels.filename or "labels.csv", labels.file.read()),
                            images=uploads, target_fpr=target_fpr, actor=principal.email)
