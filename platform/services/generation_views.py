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

from latentops.core.errors import LatentopsError, NotFound
from latentops.governance.access import Principal
from latentops.platform.services.job_requests import visible_adapter
from latentops.platform.services.jobs.views import job_json, visible_job
from latentops.platform.tables import Asset, LoraAdapter, ModelRecord, ModelVersion


def generation_json(session: Session, principal: Principal, job_id: int) -> dict[str, Any]:
    job = visible_job(session, principal, job_id)
    if job.kind != "generate":
        raise NotFound(f"generation: no generation with job id {job_id}")
    assets = session.scalars(sa.select(Asset).where(Asset.job_id == job.id).order_by(Asset.id)).all()
    return {"job": job_json(session, job),
            "images": [{"asset_id": a.id, "seed": a.seed, "status": a.status,
                        "url": f"/api/v1/assets/{a.id}/image" if a.status == "released" else None} for a in assets]}


def request_view(params: dict[str, Any]) -> dict[str, Any]:
    """What a person asked a generation for, from the job's parameters (no actor, paths or ids)."""
    return {"model": params.get("model"), "lora": params.get("lora"), "prompts": list(params.get("prompts") or []),
            "negative_prompt": params.get("negative_prompt"), "n": params.get("images_per_prompt"),
            "seed": params.get("seed"), "steps": params.get("steps"), "guidance": params.get("guidance_scale")}


def usable_adapters(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The LoRA adapters the caller may generate with, newest version first within a name, each with
    its reference (``NAME@VERSION``) and the base model it was trained on."""
    rows = session.execute(
        sa.select(LoraAdapter, ModelRecord.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == LoraAdapter.base_version_id)
        .join(ModelRecord, ModelRecord.id == ModelVersion.model_id)
        .where(LoraAdapter.removed_at.is_(None), ModelRecord.removed_at.is_(None))
        .order_by(LoraAdapter.name, LoraAdapter.version.desc())).all()
    allowed: dict[str, bool] = {}
    adapters = []
    for adapter, model, model_version in rows:
        if adapter.name not in allowed:
            try:
                visible_adapter(session, principal, ref=adapter.name, action="generations.create")
                allowed[adapter.name] = True
            except LatentopsError:
                allowed[adapter.name] = False
        if allowed[adapter.name]:
            adapters.append({"ref": f"{adapter.name}@{adapter.version}", "name": adapter.name, "version": adapter.version,
                             "model": model, "model_version": model_version, "job_id": adapter.job_id,
                             "aliases": list(adapter.aliases or [])})
    return adapters


def adapter_of_job(session: Session, job_id: int) -> dict[str, Any] | None:
    """The adapter a finished fine-tune registered (its reference and base model), or None."""
    row = session.execute(
        sa.select(LoraAdapter, ModelRecord.name).join(ModelVersion, ModelVersion.id == LoraAdapter.base_version_id)
        .join(ModelRecord, ModelRecord.id == ModelVersion.model_id)
        .where(LoraAdapter.job_id == job_id, LoraAdapter.removed_at.is_(None))).first()
    if row is None:
        return None
    adapter, model = row
    return {"ref": f"{adapter.name}@{adapter.version}", "name": adapter.name, "version": adapter.version, "model": model}
