"""The portal's pages for compliance officers and admins: audit, quarantine, models and grants, users.

Each page asks the access policy like its REST twin and calls the same services; the submitter's
and data scientist's pages are in ``web.pages``.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.governance import access, checkpoints, compliance, policy, quarantine
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services import audit_trail, memberships
from latentops.platform.services import grants as grants_service
from latentops.platform.services import models as models_service
from latentops.platform.services import users as users_service
from latentops.platform.tables import ModelRecord, Role, Team
from latentops.platform.web.pages import prompt_check
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)
ROLES = [role.value for role in Role]


# --- audit and quarantine -----------------------------------------------------------------------

AUDIT_FIELDS = ("since", "until", "actor", "action", "resource", "outcome")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep, principal: PortalUser,
               after: int | None = Query(default=None, ge=-1), limit: int = Query(default=25, ge=1, le=200)) -> HTMLResponse:
    access.check(session, principal=principal, action="audit.read")
    values = {name: (request.query_params.get(name) or "").strip()[:400] for name in AUDIT_FIELDS}
    error, page = "", None
    try:
        filters = audit_trail.filters_of(**{k: v or None for k, v in values.items()})
        page = compliance.query(session, filters=filters, after=after, limit=limit)
    except InvalidInput as problem:
        error = problem.detail
    query = "&".join(f"{k}={v}" for k, v in values.items() if v)
    latest = checkpoints.latest(session)
    return render(request, "audit.html", session=session, principal=principal, filters=values, error=error,
                  entries=page.entries if page else [], next_after=page.next_after if page else None,
                  query=query, latest=latest, can_export=access.allowed(session, principal=principal, action="audit.export"))


@router.post("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser) -> HTMLResponse:
    access.check(session, principal=principal, action="audit.verify")
    report = audit_trail.verify_report(session, settings, principal)
    return render(request, "fragments/verify.html", report=report)


@router.get("/quarantine", response_class=HTMLResponse)
def quarantine_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                    status: str = Query(default="quarantined", pattern="^(quarantined|rejected|released)$")) -> HTMLResponse:
    access.check(session, principal=principal, action="quarantine.review")
    items = quarantine.list_quarantined(session, actor=principal.email, status=status, limit=100)
    return render(request, "quarantine.html", session=session, principal=principal, items=items, status=status,
                  screening_status=_screening_status(settings))


def _screening_status(settings: Any) -> dict[str, Any]:
    """What screens images (detectors, coverage per category, uncovered ones); a broken configuration is shown."""
    from latentops.governance import screening

    try:
        return screening.status(settings)
    except LatentopsError as error:
        return {"error": error.detail}


@router.post("/quarantine/{asset_id}/{verdict}", response_class=HTMLResponse)
def quarantine_review(asset_id: int, verdict: str, request: Request, session: SessionDep, settings: SettingsDep,
                      principal: PortalUser, reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    access.check(session, principal=principal, action="quarantine.review")
    if verdict == "release":
        quarantine.release(session, settings=settings, asset_id=asset_id, reason=reason, actor=principal.email)
    elif verdict == "reject":
        quarantine.reject(session, asset_id=asset_id, reason=reason, actor=principal.email)
    else:
        raise InvalidInput(f"verdict: must be release or reject, got {verdict!r}")
    return RedirectResponse("/quarantine", status_code=303)


# --- models and grants --------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, principal: PortalUser, message: str = "") -> HTMLResponse:
    access.check(session, principal=principal, action="models.read")
    rows = session.scalars(sa.select(ModelRecord).where(ModelRecord.removed_at.is_(None)).order_by(ModelRecord.name))
    visible = [r for r in rows if access.allowed(session, principal=principal, action="models.read",
                                                  resource=models_service.resource_of(session, principal, r))]
    can_grant = access.allowed(session, principal=principal, action="grants.read")
    models = []
    for record in visible:
        item = models_service.summary_json(session, record)
        item["grants"] = grants_service.list_grants(session, model=record.name) if can_grant else []
        models.append(item)
    teams = [t.name for t in session.scalars(sa.select(Team).order_by(Team.name))]
    return render(request, "models.html", session=session, principal=principal, models=models, teams=teams,
                  can_grant=can_grant and access.allowed(session, principal=principal, action="grants.manage"),
                  actions=policy.policy_data("models.actions"), message=message[:200])


@router.post("/models/{name}/grants", response_class=HTMLResponse)
def grant_model(name: str, request: Request, session: SessionDep, principal: PortalUser,
                action: Annotated[str, Form(max_length=32)], team: Annotated[str, Form(max_length=100)]) -> Response:
    record = models_service.visible_model(session, principal, name, "grants.manage")
    grants_service.grant(session, model=record.name, action=action, actor=principal.user, team=team)
    return RedirectResponse(f"/models?message=granted+{action}+on+{record.name}+to+team+{team}", status_code=303)


@router.post("/models/{name}/revoke", response_class=HTMLResponse)
def revoke_model(name: str, request: Request, session: SessionDep, principal: PortalUser,
                 action: Annotated[str, Form(max_length=32)], team: Annotated[str, Form(max_length=100)]) -> Response:
    record = models_service.visible_model(session, principal, name, "grants.manage")
    grants_service.revoke(session, model=record.name, action=action, actor=principal.user, team=team)
    return RedirectResponse(f"/models?message=revoked+{action}+on+{record.name}+from+team+{team}", status_code=303)


# --- admin --------------------------------------------------------------------------------------


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, session: SessionDep, principal: PortalUser, message: str = "") -> HTMLResponse:
    access.check(session, principal=principal, action="users.read")
    users = [memberships.describe(session, u) for u in users_service.list_users(session, limit=500)]
    policy.get_service().refresh(session)
    return render(request, "admin.html", session=session, principal=principal, users=users,
                  teams=memberships.list_teams(session), roles=ROLES, status=policy.status(),
                  can_manage=access.allowed(session, principal=principal, action="users.manage"),
                  message=message[:200])


@router.post("/admin/users", response_class=HTMLResponse)
def admin_create_user(request: Request, session: SessionDep, principal: PortalUser,
                      email: Annotated[str, Form(max_length=320)], team: Annotated[str, Form(max_length=63)],
                      role: Annotated[str, Form(max_length=32)], password: Annotated[str, Form(max_length=1024)] = ""
                      ) -> Response:
    access.check(session, principal=principal, action="users.manage")
    user = users_service.create_user(session, email=email, role=role, team=team, password=password or None,
                                     actor=principal.email)
    return RedirectResponse(f"/admin?message=created+{user.email}", status_code=303)


@router.post("/admin/memberships", response_class=HTMLResponse)
def admin_membership(request: Request, session: SessionDep, principal: PortalUser,
                     user_id: Annotated[int, Form()], team: Annotated[str, Form(max_length=63)],
                     role: Annotated[str, Form(max_length=32)]) -> Response:
    access.check(session, principal=principal, action="users.manage")
    memberships.set_membership(session, user_id=user_id, team=team, role=role, actor=principal.email)
    return RedirectResponse("/admin?message=membership+saved", status_code=303)


@router.post("/admin/prompt-test", response_class=HTMLResponse)
def admin_prompt_test(request: Request, session: SessionDep, principal: PortalUser,
                      prompt: Annotated[str, Form(max_length=20_000)] = "") -> HTMLResponse:
    return prompt_check(request, session, principal, prompt)
