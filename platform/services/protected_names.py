"""The prompt policy's protected names: search the list in force, and edit it as compliance.

The list is ``governance/policies/prompt/protected_names.json`` with the edits made through the
product on top (``governance/policy_names.py``). Reading is the ``policies.read`` action (every
role); editing is ``policies.names.manage`` (compliance officers and admins, token scopes
``admin`` or ``audit``), both decided by the access policy.

An edit adds names, removes names or changes names' categories. It is checked against the list in
force before anything is stored: an empty name, one longer than ``MAX_NAME_CHARS`` characters or
with more words than the prompt matcher looks at (``normalize.MAX_NGRAM``), an unknown category,
or a name given twice after normalisation (``Spider-Man`` = ``spiderman``) is ``InvalidInput``
naming the field and entry (``add[2].name: ...``); removing or re-categorising a name the list
lacks is ``NotFound``. An edit that passes is one ``policy_data_edits`` row (key
``prompt.protected_names``, the edit as its value: only what changed), one ``policy.data.edit``
audit entry with the actor, and a new policy revision, which every answer names.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound, ServiceUnavailable
from latentops.governance import access, policy, policy_names
from latentops.governance.access import Principal
from latentops.governance.policy_bundle import PolicyBundle
from latentops.governance.policy_names import NAME_CATEGORIES, NAMES_KEY, name_key

READ_ACTION = "policies.read"
MANAGE_ACTION = "policies.names.manage"
MAX_PAGE = 500
MAX_EDIT_NAMES = 1000

_sorted_lock = threading.Lock()
_sorted: tuple[str, list[tuple[str, dict[str, str]]]] = ("", [])


def _in_force(bundle: PolicyBundle) -> list[tuple[str, dict[str, str]]]:
    """``(name_key, entry)`` of the bundle's list, sorted by name; computed once per revision."""
    global _sorted
    with _sorted_lock:
        if _sorted[0] != bundle.revision:
            names = bundle.host_data.get("prompt", {}).get("protected_names", [])
            _sorted = (bundle.revision, sorted(((name_key(e["name"]), e) for e in names),
                                               key=lambda item: (item[1]["name"].casefold(), item[1]["name"])))
        return _sorted[1]


def _bundle(session: Session, *, now: bool = False) -> PolicyBundle:
    """The bundle in force; ``now`` re-reads the data edits first (an edit is checked against them)."""
    if now:
        result = policy.reload(session)
        if not result.ok:
            raise ServiceUnavailable(f"policy: the policy data does not load ({result.error})")
    else:
        policy.get_service().refresh(session)
    bundle = policy.get_service().bundle
    if bundle is None:
        raise ServiceUnavailable(f"policy: no policy revision is in force ({policy.get_service().last_error})")
    return bundle


def list_names(session: Session, principal: Principal, *, q: str = "", category: str | None = None,
               limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """A page of the list in force, sorted by name: ``q`` matches any part of the normalised name
    (``rutkowski``, ``spiderman`` and ``Spider-Man`` find ``Spider-Man``), ``category`` one category."""
    access.check(session, principal=principal, action=READ_ACTION)
    if category and category not in NAME_CATEGORIES:
        raise InvalidInput(f"category: {category!r} is not a category; one of {', '.join(NAME_CATEGORIES)}")
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise InvalidInput(f"limit: must be from 1 to {MAX_PAGE}, and offset at least 0")
    bundle = _bundle(session)
    needle = name_key(q) if q.strip() else ""
    found = [entry for key, entry in _in_force(bundle)
             if (not category or entry.get("category") == category) and (not q.strip() or (needle and needle in key))]
    page = found[offset:offset + limit]
    return {"items": [{"name": e["name"], "category": e.get("category", "")} for e in page], "total": len(found),
            "offset": offset, "limit": limit, "next_offset": offset + limit if offset + limit < len(found) else None,
            "revision": bundle.revision, "categories": list(NAME_CATEGORIES)}


def edit(session: Session, principal: Principal, *, add: Sequence[Mapping[str, Any]] = (), remove: Sequence[str] = (),
         recategorise: Sequence[Mapping[str, Any]] = (), note: str = "") -> dict[str, Any]:
    """Add, remove and re-categorise names in one audited edit; returns the new revision and counts."""
    access.check(session, principal=principal, action=MANAGE_ACTION)
    value: dict[str, Any] = {field: list(items) for field, items in
                             (("add", add), ("remove", remove), ("recategorise", recategorise)) if items}
    if not value:
        raise InvalidInput("names: the edit adds, removes and re-categorises nothing")
    if sum(len(items) for items in value.values()) > MAX_EDIT_NAMES:
        raise InvalidInput(f"names: at most {MAX_EDIT_NAMES} names per edit")
    value = {field: [_clean(item) for item in items] for field, items in value.items()}
    bundle = _bundle(session, now=True)
    in_force = [entry for _key, entry in _in_force(bundle)]
    unknown = policy_names.check_edit(in_force, value)
    if unknown:
        where, name = unknown[0]
        raise NotFound(f"{where}: {name!r} is not a protected name")
    revision = policy.set_policy_data(session, key=NAMES_KEY, value=value, actor=principal.email, note=note.strip())
    return {"revision": revision, "previous_revision": bundle.revision,
            "added": value.get("add", []), "removed": value.get("remove", []), "recategorised": value.get("recategorise", []),
            "total": len(in_force) + len(value.get("add", [])) - len(value.get("remove", []))}


def _clean(item: Any) -> Any:
    """Names without surrounding spaces (``" Totoro "`` is stored as ``"Totoro"``); other shapes as given."""
    if isinstance(item, str):
        return item.strip()
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        return {"name": item["name"].strip(), "category": item.get("category")}
    return item


def add(session: Session, principal: Principal, names: Sequence[Mapping[str, Any]], *, note: str = "") -> dict[str, Any]:
    return edit(session, principal, add=names, note=note)


def remove(session: Session, principal: Principal, names: Sequence[str], *, note: str = "") -> dict[str, Any]:
    return edit(session, principal, remove=names, note=note)


def recategorise(session: Session, principal: Principal, name: str, category: str, *, note: str = "") -> dict[str, Any]:
    return edit(session, principal, recategorise=[{"name": name, "category": category}], note=note)
