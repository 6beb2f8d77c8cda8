"""Calibration: fitting per-category screening thresholds on a labelled set of images.

``latentops screening calibrate --images DIR --labels labels.csv --target-fpr 0.01`` scores every
labelled image with the detectors in force and, per category, picks the lowest threshold whose
false-positive rate on the negatives is at most the target (a benign image is flagged when its
score is at or above the threshold, as in the screening policy). It reports FPR and FNR per
category and writes the thresholds as a new policy-data revision (``screening.thresholds``)
through the policy module, which audits the edit; a ``screening.calibrate`` entry records the
report.

``labels.csv`` has a header ``file,<category>,...`` with one row per image and ``0``/``1`` per
category column (``1``: the image belongs to the category). Categories without a column keep
their thresholds. A category needs at least one negative to be fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import audit, labelled_sets, policy, screening
from latentops.governance.imagefile import load_image

BATCH = 16


@dataclass
class CategoryFit:
    category: str
    threshold: float
    fpr: float
    fnr: float | None
    positives: int
    negatives: int


@dataclass
class CalibrationReport:
    fits: list[CategoryFit]
    revision: str
    detector: str
    images: int
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "detector": self.detector, "images": self.images, "failures": self.failures,
                "categories": {f.category: {"threshold": f.threshold, "fpr": f.fpr, "fnr": f.fnr,
                                            "positives": f.positives, "negatives": f.negatives} for f in self.fits}}


def read_labels(path: Path) -> tuple[list[str], dict[str, dict[str, int]]]:
    """``(categories, {file: {category: 0|1}})`` from ``labels.csv``, refusing bad rows by line."""
    return labelled_sets.read_label_columns(str(path), labelled_sets.read_label_file(path))


def fit_threshold(negatives: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold that flags at most ``target_fpr`` of ``negatives`` (score >= threshold flags)."""
    allowed = math.floor(target_fpr * len(negatives) + 1e-9)
    if allowed >= len(negatives):
        return 0.0
    ordered = np.sort(negatives)[::-1]
    # Flag at most `allowed` negatives: the threshold sits one step (scores carry 6 decimals)
    # above the highest negative that must pass.
    return float(min(1.0, round(float(ordered[allowed]) + 1e-6, 6)))


def calibrate(session: Session, *, settings: Settings, images: Path, labels: Path, target_fpr: float,
              actor: audit.Actor | str) -> CalibrationReport:
    """Fit, report and store thresholds (module docstring)."""
    if not 0 <= target_fpr < 1:
        raise InvalidInput(f"target_fpr: must be at least 0 and below 1 (got {target_fpr})")
    if not images.is_dir():
        raise InvalidInput(f"images: {images} is not a folder")
    categories, table = read_labels(labels)
    found = screening.active_detectors(settings)
    if not found:
        raise InvalidInput(f"detectors: {screening.NO_DETECTOR_WARNING}; there is nothing to calibrate")
    names, pictures, failures = [], [], []
    for name in sorted(table):
        try:
            pictures.append(load_image(images / name, name=name))
            names.append(name)
        except InvalidInput as error:
            failures.append({"file": name, "reason": error.detail})
    if not pictures:
        raise InvalidInput(f"images: none of the labelled files could be read ({failures[0]['reason'] if failures else ''})")
    label, scores = "", []
    for start in range(0, len(pictures), BATCH):
        label, rows = screening.score_content(pictures[start:start + BATCH], found)
        scores.extend(rows)
    thresholds = dict(policy.policy_data("screening.thresholds"))
    fits = []
    for category in categories:
        values = np.array([row.get(category, 0.0) for row in scores], dtype=np.float64)
        truth = np.array([table[name][category] for name in names], dtype=bool)
        if not (~truth).any():
            raise InvalidInput(f"labels: category {category} has no negative images; its false-positive rate cannot be fitted")
        threshold = fit_threshold(values[~truth], target_fpr)
        fpr = float((values[~truth] >= threshold).mean())
        fnr = float((values[truth] < threshold).mean()) if truth.any() else None
        fits.append(CategoryFit(category, threshold, fpr, fnr, int(truth.sum()), int((~truth).sum())))
        thresholds[category] = threshold
    revision = policy.set_policy_data(session, key="screening.thresholds", value=thresholds, actor=actor,
                                      note=f"calibrated on {len(names)} images at target FPR {target_fpr}")
    report = CalibrationReport(fits, revision, label, len(names), failures)
    audit.record(session, actor=actor, action="screening.calibrate", resource="policy_data:screening.thresholds",
                 details={"target_fpr": target_fpr, **report.to_json()})
    return report
