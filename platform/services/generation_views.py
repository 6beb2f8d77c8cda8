"""What a caller may see of a generation: the ``generate`` job and its images.

Shared by ``GET /api/v1/generations/{job_id}`` and the portal's generation pages. The job is
team-isolated like every job (``jobs.views.visible_job``); another kind of job is ``NotFound``,
like a missing generation. Released images carry their download URL, quarantined ones only
their asset id.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.governance.access import Principal
from latentops.platform.services.jobs.views import job_json, visible_job
from latentops.platform.tables import Asset


def generation_json(session: Session, principal: Principal, job_id: int) -> dict[str, Any]:
    job = visible_job(session, principal, job_id)
    if job.kind != "generate":
        raise NotFound(f"generation: no generation with job id {job_id}")
    assets = session.scalars(sa.select(Asset).where(Asset.job_id == job.id).order_by(Asset.id)).all()
    return {"job": job_json(session, job),
            "images": [{"asset_id": a.id, "seed": a.seed, "status": a.status,
                        "url": f"/api/v1/assets/{a.id}/image" if a.status == "released" else None} for a in assets]}
