"""The portal's policy-data and screening pages for compliance officers and admins.

``/policy-data`` shows the policy data in force per domain, edits one key with a JSON value and a
note, lists the revisions (edits) newest first, shows what a revision changed, rolls back to a
revision after a confirmation that shows what would change, and shows per team the job quotas, the
GPU-hour period and the use in it. ``/screening`` shows what screens images (per category the
detectors covering it and the threshold in force) and calibrates the thresholds on an uploaded
labelled set.

The pages call what the REST routes call (``governance.policy``, ``services.jobs.submit.quota_report``,
``api.screening``), under the same access actions (``policies.data.read``/``manage``,
``screening.read``/``calibrate``), so the same checks, revisions and audit entries apply. An edit
that is refused (wrong shape, policies that do not compile, failing Rego tests, a value that is
not JSON, no note) is shown on the form with the key and the reason; what was typed stays in the
form and nothing is stored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentops.core.errors import InvalidInput, LatentopsError, NotFound
from latentops.governance import access, policy, policy_edits
from latentops.governance.access import Principal
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services.screening_admin import calibrate_upload, status_shown, upload_name
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)
PATH = "/policy-data"
SCREENING_PATH = "/screening"
READ, MANAGE = "policies.data.read", "policies.data.manage"
HISTORY_PAGE = 20


def _leaves(value: Any, prefix: str) -> list[tuple[str, str]]:
    """``(dotted key, JSON value)`` per leaf; lists and empty objects are leaves."""
    if isinstance(value, dict) and value:
        return [leaf for name, inner in value.items() for leaf in _leaves(inner, f"{prefix}.{name}")]
    return [(prefix, json.dumps(value, sort_keys=True))]


def _quotas(session: Any) -> dict[str, Any]:
    from latentops.platform.services.jobs.submit import quota_report

    try:
        return quota_report(session)
    except LatentopsError as error:
        return {"error": error.detail, "teams": []}


def _page(request: Request, session: Any, principal: Principal, *, domain: str = "", offset: int = 0,
          form: dict[str, str] | None = None, error: str = "", message: str = "", status_code: int = 200) -> HTMLResponse:
    in_force = policy_edits.data_in_force(session)
    domains = list(in_force["domains"])
    domain = domain if domain in domains else (domains[0] if domains else "")
    history = policy_edits.history(session, limit=HISTORY_PAGE, offset=offset)
    return render(request, "policy_data.html", session=session, principal=principal, in_force=in_force,
                  domains=domains, domain=domain, leaves=_leaves(in_force["domains"].get(domain, {}), domain),
                  history=history, form=form or {"key": "", "value": "", "note": ""}, error=error, message=message[:300],
                  quotas=_quotas(session), can_manage=access.allowed(session, principal=principal, action=MANAGE),
                  status_code=status_code)


@router.get(PATH, response_class=HTMLResponse)
def data_page(request: Request, session: SessionDep, principal: PortalUser,
              domain: str = Query(default="", max_length=50), offset: int = Query(default=0, ge=0),
              key: str = Query(default="", max_length=200), message: str = Query(default="", max_length=300)) -> HTMLResponse:
    access.check(session, principal=principal, action=READ)
    form = None
    if key:  # "Edit" next to a key: the form starts from the value in force
        in_force = policy_edits.data_in_force(session)
        node: Any = in_force["domains"]
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        form = {"key": key, "value": json.dumps(node, sort_keys=True) if node is not None else "", "note": ""}
    return _page(request, session, principal, domain=domain or key.split(".")[0], offset=offset, form=form,
                 message=message)


@router.post(PATH, response_class=HTMLResponse)
def data_edit(request: Request, session: SessionDep, principal: PortalUser,
              key: Annotated[str, Form(max_length=200)] = "", value: Annotated[str, Form(max_length=200_000)] = "",
              note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    access.check(session, principal=principal, action=MANAGE)
    form = {"key": key, "value": value, "note": note}
    domain = key.strip().split(".")[0]
    try:
        if not key.strip():
            raise InvalidInput("key: required, e.g. screening.thresholds.sexual")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as problem:
            raise InvalidInput(f"value of {key.strip()}: not valid JSON ({problem.msg} at line {problem.lineno} column "
                               f"{problem.colno}); write strings in double quotes") from None
        if not note.strip():
            raise InvalidInput(f"note: required for the edit of {key.strip()}; say why the data changes (kept with the edit "
                               "and in the audit trail)")
        revision = policy.set_policy_data(session, key=key.strip(), value=parsed, actor=principal.user, note=note.strip())
    except (InvalidInput, NotFound) as problem:
        return _page(request, session, principal, domain=domain, form=form, error=problem.detail,
                     status_code=problem.status_code)
    message = f"{key.strip()} saved; policy revision {revision[:12]} is in force"
    return RedirectResponse(f"{PATH}?{urlencode({'domain': domain, 'message': message})}", status_code=303)


@router.get(f"{PATH}/diff", response_class=HTMLResponse)
def data_diff(request: Request, session: SessionDep, principal: PortalUser, to: int = Query(ge=0),
              since: int | None = Query(default=None, alias="from", ge=0)) -> HTMLResponse:
    access.check(session, principal=principal, action=READ)
    found = policy_edits.diff(session, to=to, since=since)
    return render(request, "policy_diff.html", session=session, principal=principal, diff=found, rollback=None)


@router.get(f"{PATH}/rollback", response_class=HTMLResponse)
def rollback_confirm(request: Request, session: SessionDep, principal: PortalUser, to: int = Query(ge=0)) -> HTMLResponse:
    """What rolling back to ``to`` would change (the data in force against that revision's), and the confirmation form."""
    access.check(session, principal=principal, action=MANAGE)
    return _confirm(request, session, principal, to=to)


def _confirm(request: Request, session: Any, principal: Principal, *, to: int, error: str = "", note: str = "",
             status_code: int = 200) -> HTMLResponse:
    latest = policy_edits.data_in_force(session)["edit"]
    found = policy_edits.diff(session, to=to, since=latest)
    return render(request, "policy_diff.html", session=session, principal=principal, diff=found,
                  rollback={"to": to, "latest": latest, "error": error, "note": note}, status_code=status_code)


@router.post(f"{PATH}/rollback", response_class=HTMLResponse)
def rollback(request: Request, session: SessionDep, principal: PortalUser, to: Annotated[int, Form(ge=0)],
             note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    access.check(session, principal=principal, action=MANAGE)
    try:
        result = policy_edits.rollback(session, to=to, actor=principal.user, note=note)
    except InvalidInput as problem:
        return _confirm(request, session, principal, to=to, error=problem.detail, note=note,
                        status_code=problem.status_code)
    message = f"rolled back to revision {to}; policy revision {result['revision'][:12]} is in force"
    return RedirectResponse(f"{PATH}?{urlencode({'message': message})}", status_code=303)


# --- screening ----------------------------------------------------------------------------------


def _screening(request: Request, session: Any, settings: Any, principal: Principal, *, report: dict[str, Any] | None = None,
               error: str = "", target_fpr: str = "0.01", status_code: int = 200) -> HTMLResponse:
    return render(request, "screening.html", session=session, principal=principal, status=status_shown(settings), report=report,
                  error=error, target_fpr=target_fpr, status_code=status_code,
                  can_calibrate=access.allowed(session, principal=principal, action="screening.calibrate"))


@router.get(SCREENING_PATH, response_class=HTMLResponse)
def screening_page(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser) -> HTMLResponse:
    access.check(session, principal=principal, action="screening.read")
    return _screening(request, session, settings, principal)


@router.post(f"{SCREENING_PATH}/calibrate", response_class=HTMLResponse)
def screening_calibrate(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                        labels: Annotated[UploadFile | None, File()] = None,
                        images: Annotated[list[UploadFile] | None, File()] = None,
                        target_fpr: Annotated[str, Form(max_length=20)] = "0.01") -> HTMLResponse:
    access.check(session, principal=principal, action="screening.calibrate")
    try:
        if labels is None or not labels.filename:
            raise InvalidInput("labels: choose the labels file (CSV or .jsonl with the columns file and label)")
        try:
            fpr = float(target_fpr)
        except ValueError:
            raise InvalidInput(f"target_fpr: {target_fpr!r} is not a number; e.g. 0.01") from None
        uploads = [(upload_name(upload.filename, i), upload.file.read()) for i, upload in enumerate(images or []) if upload.filename]
        report = calibrate_upload(session, settings, labels=(labels.filename, labels.file.read()), images=uploads,
                                  target_fpr=fpr, actor=principal.email)
    except InvalidInput as problem:
        return _screening(request, session, settings, principal, error=problem.detail, target_fpr=target_fpr,
                          status_code=problem.status_code)
    return _screening(request, session, settings, principal, report=report, target_fpr=target_fpr)
