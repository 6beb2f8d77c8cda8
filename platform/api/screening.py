"""``/api/v1/screening``: what screens images, and calibration of the thresholds, over HTTP.

* ``GET /screening/status``: the detectors in force and, per content category, the detectors
  covering it and the threshold in force (``screening.status``, what ``latentops screening status``
  prints), with the categories no detector covers and what policy does with them.
* ``POST /screening/calibrate`` (multipart: ``labels``, ``images``, ``target_fpr``): fits the
  per-category thresholds on an uploaded labelled set with the detectors in force, as
  ``latentops screening calibrate`` does, and stores them as a new policy-data revision (audited
  ``policy.data.edit`` and ``screening.calibrate``). ``labels`` is CSV with a header or JSON Lines
  (``.jsonl``), one row per image with a ``file`` and a ``label`` column
  (``labelled_sets.read_labelled_set``); ``images`` are the labelled files, matched by name. A missing
  column is refused naming it; labelled files that are not uploaded or not readable are listed
  under ``failures`` while the rest are fitted.

Who may call is the access policy's decision: ``screening.read`` and ``screening.calibrate``
(compliance officers and admins).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from latentops.governance import access
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services.screening_admin import calibrate_upload, status_report, upload_name

router = APIRouter(tags=["screening"])


@router.get("/screening/status")
def status(session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """The detectors in force and, per category, what covers it and its threshold."""
    access.check(session, principal=principal, action="screening.read")
    return status_report(settings)


@router.post("/screening/calibrate", status_code=201)
def calibrate(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
              labels: Annotated[UploadFile, File(description="CSV or JSON Lines: one row per image, columns file and label.")],
              images: Annotated[list[UploadFile], File(description="The labelled images, matched by file name.")],
              target_fpr: Annotated[float, Form(ge=0, lt=1, description="Highest false-positive rate per category.")] = 0.01,
              ) -> dict[str, Any]:
    """Fit per-category thresholds on an uploaded labelled set; a new policy-data revision (audited)."""
    access.check(session, principal=principal, action="screening.calibrate")
    uploads = [(upload_name(upload.filename, i), upload.file.read()) for i, upload in enumerate(images)]
    return calibrate_upload(session, settings, labels=(labels.filename or "labels.csv", labels.file.read()),
                            images=uploads, target_fpr=target_fpr, actor=principal.email)
