"""``/api/v1/quarantine``: compliance review of flagged images: list with scores and reasons, view
the image (the view is audited), release or reject with a reason.

Who may review is the quarantine policy's decision (compliance officers by default); the route
also asks the access policy, so a token needs the ``audit`` scope.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from latentops.governance import access, quarantine
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep

router = APIRouter(tags=["quarantine"])


class Review(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why the image is released or rejected.")


def _asset_json(asset: Any) -> dict[str, Any]:
    return {"asset_id": asset.id, "status": asset.status, "review_reason": asset.review_reason,
            "reviewed_at": asset.reviewed_at.isoformat() if asset.reviewed_at else None}


@router.get("/quarantine")
def list_quarantined(session: SessionDep, principal: PrincipalDep,
                     status: Literal["quarantined", "rejected", "released"] = Query(default="quarantined"),
                     limit: int = Query(default=100, ge=1, le=500)) -> list[dict[str, Any]]:
    """Flagged images with their scores, matches and reasons."""
    access.check(session, principal=principal, action="quarantine.review")
    return quarantine.list_quarantined(session, actor=principal.email, status=status, limit=limit)


@router.get("/quarantine/{asset_id}/image", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def image(asset_id: int, session: SessionDep, principal: PrincipalDep) -> Response:
    """The flagged image's pixels, for review (audited)."""
    access.check(session, principal=principal, action="quarantine.review")
    data = quarantine.quarantined_image(session, asset_id=asset_id, actor=principal.email)
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/quarantine/{asset_id}/release")
def release(asset_id: int, body: Review, session: SessionDep, settings: SettingsDep,
            principal: PrincipalDep) -> dict[str, Any]:
    """Release a flagged image: provenance is applied and the reason kept."""
    access.check(session, principal=principal, action="quarantine.review")
    return _asset_json(quarantine.release(session, settings=settings, asset_id=asset_id, reason=body.reason,
                                          actor=principal.email))


@router.post("/quarantine/{asset_id}/reject")
def reject(asset_id: int, body: Review, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Reject a flagged image: it is kept, marked rejected, never released."""
    access.check(session, principal=principal, action="quarantine.review")
    return _asset_json(quarantine.reject(session, asset_id=asset_id, reason=body.reason, actor=principal.email))
