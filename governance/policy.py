"""Policy decisions: the one door through which every part of latentops asks "may this happen?".

API (what other modules call)::

    from latentops.governance import policy

    decision = policy.decide("prompt", {"prompt": text}, session=db, actor=actor)
    decision.allow, decision.reasons, decision.rule_ids, decision.revision, decision.decision_id

    policy.require("models", {"action": "download", "model": {...}, "grants": [...]}, session=db, actor=actor)
        # returns the Decision when allowed, raises PolicyDenied(detail, reasons=[...]) otherwise

    policy.policy_data("screening.thresholds")     # {"sexual": 0.5, ...}: data in force, read-only copy
    policy.policy_data("jobs.limits.submitter")    # {"max_steps": ..., ...}
    policy.revision()                              # bundle revision in force
    policy.reload()                                # re-read policies and data now (ReloadResult)
    policy.subject_for(session, actor)             # the "subject" input for a user or the console

Paths are the policy domains: ``prompt``, ``jobs``, ``models``, ``datasets``, ``screening``, ``access``. The
input is the policy's documented input (see each ``governance/policies/<path>/<path>.rego``);
``decide`` adds ``subject`` from ``actor`` when the input has none, and for ``prompt`` replaces
the raw ``prompt`` string by the analysed section (``latentops.governance.normalize``).

Fail closed: only an explicit ``allow: true`` with no violations allows. An engine error, a timeout, an undefined
or malformed result, or an unreachable OPA server gives a deny with the reason ``policy engine unavailable``
(rule id ``policy.engine_unavailable``), recorded like any other decision.

Every ``decide`` stores a ``PolicyDecision`` (input hash, masked input, result, reasons, rule ids, revision,
engine) and an audit entry ``policy.decision`` in the caller's transaction; the row keeps the entry's ``seq``.

Revisions and reload: a process checks at most every ``RELOAD_CHECK_S`` seconds whether the policy files or the
data edits changed and, if so, loads the new bundle. A bundle that does not load (bad data shape, Rego that does
not compile) leaves the previous revision in force; the error is logged and reported by ``reload()`` and
``status()``. Data edits (``set_policy_data``) are checked first (``check_edits``); ``policy_edits`` reads them
as revisions (history, diff, rollback).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound, PolicyDenied
from latentops.core.tables import Job, Membership, Team, User
from latentops.governance import audit, semantic
from latentops.governance.normalize import analyse_prompt, mask_input
from latentops.governance.policy_bundle import (
    DATA_ROOT,
    DEFAULT_POLICY_DIR,
    DOMAINS,
    PolicyBundle,
    fingerprint,
    load_bundle,
    policy_domains,
)
from latentops.governance.policy_engine import (
    CompileError,
    EmbeddedEngine,
    Engine,
    EngineUnavailable,
)
from latentops.governance.policy_opa import OpaEngine
from latentops.governance.policy_testing import failed_tests
from latentops.governance.tables import AuditEntry, PolicyDataEdit, PolicyDecision

log = logging.getLogger(__name__)

UNAVAILABLE_REASON = "policy engine unavailable"
UNAVAILABLE_RULE = "policy.engine_unavailable"
RELOAD_CHECK_S = 2.0


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: list[str]
    rule_ids: list[str]
    revision: str
    decision_id: int | None = None
    path: str = ""
    engine: str = ""
    # What an allow comes with besides allow/deny, e.g. the jobs policy's effective "priority".
    obligations: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"allow": self.allow, "reasons": self.reasons, "rule_ids": self.rule_ids, "revision": self.revision}
        if "categories" in self.obligations:  # the prompt policy's per-category severity, score and evidence
            out["categories"] = self.obligations["categories"]
        return out


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    revision: str
    changed: bool
    error: str = ""


@dataclass
class PolicyService:
    """The bundle in force and the engine that evaluates it (one per process, see ``get_service``)."""

    engine: Engine
    directory: Path = DEFAULT_POLICY_DIR
    bundle: PolicyBundle | None = None
    last_error: str = ""
    _files_seen: str = ""
    _edits_seen: int = -1
    _edits: list[tuple[str, Any]] = field(default_factory=list)
    _checked_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # The paths of the bundle in force: ``PolicyBundle.paths`` parses every module's package per call.
    _paths: tuple[str, frozenset[str]] = ("", frozenset())

    # -- loading ---------------------------------------------------------------------------------
    def reload(self, session: Session | None = None) -> ReloadResult:
        """Load policies and data (plus data edits when a session is given) and put them in force."""
        with self._lock:
            return self._reload(session)

    def _reload(self, session: Session | None) -> ReloadResult:
        previous = self.bundle.revision if self.bundle else ""
        try:
            edits = _edits(session) if session is not None else self._edits
            files = fingerprint(self.directory)
            bundle = load_bundle(self.directory, edits)
            if bundle.revision != previous:
                self.engine.load(bundle)
                self.bundle = bundle
            # Without a session the edits are the ones last read (none yet: still unknown, -1).
            self._files_seen, self._edits = files, list(edits)
            self._edits_seen = len(edits) if session is not None else self._edits_seen
            self.last_error = ""
            if bundle.revision != previous:
                log.info("policy revision %s in force", bundle.revision[:12], extra={"revision": bundle.revision})
            return ReloadResult(True, bundle.revision, bundle.revision != previous)
        except (InvalidInput, CompileError) as error:
            message = error.detail if isinstance(error, InvalidInput) else str(error)
            self.last_error = message
            log.error("policy reload failed; revision %s stays in force: %s", previous[:12] or "(none)", message)
            return ReloadResult(False, previous, False, message)

    def refresh(self, session: Session | None) -> None:
        """Reload when files or data edits changed; checks at most every ``RELOAD_CHECK_S`` seconds."""
        now = time.monotonic()
        edits_unknown = session is not None and self._edits_seen < 0  # loaded before any session: read them now
        if self.bundle is not None and now - self._checked_at < RELOAD_CHECK_S and not edits_unknown:
            return
        self._checked_at = now
        edits_count = _edit_count(session) if session is not None else self._edits_seen
        if self.bundle is None or fingerprint(self.directory) != self._files_seen or edits_count != self._edits_seen:
            self.reload(session)

    # -- deciding --------------------------------------------------------------------------------
    def evaluate(self, path: str, input: Mapping[str, Any]) -> tuple[Decision, dict[str, Any], str]:
        """Decide without recording: ``(decision, policy input, engine error or "")``."""
        bundle = self.bundle
        if bundle is None:
            return _unavailable(path, "", self.engine.name), dict(input), self.last_error or "no policy bundle is loaded"
        revision, paths = self._paths
        if revision != bundle.revision:
            paths = frozenset(bundle.paths)
            self._paths = (bundle.revision, paths)
        if path not in paths:
            raise InvalidInput(f"path: unknown policy path {path!r}; known paths are {', '.join(bundle.paths)}")
        policy_input = build_input(path, input, bundle)
        try:
            document = self.engine.evaluate(path, policy_input)
        except EngineUnavailable as error:
            log.error("policy engine unavailable for %s: %s", path, error)
            return _unavailable(path, bundle.revision, self.engine.name), policy_input, str(error)
        violations = sorted(document["deny"], key=lambda v: (v["rule_id"], v["reason"]))
        allow = document["allow"] is True and not violations
        return Decision(
            allow=allow, reasons=[v["reason"] for v in violations], rule_ids=[v["rule_id"] for v in violations],
            revision=bundle.revision, path=path, engine=self.engine.name,
            obligations={key: value for key, value in document.items() if key not in ("allow", "deny")},
        ), policy_input, ""


def _unavailable(path: str, revision: str, engine: str) -> Decision:
    return Decision(False, [UNAVAILABLE_REASON], [UNAVAILABLE_RULE], revision or "unavailable", path=path, engine=engine)


def build_input(path: str, input: Mapping[str, Any], bundle: PolicyBundle) -> dict[str, Any]:
    """The policy input for ``path``: for ``prompt`` the raw text is replaced by its analysis."""
    if not isinstance(input, Mapping):
        raise InvalidInput(f"input: must be a JSON object, got {type(input).__name__}")
    result = dict(input)
    if path == "prompt":
        prompt = result.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInput(f"prompt: must be a string, got {type(prompt).__name__}")
        section = result["prompt"] = analyse_prompt(prompt, bundle.prompt_index)
        if section["analysed"] and bundle.data[DATA_ROOT].get("prompt", {}).get("semantic", {}).get("enabled"):
            section["semantic"] = semantic.analyse(section["normalized"])
    return result


def _edits(session: Session) -> list[tuple[str, Any]]:
    rows = session.execute(sa.select(PolicyDataEdit.key, PolicyDataEdit.value).order_by(PolicyDataEdit.id))
    return [(key, value["value"]) for key, value in rows]


def _edit_count(session: Session) -> int:
    return int(session.scalar(sa.select(sa.func.count(PolicyDataEdit.id))) or 0)


# --- the process-wide service -------------------------------------------------------------------

_service: PolicyService | None = None
_service_lock = threading.Lock()


def make_engine(kind: str, *, opa_url: str = "", opa_mode: str = "push", opa_bundle_wait_s: float = 15.0) -> Engine:
    if kind == "opa":
        return OpaEngine(opa_url, mode=opa_mode, bundle_wait_s=opa_bundle_wait_s)
    return EmbeddedEngine()


def get_service() -> PolicyService:
    """The process's policy service, created on first use from the settings (engine, OPA URL)."""
    global _service
    with _service_lock:
        if _service is None:
            from latentops.core.settings import get_settings

            settings = get_settings()
            _service = PolicyService(engine=make_engine(settings.policy_engine, opa_url=settings.opa_url, opa_mode=settings.opa_mode,
                                                        opa_bundle_wait_s=settings.opa_bundle_wait_s))
        return _service


def use_service(service: PolicyService | None) -> None:
    """Replace the process's service (another engine or policy folder); ``None`` resets it."""
    global _service
    with _service_lock:
        _service = service


# --- the API ------------------------------------------------------------------------------------


def subject_for(session: Session, actor: audit.Actor | str | User, *, team: str | None = None) -> dict[str, Any]:
    """The ``subject`` input: a user with memberships, or the local console operator.

    The console operator holds the roles policy data gives it (``console_roles``) and no team; it
    acts for ``team`` (the team its command names, sent as ``acting_for``), so grants to that team
    count for it. A user's teams are only their memberships: ``team`` changes nothing for them.

    A job (``job:<id>``) acts for the user who submitted it: its decisions are that user's. A job
    without an owner (submitted from the console) is the system.
    """
    if isinstance(actor, audit.Actor):
        actor = actor.name
    if isinstance(actor, str) and actor.startswith("job:") and actor[4:].isdigit():
        owner = session.scalar(sa.select(User).join(Job, Job.owner_id == User.id).where(Job.id == int(actor[4:])))
        actor = owner if owner is not None else "system"
    if isinstance(actor, str) and (actor.startswith("cli:") or actor == "system"):
        subject: dict[str, Any] = {"kind": "console" if actor.startswith("cli:") else "system", "name": actor, "user_id": None,
                                   "memberships": []}
        if subject["kind"] == "console" and team:
            subject["acting_for"] = team.strip().lower()
        return subject
    user = actor if isinstance(actor, User) else session.scalar(sa.select(User).where(User.email == str(actor).strip().lower()))
    if user is None:
        raise NotFound(f"actor: no user {actor!r}")
    rows = session.execute(
        sa.select(Team.name, Membership.role).join(Membership, Membership.team_id == Team.id).where(Membership.user_id == user.id)
    )
    return {
        "kind": "user", "name": user.email, "user_id": user.id, "active": user.is_active,
        "memberships": [{"team": name, "role": getattr(role, "value", role)} for name, role in rows],
    }


def _actor_name(actor: audit.Actor | str | User) -> str:
    if isinstance(actor, audit.Actor):
        return actor.name
    return actor.email if isinstance(actor, User) else str(actor)


_DECISION_INSERT = sa.insert(PolicyDecision.__table__).returning(PolicyDecision.__table__.c.id)


def decide(path: str, input: Mapping[str, Any], *, session: Session, actor: audit.Actor | str | User,
           service: PolicyService | None = None) -> Decision:
    """Evaluate, record the decision and its audit entry in ``session``'s transaction, return it.

    ``service`` is the process's service unless given (the bundle endpoint decides in process).
    """
    service = service or get_service()
    service.refresh(session)
    if isinstance(input, Mapping) and "subject" not in input and path != "prompt":
        team = input.get("team")
        input = {**input, "subject": subject_for(session, actor, team=team if isinstance(team, str) else None)}
    decision, policy_input, engine_error = service.evaluate(path, input)
    index = service.bundle.prompt_index if service.bundle else None
    masked = mask_input(policy_input, index)
    input_hash = hashlib.sha256(rfc8785.dumps(_jsonable(policy_input))).hexdigest()
    # One INSERT ... RETURNING, not the unit of work: a governed image takes two decisions.
    decision_id = session.execute(_DECISION_INSERT, {
        "path": path, "input_hash": input_hash, "input_masked": masked, "allow": decision.allow,
        "reasons": decision.reasons, "rule_ids": decision.rule_ids, "revision": decision.revision,
        "engine": decision.engine, "actor": _actor_name(actor)}).scalar_one()
    details: dict[str, Any] = {"path": path, "allow": decision.allow, "rule_ids": decision.rule_ids,
                               "revision": decision.revision, "input_hash": input_hash}
    if engine_error:
        details["engine_error"] = engine_error[:500]
    if decision.obligations:
        details["obligations"] = decision.obligations
    # Not sequenced here: reading the entry's seq now would hold the chain lock until this
    # transaction ends. The entry is found by its resource (``decision_entry``).
    audit.record(session, actor=_actor_name(actor), action="policy.decision", resource=f"policy_decision:{decision_id}",
                 outcome="allow" if decision.allow else "deny", details=details)
    return Decision(decision.allow, decision.reasons, decision.rule_ids, decision.revision, decision_id, path, decision.engine,
                    decision.obligations)


def decision_entry(session: Session, decision_id: int) -> AuditEntry | None:
    """The audit entry that records decision ``decision_id`` (None until its transaction committed)."""
    return session.scalar(sa.select(AuditEntry).where(AuditEntry.resource == f"policy_decision:{decision_id}",
                                                      AuditEntry.action == "policy.decision"))


def require(path: str, input: Mapping[str, Any], *, session: Session, actor: audit.Actor | str | User,
            service: PolicyService | None = None) -> Decision:
    """``decide``, raising ``PolicyDenied`` with the reasons when the decision is a deny.

    The decision and its audit entry are flushed before raising; a caller that wants them kept
    although it fails must commit (the CLI and API commit denied decisions).
    """
    decision = decide(path, input, session=session, actor=actor, service=service)
    if not decision.allow:
        raise PolicyDenied(f"{path} policy denied: {'; '.join(decision.reasons)}",
                           reasons=[f"{rule}: {reason}" for rule, reason in zip(decision.rule_ids, decision.reasons, strict=True)])
    return decision


def evaluate(path: str, input: Mapping[str, Any]) -> Decision:
    """Decide without recording (benchmarks, previews, ``policy eval --dry-run``)."""
    service = get_service()
    service.refresh(None)
    return service.evaluate(path, input)[0]


def policy_data(key: str) -> Any:
    """A read-only copy of policy data in force, by dotted key (``"screening.thresholds"``)."""
    service = get_service()
    service.refresh(None)
    if service.bundle is None:
        raise InvalidInput(f"policy data: no policy bundle is loaded ({service.last_error})")
    node: Any = service.bundle.data[DATA_ROOT]
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise InvalidInput(f"key: policy data has no {key!r}")
        node = node[part]
    return copy.deepcopy(node)


def revision() -> str:
    service = get_service()
    service.refresh(None)
    return service.bundle.revision if service.bundle else ""


def reload(session: Session | None = None) -> ReloadResult:
    return get_service().reload(session)


def status() -> dict[str, Any]:
    service = get_service()
    service.refresh(None)
    bundle = service.bundle
    return {"revision": bundle.revision if bundle else "", "engine": service.engine.name, "paths": bundle.paths if bundle else [],
            "source": bundle.source if bundle else str(service.directory), "edits": bundle.edits_applied if bundle else 0,
            "last_error": service.last_error}


def set_policy_data(session: Session, *, key: str, value: Any, actor: audit.Actor | str | User, note: str = "") -> str:
    """Edit policy data (``"prompt.max_length"``, 1500): checked (``check_edits``), stored, audited; the new revision."""
    domain = key.split(".")[0]
    if domain not in DOMAINS or "." not in key or not all(key.split(".")):
        raise InvalidInput(f"key: {key!r} must be <domain>.<field>, domain one of {', '.join(DOMAINS)}")
    bundle = check_edits(session, [(key, value)])
    _store_edit(session, key=key, value=value, actor=actor, note=note, revision=bundle.revision)
    return bundle.revision


def _store_edit(session: Session, *, key: str, value: Any, actor: audit.Actor | str | User, note: str, revision: str,
                details: Mapping[str, Any] | None = None) -> PolicyDataEdit:
    row = PolicyDataEdit(key=key, value={"value": value}, actor=_actor_name(actor), note=note, revision=revision)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor if isinstance(actor, audit.Actor | str) else _actor_name(actor),
                 action="policy.data.edit", resource=f"policy_data:{key}",
                 details={"key": key, "value": value, "revision": revision, "note": note, "edit": row.id, **(details or {})})
    session.flush()
    get_service()._checked_at = float("-inf")  # this process takes in its own edit at its next decision
    return row


def check_edits(session: Session, new: Sequence[tuple[str, Any]]) -> PolicyBundle:
    """The bundle with ``new`` applied, or ``InvalidInput`` naming the key and why: a wrong data shape, Rego
    that does not compile, or a Rego test passing with the data in force that cannot be evaluated with ``new``
    or fails in another domain than the edited ones (an edited domain's tests pin the value an edit changes)."""
    keys, edits = ", ".join(key for key, _ in new), _edits(session)
    domains, seen = {key.split(".")[0] for key, _ in new}, policy_domains(key for key, _ in new)
    try:
        bundle = load_bundle(get_service().directory, [*edits, *new])
        failed = failed_tests(bundle, seen)  # the tests this edit can change (none for host data)
    except (InvalidInput, CompileError) as error:
        raise InvalidInput(f"{keys}: {getattr(error, 'detail', f'the policies do not compile with this edit: {error}')}") from None
    before = _failing_in_force(edits, seen) if failed else set()
    broken = [r for r in failed if (r.package, r.name) not in before
              and (r.error or r.package.split("/")[-1].removesuffix("_test") not in domains)]
    if broken:
        named = "; ".join(f"data.{r.package.replace('/', '.')}.{r.name}" + (f" ({r.error[:200]})" if r.error else "")
                          for r in broken)
        raise InvalidInput(f"{keys}: the policies' Rego tests fail with this edit: {named}")
    return bundle


def _failing_in_force(edits: list[tuple[str, Any]], domains: set[str]) -> set[tuple[str, str]]:
    """The Rego tests that can see ``domains`` and already fail with the data edits in force."""
    try:
        return {(r.package, r.name) for r in failed_tests(load_bundle(get_service().directory, edits), domains)}
    except (InvalidInput, CompileError):  # the edits in force do not load: nothing to compare with
        return set()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
