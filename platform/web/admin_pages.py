"""The portal's pages for admins: models, grants and adapters, users, teams and memberships.

Each page asks the access policy like its REST twin and calls the same services; the compliance
officer's pages (audit, quarantine) are in ``web.compliance_pages``, the submitter's and data
scientist's in ``web.pages`` and ``web.dataset_pages``. Changes that cannot be undone from the page they
start on (revoking a grant, removing a membership, deactivating an account) go through a
confirmation page first. A form refused for its input is shown again with the error and what was
typed (passwords aside).
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, LatentopsError, NotFound
from latentops.governance import access, policy
from latentops.governance.access import Principal
from latentops.platform.api.deps import SessionDep
from latentops.platform.services import grants as grants_service
from latentops.platform.services import memberships
from latentops.platform.services import models as models_service
from latentops.platform.services import users as users_service
from latentops.platform.services.jobs import views as job_views
from latentops.platform.tables import (
    LoraAdapter,
    ModelRecord,
    ModelVersion,
    Role,
    Team,
)
from latentops.platform.web.pages import prompt_check
from latentops.platform.web.portal import PortalUser, render, when

router = APIRouter(include_in_schema=False)
ROLES = [role.value for role in Role]
FORM_ERRORS = (InvalidInput, Conflict, NotFound)


# --- models and grants --------------------------------------------------------------------------


def _models_context(session: Session, principal: Principal) -> dict[str, Any]:
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
    return {"models": models, "teams": teams, "adapters": adapters_for(session, principal, {r.id for r in visible}),
            "can_grant": can_grant and access.allowed(session, principal=principal, action="grants.manage"),
            "actions": policy.policy_data("models.actions")}


def adapters_for(session: Session, principal: Principal, model_ids: set[int]) -> list[dict[str, Any]]:
    """The fine-tuned LoRA adapters the caller may see: on a base model they see, of their teams
    (every team's for a role that sees all teams) or of no team, newest first."""
    team_ids = job_views.visible_team_ids(session, principal, "models.read")
    statement = (sa.select(LoraAdapter, ModelVersion, ModelRecord)
                 .join(ModelVersion, ModelVersion.id == LoraAdapter.base_version_id)
                 .join(ModelRecord, ModelRecord.id == ModelVersion.model_id)
                 .where(LoraAdapter.removed_at.is_(None), ModelRecord.id.in_(model_ids))
                 .order_by(LoraAdapter.created_at.desc(), LoraAdapter.id.desc()).limit(500))
    if team_ids is not None:
        statement = statement.where(sa.or_(LoraAdapter.team_id.is_(None), LoraAdapter.team_id.in_(team_ids)))
    names = users_service.team_names(session)
    return [{"name": adapter.name, "version": adapter.version, "base": f"{record.name} v{version.version}",
             "team": names.get(adapter.team_id or 0), "job_id": adapter.job_id, "aliases": adapter.aliases or [],
             "created_at": when(adapter.created_at), "content_hash": adapter.content_hash}
            for adapter, version, record in session.execute(statement)]


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, principal: PortalUser, message: str = "") -> HTMLResponse:
    access.check(session, principal=principal, action="models.read")
    return render(request, "models.html", session=session, principal=principal, message=message[:200],
                  **_models_context(session, principal))


@router.post("/models/{name}/grants", response_class=HTMLResponse)
def grant_model(name: str, request: Request, session: SessionDep, principal: PortalUser,
                action: Annotated[str, Form(max_length=32)], team: Annotated[str, Form(max_length=100)]) -> Response:
    record = models_service.visible_model(session, principal, name, "grants.manage")
    try:
        _row, created = grants_service.grant_once(session, model=record.name, action=action, actor=principal.user,
                                                  team=team)
    except FORM_ERRORS as error:
        session.rollback()
        return render(request, "models.html", session=session, principal=principal, error=error.detail,
                      status_code=error.status_code, **_models_context(session, principal))
    if not created:
        return RedirectResponse(f"/models?message=team+{team}+already+has+{action}+on+{record.name}%3B+nothing+changed",
                                status_code=303)
    return RedirectResponse(f"/models?message=granted+{action}+on+{record.name}+to+team+{team}", status_code=303)


@router.get("/models/{name}/revoke", response_class=HTMLResponse)
def revoke_confirm(name: str, request: Request, session: SessionDep, principal: PortalUser,
                   action: str = Query(max_length=32), team: str = Query(max_length=100)) -> HTMLResponse:
    """The confirmation step before a grant is revoked."""
    record = models_service.visible_model(session, principal, name, "grants.manage")
    return render(request, "confirm.html", session=session, principal=principal, title="Revoke a grant",
                  question=f"Revoke {action} on {record.name} from team {team}?",
                  consequence=f"Members of {team} lose {action} access to {record.name} at once.",
                  target=f"/models/{record.name}/revoke", fields={"action": action, "team": team},
                  button="Revoke", cancel="/models")


@router.post("/models/{name}/revoke", response_class=HTMLResponse)
def revoke_model(name: str, request: Request, session: SessionDep, principal: PortalUser,
                 action: Annotated[str, Form(max_length=32)], team: Annotated[str, Form(max_length=100)]) -> Response:
    record = models_service.visible_model(session, principal, name, "grants.manage")
    grants_service.revoke(session, model=record.name, action=action, actor=principal.user, team=team)
    return RedirectResponse(f"/models?message=revoked+{action}+on+{record.name}+from+team+{team}", status_code=303)


# --- admin --------------------------------------------------------------------------------------


def _admin(request: Request, session: Session, principal: Principal, *, message: str = "", error: str = "",
           form: str = "", typed: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    access.check(session, principal=principal, action="users.read")
    users = [memberships.describe(session, u) for u in users_service.list_users(session, limit=500)]
    policy.get_service().refresh(session)
    return render(request, "admin.html", session=session, principal=principal, users=users,
                  teams=memberships.list_teams(session), roles=ROLES, status=policy.status(),
                  can_manage=access.allowed(session, principal=principal, action="users.manage"),
                  message=message[:200], error=error, form=form, typed=typed or {}, status_code=status_code)


def _refused(request: Request, session: Session, principal: Principal, error: LatentopsError, *, form: str,
             typed: dict[str, Any]) -> HTMLResponse:
    """The admin page again, after ``error``: nothing of the refused change is kept, what was typed is."""
    session.rollback()
    return _admin(request, session, principal, error=error.detail, form=form, typed=typed,
                  status_code=error.status_code)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, session: SessionDep, principal: PortalUser, message: str = "") -> HTMLResponse:
    return _admin(request, session, principal, message=message)


@router.post("/admin/users", response_class=HTMLResponse)
def admin_create_user(request: Request, session: SessionDep, principal: PortalUser,
                      email: Annotated[str, Form(max_length=320)], team: Annotated[str, Form(max_length=63)] = "",
                      role: Annotated[str, Form(max_length=32)] = "",
                      password: Annotated[str, Form(max_length=1024)] = "") -> Response:
    access.check(session, principal=principal, action="users.manage")
    typed = {"email": email, "team": team, "role": role}
    try:
        if not team:
            raise InvalidInput("team: choose a team (create it first if it is new)")
        user = users_service.create_user(session, email=email, role=role, team=team, password=password or None,
                                         actor=principal.email, create_team=False)
    except FORM_ERRORS as error:
        return _refused(request, session, principal, error, form="create-user", typed=typed)
    return RedirectResponse(f"/admin?message=created+{user.email}", status_code=303)


@router.post("/admin/teams", response_class=HTMLResponse)
def admin_create_team(request: Request, session: SessionDep, principal: PortalUser,
                      name: Annotated[str, Form(max_length=63)] = "") -> Response:
    access.check(session, principal=principal, action="users.manage")
    try:
        team = users_service.create_team(session, name=name, actor=principal.email)
    except FORM_ERRORS as error:
        return _refused(request, session, principal, error, form="create-team", typed={"name": name})
    return RedirectResponse(f"/admin?message=created+team+{team.name}", status_code=303)


@router.post("/admin/memberships", response_class=HTMLResponse)
def admin_membership(request: Request, session: SessionDep, principal: PortalUser,
                     user_id: Annotated[int, Form()], team: Annotated[str, Form(max_length=63)] = "",
                     role: Annotated[str, Form(max_length=32)] = "") -> Response:
    access.check(session, principal=principal, action="users.manage")
    typed = {"user_id": user_id, "team": team, "role": role}
    try:
        if not team:
            raise InvalidInput("team: choose a team")
        memberships.set_membership(session, user_id=user_id, team=team, role=role, actor=principal.email,
                                   create_team=False)
        email = memberships.get_user(session, user_id).email
    except FORM_ERRORS as error:
        return _refused(request, session, principal, error, form="set-role", typed=typed)
    return RedirectResponse(f"/admin?message={email}+is+{role}+in+{team.strip().lower()}", status_code=303)


@router.get("/admin/users/{user_id}/memberships/{team}/remove", response_class=HTMLResponse)
def remove_membership_confirm(user_id: int, team: str, request: Request, session: SessionDep,
                              principal: PortalUser) -> HTMLResponse:
    access.check(session, principal=principal, action="users.manage")
    user = memberships.get_user(session, user_id)
    return render(request, "confirm.html", session=session, principal=principal, title="Remove a membership",
                  question=f"Remove {user.email} from team {team}?",
                  consequence=f"{user.email} loses the role they hold in {team} and what it gives access to.",
                  target=f"/admin/users/{user.id}/memberships/{team}/remove", fields={}, button="Remove from team",
                  cancel="/admin")


@router.post("/admin/users/{user_id}/memberships/{team}/remove", response_class=HTMLResponse)
def remove_membership(user_id: int, team: str, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    access.check(session, principal=principal, action="users.manage")
    try:
        memberships.remove_membership(session, user_id=user_id, team=team, actor=principal.email)
        email = memberships.get_user(session, user_id).email
    except FORM_ERRORS as error:
        return _refused(request, session, principal, error, form="users", typed={})
    return RedirectResponse(f"/admin?message=removed+{email}+from+team+{team}", status_code=303)


@router.get("/admin/users/{user_id}/deactivate", response_class=HTMLResponse)
def deactivate_confirm(user_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    access.check(session, principal=principal, action="users.manage")
    user = memberships.get_user(session, user_id)
    return render(request, "confirm.html", session=session, principal=principal, title="Deactivate an account",
                  question=f"Deactivate {user.email}?",
                  consequence="They are signed out everywhere at once and their API tokens stop working; "
                              "an admin can activate the account again.",
                  target=f"/admin/users/{user.id}/deactivate", fields={}, button="Deactivate", cancel="/admin")


@router.post("/admin/users/{user_id}/{state}", response_class=HTMLResponse)
def set_active(user_id: int, state: str, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    access.check(session, principal=principal, action="users.manage")
    if state not in ("deactivate", "activate"):
        raise NotFound(f"admin: no action {state!r} on users")
    try:
        if state == "deactivate" and user_id == principal.user.id:
            raise InvalidInput("user: you cannot deactivate your own account")
        user = memberships.set_active(session, user_id=user_id, active=state == "activate", actor=principal.email)
    except FORM_ERRORS as error:
        return _refused(request, session, principal, error, form="users", typed={})
    return RedirectResponse(f"/admin?message={state}d+{user.email}", status_code=303)


@router.post("/admin/prompt-test", response_class=HTMLResponse)
def admin_prompt_test(request: Request, session: SessionDep, principal: PortalUser,
                      prompt: Annotated[str, Form(max_length=20_000)] = "") -> HTMLResponse:
    return prompt_check(request, session, principal, prompt)

