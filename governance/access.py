"""Route-level access: who may call which API action, with which token, on which team's resources.

Every REST route and portal page asks :func:`check` before it calls a service. The decision is the
``access`` policy's (``governance/policies/access``): roles per action, the scopes a personal API
token needs, and team isolation. No role is checked in Python.

Decisions are pure functions of their input and the bundle revision, so allowed decisions are
cached per revision and not recorded (a page view is not evidence; the services record what they
change). A **denial** is recorded like every other policy decision (``policy.decide``: decision
row and audit entry) before ``PolicyDenied`` is raised. A denial only for team isolation
(``access.team``) becomes ``NotFound`` with the caller's message instead, so a member of one team
cannot learn that another team's job, model or image exists.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.core.tables import User
from latentops.governance import policy

log = logging.getLogger(__name__)

PATH = "access"
TEAM_RULE = "access.team"
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, their policy subject and, for API tokens, the token's scopes."""

    user: User
    subject: dict[str, Any]
    scopes: tuple[str, ...] | None = None  # None: a browser session (no token)
    via: str = "session"  # "token" | "session"
    csrf_token: str = ""
    session_id: int | None = None
    token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def teams(self) -> list[str]:
        return sorted({m["team"] for m in self.subject.get("memberships", [])})


def principal_for(session: Session, user: User, *, scopes: tuple[str, ...] | None = None, via: str = "session",
                  csrf_token: str = "", session_id: int | None = None, token_id: int | None = None) -> Principal:
    return Principal(user=user, subject=policy.subject_for(session, user), scopes=scopes, via=via,
                     csrf_token=csrf_token, session_id=session_id, token_id=token_id)


class _DecisionCache:
    """Allowed/denied results per (revision, canonical input); a small LRU shared by threads."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, policy.Decision] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> policy.Decision | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, decision: policy.Decision) -> None:
        with self._lock:
            self._items[key] = decision
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_cache = _DecisionCache()


def access_input(principal: Principal, action: str, resource: Mapping[str, Any] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "action": action, "subject": principal.subject,
        "token": {"scopes": list(principal.scopes)} if principal.scopes is not None else None,
    }
    if resource is not None:
        document["resource"] = dict(resource)
    return document


def evaluate(session: Session, document: Mapping[str, Any]) -> policy.Decision:
    """The access decision for ``document``, unrecorded (cached per bundle revision)."""
    service = policy.get_service()
    service.refresh(session)  # picks up policy data edits made through the product
    revision = service.bundle.revision if service.bundle else ""
    key = revision + "\0" + json.dumps(document, sort_keys=True, default=str)
    cached = _cache.get(key) if revision else None
    if cached is not None:
        return cached
    decision = service.evaluate(PATH, document)[0]
    if revision and decision.rule_ids != [policy.UNAVAILABLE_RULE]:
        _cache.put(key, decision)
    return decision


def check(session: Session, *, principal: Principal, action: str, resource: Mapping[str, Any] | None = None,
          not_found: str = "not found") -> policy.Decision:
    """Allow, or raise: ``NotFound(not_found)`` for another team's resource, ``PolicyDenied`` otherwise.

    ``resource`` is ``{"team": <owning team name or None>, "granted": bool}`` when the action is on
    one team's resource.
    """
    document = access_input(principal, action, resource)
    decision = evaluate(session, document)
    if decision.allow:
        return decision
    if set(decision.rule_ids) == {TEAM_RULE}:
        raise NotFound(not_found)
    # Record the denial (decision row + audit entry) and raise PolicyDenied with its reasons.
    return policy.require(PATH, document, session=session, actor=principal.user)


def allowed(session: Session, *, principal: Principal, action: str, resource: Mapping[str, Any] | None = None) -> bool:
    """Whether ``action`` would be allowed, without recording anything (for showing or hiding UI)."""
    return evaluate(session, access_input(principal, action, resource)).allow


def sees_all_teams(session: Session, *, principal: Principal, action: str) -> bool:
    """True when the principal sees every team's resources for ``action`` (lists need no team filter)."""
    return allowed(session, principal=principal, action=action, resource={"team": None, "granted": False})
