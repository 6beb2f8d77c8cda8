"""``/api/v1/assets``: generated images (released ones) and their record, with team isolation.

An image of another team answers 404 like a missing one. Only released images have pixels here;
a quarantined or rejected image is reviewed through ``/quarantine`` by compliance officers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.governance.access import Principal
from latentops.platform.api.deps import PrincipalDep, SessionDep
from latentops.platform.services import teams
from latentops.platform.tables import Asset

router = APIRouter(tags=["assets"])


def visible_asset(session: Session, principal: Principal, asset_id: int) -> Asset:
    return teams.visible_row(session, principal, Asset, asset_id, action="assets.read",
                             missing=f"asset: no image with id {asset_id}")


@router.get("/assets/{asset_id}")
def show(asset_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """An image's record: status, seed, model, provenance and the audit entry that released it."""
    asset = visible_asset(session, principal, asset_id)
    return {"id": asset.id, "status": asset.status, "purpose": asset.purpose, "job_id": asset.job_id,
            "dataset_id": asset.dataset_id, "seed": asset.seed, "width": asset.width, "height": asset.height,
            "content_hash": asset.content_hash, "model_version_id": asset.model_version_id,
            "lora_adapter_id": asset.lora_adapter_id, "provenance": asset.provenance, "audit_seq": asset.audit_seq,
            "created_at": asset.created_at.isoformat() if asset.created_at else None}


@router.get("/assets/{asset_id}/image", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def image(asset_id: int, session: SessionDep, principal: PrincipalDep) -> Response:
    """The released image (signed PNG with its C2PA manifest and watermark)."""
    asset = visible_asset(session, principal, asset_id)
    if asset.status != "released" or not asset.path or not Path(asset.path).is_file():
        raise NotFound(f"asset: image {asset_id} is not released")
    return Response(content=Path(asset.path).read_bytes(), media_type="image/png")
