"""``/api/v1/policies``: the policy revision in force, each domain's source and data, evaluation,
the live prompt check, and the bundle that OPA servers pull.

``POST /policies/{path}/evaluate`` is a recorded decision (like ``latentops policy eval``).
``POST /policies/prompt/check`` is the live check behind the prompt box: evaluated, not recorded
(a keystroke is not evidence; the generation request that follows is decided and recorded), and
the prompt text is never logged.

``/policies/prompt/protected-names`` is the prompt policy's protected-names list: searched and
paged by every role, edited (add, remove, re-categorise) by compliance officers and admins; each
edit is audited and answers with the new revision (``services/protected_names.py``).

``GET /policies/bundle.tar.gz`` is OPA's bundle service protocol: the bundle in force as the
tarball ``latentops policy bundle`` writes, with ``ETag: "<revision>"``; a request whose
``If-None-Match`` names the revision gets ``304 Not Modified``. It serves API tokens only (OPA's
bearer credentials) and the access policy decides (action ``policies.bundle``, scope
``policy:bundle``). That decision is made in process on the bundle in force, never by the OPA
server: an OPA that pulls its bundle here cannot decide the request that brings it up to date
(it may hold no bundle yet, or an older one that the engine no longer trusts).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, field_validator

from latentops.core.errors import AuthenticationFailed, NotFound, ServiceUnavailable
from latentops.governance import access, policy, policy_edits
from latentops.governance.access import Principal
from latentops.governance.policy_bundle import DATA_ROOT
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.platform.api.deps import PrincipalDep, SessionDep, bearer_secret, get_principal
from latentops.platform.services import protected_names
from latentops.platform.services.job_requests import check_prompt as check_prompt_text

router = APIRouter(tags=["policies"])
MAX_PROMPT_CHARS = 20_000
BUNDLE_ACTION = "policies.bundle"
BUNDLE_MEDIA_TYPE = "application/gzip"


class EvaluateRequest(BaseModel):
    input: dict[str, Any] = Field(description="The policy's documented input; 'subject' is the caller when absent.")


class PromptCheck(BaseModel):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    team: str | None = Field(default=None, max_length=100, description="Judge with this team's block levels (policy data team_block_at).")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return check_prompt_text(value, "prompt")


class ProtectedName(BaseModel):
    name: str = Field(max_length=1000, description="Up to 200 characters and 5 words after normalisation.")
    category: str = Field(max_length=100, description="trademarked character, celebrity or living artist.")


class AddNames(BaseModel):
    names: list[ProtectedName] = Field(min_length=1, max_length=protected_names.MAX_EDIT_NAMES)
    note: str = Field(default="", max_length=2000, description="Why; kept with the edit and in the audit entry.")


class RemoveNames(BaseModel):
    names: list[str] = Field(min_length=1, max_length=protected_names.MAX_EDIT_NAMES)
    note: str = Field(default="", max_length=2000)


class Recategorise(BaseModel):
    category: str = Field(max_length=100)
    note: str = Field(default="", max_length=2000)


class _BundleGate:
    """The policy service that decides who may pull the bundle: the process's own when it evaluates
    in process, otherwise an embedded one over the same policy folder and data edits (so the same
    revision), created once per process service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._main: policy.PolicyService | None = None
        self._gate: policy.PolicyService | None = None

    def service_for(self, main: policy.PolicyService) -> policy.PolicyService:
        if isinstance(main.engine, EmbeddedEngine):
            return main
        with self._lock:
            if self._gate is None or self._main is not main:
                self._main, self._gate = main, policy.PolicyService(engine=EmbeddedEngine(), directory=main.directory)
            return self._gate


_gate = _BundleGate()


def bundle_principal(request: Request, session: SessionDep) -> Principal:
    """The caller, authenticated by API token only: the bundle is for OPA's bearer credentials."""
    if bearer_secret(request) is None:
        raise AuthenticationFailed("authorization: the policy bundle is served to API tokens only; send "
                                   "'Authorization: Bearer <token with scope policy:bundle>'")
    return get_principal(request, session)


def etag_matches(header: str, revision: str) -> bool:
    """Whether ``If-None-Match`` (``*`` or a list of entity tags, weak or strong) names ``revision``."""
    tags = [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")]
    return "*" in tags or revision in tags


@router.get("/policies/bundle.tar.gz", response_class=Response, responses={
    200: {"content": {BUNDLE_MEDIA_TYPE: {}}, "description": "The OPA bundle of the revision in force (ETag: the revision)."},
    304: {"description": "If-None-Match names the revision in force: the caller's bundle is current."}})
def bundle(request: Request, session: SessionDep, principal: Annotated[Principal, Depends(bundle_principal)]) -> Response:
    """The policy bundle in force for an OPA server that pulls it (OPA's bundle service protocol)."""
    main = policy.get_service()
    main.refresh(session)
    gate = _gate.service_for(main)
    gate.refresh(session)
    document = access.access_input(principal, BUNDLE_ACTION)
    if not gate.evaluate(access.PATH, document)[0].allow:  # allowed pulls are not recorded: OPA polls every few seconds
        policy.require(access.PATH, document, session=session, actor=principal.user, service=gate)
    current = main.bundle
    if current is None:
        raise ServiceUnavailable(f"policy bundle: no policy revision is in force ({main.last_error or 'none loaded yet'})")
    headers = {"ETag": f'"{current.revision}"'}
    if etag_matches(request.headers.get("if-none-match", ""), current.revision):
        return Response(status_code=304, headers=headers)
    return Response(current.tarball, media_type=BUNDLE_MEDIA_TYPE, headers=headers)


@router.get("/policies")
def status(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """The revision in force, the engine, the policy paths and the last reload error."""
    access.check(session, principal=principal, action="policies.read")
    policy.get_service().refresh(session)
    return policy.status()


# --- policy data: in force, history, diff, edit, rollback, quotas ---------------------------------
# Declared before ``/policies/{path}``, which would otherwise take ``/policies/data`` for a domain.

DATA_READ = "policies.data.read"
DATA_MANAGE = "policies.data.manage"


def _required_note(value: str) -> str:
    if not value.strip():
        raise ValueError("required: say why the data changes (kept with the edit and in the audit trail)")
    return value.strip()


class DataEdit(BaseModel):
    key: str = Field(min_length=3, max_length=200, description="Dotted key, <domain>.<field>[.<field>...], e.g. screening.thresholds.sexual.")
    value: Any = Field(description="The new value (any JSON).")
    note: str = Field(max_length=2000, description="Why; required, kept with the edit and in the audit trail.")

    @field_validator("note")
    @classmethod
    def _note(cls, value: str) -> str:
        return _required_note(value)


class Rollback(BaseModel):
    to: int = Field(ge=0, description="The revision (edit id) whose data is restored; 0 is the policy files' data.")
    note: str = Field(max_length=2000, description="Why; required.")

    @field_validator("note")
    @classmethod
    def _note(cls, value: str) -> str:
        return _required_note(value)


@router.get("/policies/data")
def data_in_force(session: SessionDep, principal: PrincipalDep,
                  domain: str | None = Query(default=None, max_length=50, description="One domain only.")) -> dict[str, Any]:
    """The policy data in force per domain, the bundle revision and the latest edit (revision) id."""
    access.check(session, principal=principal, action=DATA_READ)
    return policy_edits.data_in_force(session, domain)


@router.get("/policies/data/history")
def data_history(session: SessionDep, principal: PrincipalDep,
                 key: str | None = Query(default=None, max_length=200, description="Edits of this key or below it."),
                 limit: int = Query(default=50, ge=1, le=policy_edits.MAX_HISTORY_PAGE),
                 offset: int = Query(default=0, ge=0)) -> dict[str, Any]:
    """The data edits (revisions: key, value, actor, note, time), newest first."""
    access.check(session, principal=principal, action=DATA_READ)
    return policy_edits.history(session, key=key, limit=limit, offset=offset)


@router.get("/policies/data/diff")
def data_diff(session: SessionDep, principal: PrincipalDep,
              to: int = Query(ge=0, description="The revision (edit id) to compare."),
              from_: int | None = Query(default=None, alias="from", ge=0,
                                        description="The revision to compare with; default the one before 'to'.")) -> dict[str, Any]:
    """What changed in the data from one revision to another, per dotted key."""
    access.check(session, principal=principal, action=DATA_READ)
    return policy_edits.diff(session, to=to, since=from_)


@router.post("/policies/data", status_code=201)
def data_edit(body: DataEdit, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Edit one key: checked (shape, compilation, Rego tests), stored as a new revision, audited."""
    access.check(session, principal=principal, action=DATA_MANAGE)
    previous = policy_edits.data_in_force(session)
    revision = policy.set_policy_data(session, key=body.key.strip(), value=body.value, actor=principal.user, note=body.note)
    latest = policy_edits.history(session, limit=1)["items"][0]
    return {"key": body.key.strip(), "revision": revision, "previous_revision": previous["revision"], "edit": latest}


@router.post("/policies/data/rollback", status_code=201)
def data_rollback(body: Rollback, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Restore a revision's data with new, audited edits (history keeps everything)."""
    access.check(session, principal=principal, action=DATA_MANAGE)
    previous = policy_edits.data_in_force(session)
    return {**policy_edits.rollback(session, to=body.to, actor=principal.user, note=body.note),
            "previous_revision": previous["revision"]}


@router.get("/policies/jobs/quotas")
def job_quotas(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Per team: its GPU-hour and queue quotas, the quota period (and when it began) and its use now."""
    access.check(session, principal=principal, action=DATA_READ)
    from latentops.platform.services.jobs.submit import quota_report

    return quota_report(session)


@router.get("/policies/{path}")
def source(path: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """One domain's Rego modules, tests and effective data, with the revision."""
    access.check(session, principal=principal, action="policies.read")
    service = policy.get_service()
    service.refresh(session)
    bundle = service.bundle
    if bundle is None or path not in bundle.paths:
        raise NotFound(f"path: no policy domain {path!r}")
    prefix = f"{path}/"
    return {"path": path, "revision": bundle.revision,
            "modules": {name: text for name, text in bundle.modules.items() if name.startswith(prefix)},
            "tests": {name: text for name, text in bundle.tests.items() if name.startswith(prefix)},
            "data": bundle.data[DATA_ROOT].get(path, {})}


@router.post("/policies/{path}/evaluate")
def evaluate(path: str, body: EvaluateRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Evaluate an input against a domain; the decision is recorded and audited."""
    access.check(session, principal=principal, action="policies.evaluate")
    decision = policy.decide(path, body.input, session=session, actor=principal.user)
    return {**decision.to_json(), "decision_id": decision.decision_id, "path": path}


@router.post("/policies/prompt/check")
def check_prompt(body: PromptCheck, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Would this prompt be allowed? Reasons name the rule; nothing is recorded."""
    access.check(session, principal=principal, action="prompt.check")
    policy.get_service().refresh(session)
    decision = policy.evaluate("prompt", {"prompt": body.prompt, **({"team": body.team} if body.team else {})})
    return {**decision.to_json(), "recorded": False}


@router.get("/policies/prompt/protected-names")
def list_protected_names(session: SessionDep, principal: PrincipalDep, q: str = Query(default="", max_length=200),
                         category: str | None = Query(default=None, max_length=100),
                         limit: int = Query(default=50, ge=1, le=protected_names.MAX_PAGE),
                         offset: int = Query(default=0, ge=0)) -> dict[str, Any]:
    """The protected names in force, sorted by name; ``q`` matches any part of the normalised name."""
    return protected_names.list_names(session, principal, q=q, category=category, limit=limit, offset=offset)


@router.post("/policies/prompt/protected-names", status_code=201)
def add_protected_names(body: AddNames, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Add names (compliance officers and admins): one audited edit, a new revision."""
    return protected_names.add(session, principal, [entry.model_dump() for entry in body.names], note=body.note)


@router.post("/policies/prompt/protected-names/remove")
def remove_protected_names(body: RemoveNames, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Remove names (compliance officers and admins): one audited edit, a new revision."""
    return protected_names.remove(session, principal, body.names, note=body.note)


@router.delete("/policies/prompt/protected-names/{name:path}")
def remove_protected_name(name: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Remove one name (matched after normalisation: ``spiderman`` removes ``Spider-Man``)."""
    return protected_names.remove(session, principal, [name])


@router.patch("/policies/prompt/protected-names/{name:path}")
def recategorise_protected_name(name: str, body: Recategorise, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Change one name's category (compliance officers and admins): one audited edit, a new revision."""
    return protected_names.recategorise(session, principal, name, body.category, note=body.note)
