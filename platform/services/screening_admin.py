"""Screening administration shared by the REST API and the portal: the status report per
category, and calibration of the thresholds on an uploaded labelled set.

Calibration fits the per-category thresholds with the detectors in force, as ``latentops
screening calibrate`` does, and stores them as a new policy-data revision (audited). The labels
are CSV with a header or JSON Lines, one row per image with a ``file`` and a ``label`` column; a
missing column is refused naming it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.governance import calibration, labelled_sets, screening

MAX_CALIBRATION_FILES = 2000


def status_report(settings: Any) -> dict[str, Any]:
    """``screening.status`` with one row per category: covering detectors and threshold in force."""
    report = screening.status(settings)
    thresholds = report.get("thresholds") or {}
    report["categories"] = [{"category": category, "detectors": covering, "covered": bool(covering),
                             "threshold": thresholds.get(category)} for category, covering in report["coverage"].items()]
    return report


def status_shown(settings: Any) -> dict[str, Any]:
    """``status_report`` for a page: a broken screening configuration is shown (``{"error": ...}``), not a 500."""
    try:
        return status_report(settings)
    except LatentopsError as error:
        return {"error": error.detail}


def upload_name(filename: str | None, index: int) -> str:
    """An uploaded file's base name (never a path on this machine)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    if not name or name in {".", ".."}:
        raise InvalidInput(f"images[{index}]: the file has no name; the labels match images by file name")
    if any(ord(c) < 32 for c in name) or len(name.encode()) > 200:
        raise InvalidInput(f"images[{index}]: the file name {name[:80]!r} has control characters or is over 200 bytes")
    return name


def calibrate_upload(session: Any, settings: Any, *, labels: tuple[str, bytes], images: list[tuple[str, bytes]],
                     target_fpr: float, actor: str) -> dict[str, Any]:
    """Calibrate on uploaded files; ``labels`` is (file name, bytes), ``images`` (name, bytes) pairs."""
    if not 0 <= target_fpr < 1:
        raise InvalidInput(f"target_fpr: must be at least 0 and below 1 (got {target_fpr})")
    categories, table = labelled_sets.read_labelled_set(*labels)
    if not images:
        raise InvalidInput("images: upload the labelled images")
    if len(images) > MAX_CALIBRATION_FILES:
        raise InvalidInput(f"images: at most {MAX_CALIBRATION_FILES} files per calibration (got {len(images)})")
    with tempfile.TemporaryDirectory(prefix="latentops-calibrate-") as folder:
        root = Path(folder)
        (root / "images").mkdir()
        for name, data in images:
            (root / "images" / name).write_bytes(data)
        labels_csv = labelled_sets.write_labels_csv(categories, table, root / "labels.csv")
        report = calibration.calibrate(session, settings=settings, images=root / "images", labels=labels_csv,
                                       target_fpr=target_fpr, actor=actor)
    payload = report.to_json()
    payload["unlabelled"] = sorted({name for name, _ in images} - set(table))
    return payload
