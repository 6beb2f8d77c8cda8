"""The portal's pages for compliance officers: the audit trail (newest first, an entry's details
with its decisions), verification, and the quarantine review with each image's context.

A banner names the categories that policy data releases with no detector covering them.
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

from latentops.core.errors import InvalidInput, LatentopsError, NotFound
from latentops.governance import access, checkpoints, compliance, erasure, policy, quarantine
from latentops.governance.access import Principal
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services import audit_trail
from latentops.platform.services import generation as generation_service
from latentops.platform.services import users as users_service
from latentops.platform.services.screening_admin import status_shown
from latentops.platform.tables import (
    Asset,
    AuditEntry,
    Job,
    LoraAdapter,
    ModelRecord,
    ModelVersion,
    PolicyDecision,
    ScreeningResult,
    User,
)
from latentops.platform.web.portal import PortalUser, render, when

router = APIRouter(include_in_schema=False)


# --- audit and quarantine -----------------------------------------------------------------------

AUDIT_FIELDS = ("since", "until", "actor", "action", "resource", "outcome")
PAGE_SIZES = (25, 50, 100, 200)
REVIEW_PAGE = 20


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
               after: int | None = Query(default=None, ge=-1), before: int | None = Query(default=None, ge=0),
               limit: int = Query(default=25, ge=1, le=200),
               order: str = Query(default="newest", pattern="^(newest|oldest)$")) -> HTMLResponse:
    """The trail newest first (or oldest first), a page at a time in either direction; actors as
    pseudonyms (system actors in clear)."""
    return _audit_page(request, session, settings, principal, after=after, before=before, limit=limit, order=order)


@router.post("/audit/reveal", response_class=HTMLResponse)
def audit_reveal(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                 after: int | None = Query(default=None, ge=-1), before: int | None = Query(default=None, ge=0),
                 limit: int = Query(default=25, ge=1, le=200),
                 order: str = Query(default="newest", pattern="^(newest|oldest)$")) -> HTMLResponse:
    """The same page with the identities behind its pseudonyms: compliance officers and admins
    (``audit.reveal``); a POST with the CSRF token, because the reveal is recorded in the trail."""
    access.check(session, principal=principal, action="audit.reveal")
    return _audit_page(request, session, settings, principal, after=after, before=before, limit=limit, order=order,
                       reveal=True)


def _audit_page(request: Request, session: Session, settings: Any, principal: Principal, *, after: int | None,
                before: int | None, limit: int, order: str, reveal: bool = False) -> HTMLResponse:
    access.check(session, principal=principal, action="audit.read")
    values = {name: (request.query_params.get(name) or "").strip()[:400] for name in AUDIT_FIELDS}
    error, page = "", None
    try:
        filters = audit_trail.filters_of(**{k: v or None for k, v in values.items()})
        page = compliance.query(session, filters=filters, after=after, before=None if after is not None else before,
                                limit=limit, newest_first=order == "newest")
    except InvalidInput as problem:
        error = problem.detail
    if reveal and page is not None and page.entries:
        erasure.reveal_identities(session, page.entries, actor=principal.email)
    kept = {**{k: v for k, v in values.items() if v}, "limit": str(limit), "order": order}
    here = urlencode({**kept, **({"after": str(after)} if after is not None else {}),
                      **({"before": str(before)} if before is not None and after is None else {})})
    query = urlencode({k: v for k, v in values.items() if v})
    latest = checkpoints.latest(session)
    return render(request, "audit.html", session=session, principal=principal, filters=values, error=error,
                  entries=page.entries if page else [], order=order, limit=limit, page_sizes=PAGE_SIZES, query=query, latest=latest,
                  newer=f"/audit?after={page.next_after}&{urlencode(kept)}" if page and page.next_after is not None else "",
                  older=f"/audit?before={page.next_before}&{urlencode(kept)}" if page and page.next_before is not None else "",
                  unscreened=unscreened_categories(status_shown(settings)),
                  can_export=access.allowed(session, principal=principal, action="audit.export"),
                  can_reveal=access.allowed(session, principal=principal, action="audit.reveal"), revealed=reveal,
                  reveal_query=here)


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
    screening_status = status_shown(settings)
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
            "asset_id": asset.id, "status": asset.status, "created_at": when(asset.created_at),
            "team": teams.get(asset.team_id or (job.team_id if job else 0) or 0), "job_id": asset.job_id,
            "purpose": asset.purpose, "seed": asset.seed, "requester": email(owner),
            "prompt": _prompt_of(session, asset, job), "model": _model_of(session, asset),
            "scores": result.scores or {}, "reasons": result.reasons or [], "detectors": result.detectors,
            "review_reason": asset.review_reason, "reviewed_by": email(asset.reviewed_by),
            "reviewed_at": when(asset.reviewed_at),
            "image_url": (f"/api/v1/assets/{asset.id}/image" if asset.status == "released"
                          else f"/api/v1/quarantine/{asset.id}/image"),
        })
    return items, len(rows) > REVIEW_PAGE


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
