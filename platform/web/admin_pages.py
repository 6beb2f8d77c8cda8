"""The portal's pages for compliance officers and admins: audit, quarantine, models and grants, users.

Each page asks the access policy like its REST twin and calls the same services; the submitter's
and data scientist's pages are in ``web.pages``. Changes that cannot be undone from the page they
start on (revoking a grant, removing a membership, deactivating an account) go through a
confirmation page first. A form refused for its input is shown again with the error and what was
typed (passwords aside).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, LatentopsError, NotFound
from latentops.governance import access, checkpoints, compliance, erasure, policy, quarantine
from latentops.governance.access import Principal
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services import audit_trail, memberships
from latentops.platform.services import generation as generation_service
from latentops.platform.services import grants as grants_service
from latentops.platform.services import models as models_service
from latentops.platform.services import users as users_service
from latentops.platform.services.jobs import views as job_views
from latentops.platform.tables import (
    Asset,
    AuditEntry,
    Job,
    LoraAdapter,
    ModelRecord,
    ModelVersion,
    PolicyDecision,
    Role,
    ScreeningResult,
    Team,
    User,
)
from latentops.platform.web.pages import prompt_check
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)
ROLES = [role.value for role in Role]
FORM_ERRORS = (InvalidInput, Conflict, NotFound)


# --- audit and quarantine -----------------------------------------------------------------------

AUDIT_FIELDS = ("since", "until", "actor", "action", "resource", "outcome")
PAGE_SIZES = (25, 50, 100, 200)
REVIEW_PAGE = 20


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
               after: int | None = Query(default=None, ge=-1), before: int | None = Query(default=None, ge=0),
               limit: int = Query(default=25, ge=1, le=200),
               order: str = Query(default="newest", pattern="^(newest|oldest)$")) -> HTMLResponse:
    """The trail newest first (or oldest first), a page at a time in either direction."""
    access.check(session, principal=principal, action="audit.read")
    values = {name: (request.query_params.get(name) or "").strip()[:400] for name in AUDIT_FIELDS}
    error, page = "", None
    try:
        filters = audit_trail.filters_of(**{k: v or None for k, v in values.items()})
        page = compliance.query(session, filters=filters, after=after, before=None if after is not None else before,
                                limit=limit, newest_first=order == "newest")
    except InvalidInput as problem:
        error = problem.detail
    kept = {**{k: v for k, v in values.items() if v}, "limit": str(limit), "order": order}
    query = urlencode({k: v for k, v in values.items() if v})
    latest = checkpoints.latest(session)
    return render(request, "audit.html", session=session, principal=principal, filters=values, error=error,
                  entries=page.entries if page else [], order=order, limit=limit, page_sizes=PAGE_SIZES, query=query, latest=latest,
                  newer=f"/audit?after={page.next_after}&{urlencode(kept)}" if page and page.next_after is not None else "",
                  older=f"/audit?before={page.next_before}&{urlencode(kept)}" if page and page.next_before is not None else "",
                  unscreened=unscreened_categories(_screening_status(settings)),
                  can_export=access.allowed(session, principal=principal, action="audit.export"))


@router.get("/audit/{seq}", response_class=HTMLResponse)
def audit_entry_page(seq: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    """One entry: every field, the decisions and screening it records, its hash and its chain link."""
    access.check(session, principal=principal, action="audit.read")
    page = compliance.query(session, after=seq - 1, limit=1)  # integrates pending entries first
    if not page.entries or page.entries[0]["seq"] != seq:
        raise NotFound(f"audit entry: no entry with seq {seq}")
    entry = page.entries[0]
    previous = session.scalar(sa.select(AuditEntry.hash).where(AuditEntry.seq == seq - 1)) if seq > 0 else None
    following = session.scalar(sa.select(AuditEntry.seq).where(AuditEntry.seq == seq + 1))
    details = entry["details"] if isinstance(entry["details"], dict) else json.loads(entry["details"] or "{}")
    return render(request, "audit_entry.html", session=session, principal=principal, entry=entry,
                  details_json=json.dumps(details, indent=2, sort_keys=True, ensure_ascii=False),
                  previous_hash=previous, link_ok=(entry["prev_hash"] == previous) if seq > 0 else None,
                  has_next=following is not None, decisions=_decisions_of(session, entry, details),
                  screening=_screening_of(session, details))


def _ids(value: Any) -> list[int]:
    items = value if isinstance(value, list) else [value]
    return [int(v) for v in items if isinstance(v, int) and not isinstance(v, bool)]


def _decisions_of(session: Session, entry: dict[str, Any], details: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy decisions an entry records or names, with their reasons, rule ids and categories."""
    ids: list[int] = []
    resource = str(entry["resource"])
    if resource.startswith("policy_decision:") and resource.split(":", 1)[1].isdigit():
        ids.append(int(resource.split(":", 1)[1]))
    for key in ("policy_decision_id", "decisions", "request_decisions", "screening_decisions"):
        ids.extend(i for i in _ids(details.get(key)) if i not in ids)
    rows = session.scalars(sa.select(PolicyDecision).where(PolicyDecision.id.in_(ids[:50])).order_by(PolicyDecision.id))
    return [{"id": d.id, "path": d.path, "allow": d.allow, "reasons": [str(r) for r in d.reasons or []],
             "rule_ids": [str(r) for r in d.rule_ids or []], "categories": _categories(d.rule_ids or []),
             "revision": d.revision, "engine": d.engine, "actor": d.actor} for d in rows]


def _categories(rule_ids: list[Any]) -> list[str]:
    """The categories named by rule ids (``prompt.self_harm`` names ``self_harm``)."""
    found: list[str] = []
    for rule in rule_ids:
        _, _, category = str(rule).partition(".")
        if category and category not in found:
            found.append(category)
    return found


def _screening_of(session: Session, details: dict[str, Any]) -> dict[str, Any] | None:
    ids = _ids(details.get("screening_result_id"))
    result = session.get(ScreeningResult, ids[0]) if ids else None
    if result is None:
        return None
    return {"id": result.id, "reasons": result.reasons or [], "scores": result.scores or {},
            "categories": sorted(result.scores or {}), "detectors": result.detectors}


@router.post("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser) -> HTMLResponse:
    access.check(session, principal=principal, action="audit.verify")
    report = audit_trail.verify_report(session, settings, principal)
    return render(request, "fragments/verify.html", report=report)


@router.get("/quarantine", response_class=HTMLResponse)
def quarantine_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                    status: str = Query(default="quarantined", pattern="^(quarantined|rejected|released)$"),
                    offset: int = Query(default=0, ge=0, le=10_000_000), message: str = "") -> HTMLResponse:
    return _quarantine(request, session, settings, principal, status=status, offset=offset, message=message[:200])


def _quarantine(request: Request, session: Session, settings: Any, principal: Principal, *, status: str, offset: int,
                message: str = "", error: str = "", error_asset: int | None = None, typed: str = "", status_code: int = 200) -> HTMLResponse:
    access.check(session, principal=principal, action="quarantine.review")
    items, more = review_items(session, principal, status=status, offset=offset)
    screening_status = _screening_status(settings)
    return render(request, "quarantine.html", session=session, principal=principal, items=items, status=status,
                  offset=offset, page=REVIEW_PAGE, more=more, screening_status=screening_status,
                  unscreened=unscreened_categories(screening_status), error=error, error_asset=error_asset,
                  typed=typed, message=message, status_code=status_code)


def review_items(session: Session, principal: Principal, *, status: str, offset: int) -> tuple[list[dict[str, Any]], bool]:
    """One page of screened images in ``status``, newest first, with what the reviewer needs to
    judge them: the prompt, who asked, the model, the screening and the review so far."""
    policy.require("quarantine", {"action": "view"}, session=session, actor=principal.email)
    rows = session.execute(sa.select(Asset, ScreeningResult)
                           .join(ScreeningResult, ScreeningResult.id == Asset.screening_result_id)
                           .where(Asset.status == status).order_by(Asset.id.desc())
                           .offset(offset).limit(REVIEW_PAGE + 1)).all()
    teams = users_service.team_names(session)
    emails: dict[int, str] = {}

    def email(user_id: int | None) -> str | None:
        if user_id is None:
            return None
        if user_id not in emails:
            emails[user_id] = session.scalar(sa.select(User.email).where(User.id == user_id)) or f"user {user_id}"
        return emails[user_id]

    items = []
    for asset, result in rows[:REVIEW_PAGE]:
        job = session.get(Job, asset.job_id) if asset.job_id else None
        owner = asset.owner_id or (job.owner_id if job else None)
        items.append({
            "asset_id": asset.id, "status": asset.status, "created_at": _when(asset.created_at),
            "team": teams.get(asset.team_id or (job.team_id if job else 0) or 0), "job_id": asset.job_id,
            "purpose": asset.purpose, "seed": asset.seed, "requester": email(owner),
            "prompt": _prompt_of(session, asset, job), "model": _model_of(session, asset),
            "scores": result.scores or {}, "reasons": result.reasons or [], "detectors": result.detectors,
            "review_reason": asset.review_reason, "reviewed_by": email(asset.reviewed_by),
            "reviewed_at": _when(asset.reviewed_at),
            "image_url": (f"/api/v1/assets/{asset.id}/image" if asset.status == "released"
                          else f"/api/v1/quarantine/{asset.id}/image"),
        })
    return items, len(rows) > REVIEW_PAGE


def _when(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def _prompt_of(session: Session, asset: Asset, job: Job | None) -> str | None:
    """The prompt of a generated image: from its job's request, else from the generation's audit
    entry (sealed to the requester; an erased requester's prompt is gone)."""
    if job is not None:  # a generation's prompts, a fine-tune's instance and validation prompts, ...
        for text in _texts(job.params):
            if generation_service.prompt_ref(text) == asset.prompt_ref:
                return text
    if asset.created_at is None:
        return None
    since = asset.created_at - dt.timedelta(seconds=5)
    entries = session.execute(sa.select(AuditEntry.details).where(AuditEntry.action == "generation.request",
                                                                  AuditEntry.at >= since)
                              .order_by(AuditEntry.seq).limit(20)).scalars()
    for raw in entries:
        details = raw if isinstance(raw, dict) else json.loads(raw or "{}")
        if asset.id not in (details.get("assets") or []):
            continue
        try:
            personal = erasure.reveal(session, details).get("personal") or {}
        except LatentopsError:
            return None
        for text in (personal.get("data") or {}).get("prompts") or []:
            if isinstance(text, str) and generation_service.prompt_ref(text) == asset.prompt_ref:
                return text
        return "(erased)" if personal.get("erased") else None
    return None


def _texts(value: Any, depth: int = 0) -> list[str]:
    """The strings in a job's parameters (nested two levels at most), where its prompts are."""
    if isinstance(value, str):
        return [value]
    if depth > 2:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [text for item in items for text in _texts(item, depth + 1)]


def _model_of(session: Session, asset: Asset) -> str | None:
    parts = []
    version = session.get(ModelVersion, asset.model_version_id) if asset.model_version_id else None
    if version is not None:
        record = session.get(ModelRecord, version.model_id)
        parts.append(f"{record.name if record else 'model'} v{version.version}")
    adapter = session.get(LoraAdapter, asset.lora_adapter_id) if asset.lora_adapter_id else None
    if adapter is not None:
        parts.append(f"LoRA {adapter.name} v{adapter.version}")
    return " + ".join(parts) or None


def _screening_status(settings: Any) -> dict[str, Any]:
    """What screens images (detectors, coverage per category, uncovered ones); a broken configuration is shown."""
    from latentops.governance import screening

    try:
        return screening.status(settings)
    except LatentopsError as error:
        return {"error": error.detail}


def unscreened_categories(status: dict[str, Any]) -> list[str]:
    """The categories whose images policy data releases although no detector screens them: every
    category without any detector (``screening.release_without_detector``), the uncovered ones
    otherwise (``screening.release_uncovered``, or ``release_without_detector`` which implies it)."""
    if status.get("error"):
        return []
    without = bool(status.get("release_without_detector"))
    if not status.get("real_detector"):
        return list(status.get("coverage") or {}) if without else []
    if without or status.get("release_uncovered"):
        return list(status.get("uncovered") or [])
    return []


@router.post("/quarantine/{asset_id}/{verdict}", response_class=HTMLResponse)
def quarantine_review(asset_id: int, verdict: str, request: Request, session: SessionDep, settings: SettingsDep,
                      principal: PortalUser, reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    access.check(session, principal=principal, action="quarantine.review")
    if verdict not in ("release", "reject"):
        raise InvalidInput(f"verdict: must be release or reject, got {verdict!r}")
    if not reason.strip():
        return _quarantine(request, session, settings, principal, status="quarantined", offset=0,
                           error=f"reason: a reason is required to {verdict} image {asset_id}", error_asset=asset_id,
                           status_code=422)
    if verdict == "release":
        quarantine.release(session, settings=settings, asset_id=asset_id, reason=reason, actor=principal.email)
    else:
        quarantine.reject(session, asset_id=asset_id, reason=reason, actor=principal.email)
    done = "released" if verdict == "release" else "rejected"
    return RedirectResponse(f"/quarantine?message={done}+image+{asset_id}", status_code=303)


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
             "created_at": _when(adapter.created_at), "content_hash": adapter.content_hash}
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

