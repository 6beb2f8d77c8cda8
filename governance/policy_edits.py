"""Policy data edits as revisions: the data in force, the history, diffs and rollbacks.

Every edit made through the product (``policy.set_policy_data``) is one ``policy_data_edits`` row;
its id is the data's revision number (0 is the policy files' data). This module reads them::

    policy_edits.data_in_force(db)               # {"revision", "edit", "edits", "domains": {...}}
    policy_edits.history(db, key="screening")    # the edits, newest first, paged
    policy_edits.diff(db, to=3)                  # what revision 3 changed, per dotted key
    policy_edits.rollback(db, to=0, actor=a, note="why")   # restore a revision with new edits

A rollback's edits are checked (``policy.check_edits``) and audited like any edit.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.core.tables import User
from latentops.governance import audit
from latentops.governance.policy import _edit_count, _store_edit, check_edits, get_service
from latentops.governance.policy_bundle import DATA_ROOT, apply_edits, read_files
from latentops.governance.tables import PolicyDataEdit

MAX_HISTORY_PAGE = 200
# A list longer than this shows in a diff as the entries added and removed only.
DIFF_LIST_ITEMS = 50


def _edit_rows(session: Session, *, upto: int | None = None) -> list[PolicyDataEdit]:
    query = sa.select(PolicyDataEdit).order_by(PolicyDataEdit.id)
    if upto is not None:
        query = query.where(PolicyDataEdit.id <= upto)
    return list(session.scalars(query))


def edit_json(row: PolicyDataEdit) -> dict[str, Any]:
    """One revision of the policy data as history shows it."""
    created = row.created_at
    return {"id": row.id, "key": row.key, "value": row.value.get("value"), "actor": row.actor, "note": row.note,
            "revision": row.revision, "at": created.isoformat() if created else None}


def data_in_force(session: Session, domain: str | None = None) -> dict[str, Any]:
    """The policy data in force per domain (the protected names excepted: they have their own list),
    with the bundle revision and the id of the latest edit (``edit``: 0 when the files' data is in force)."""
    service = get_service()
    service.refresh(session)
    bundle = service.bundle
    if bundle is None:
        raise InvalidInput(f"policy data: no policy bundle is loaded ({service.last_error})")
    data = bundle.data[DATA_ROOT]
    if domain is not None and domain not in data:
        raise NotFound(f"domain: no policy data domain {domain!r}; known: {', '.join(sorted(data))}")
    latest = session.scalar(sa.select(sa.func.max(PolicyDataEdit.id))) or 0
    return {"revision": bundle.revision, "edit": int(latest), "edits": _edit_count(session),
            "domains": {name: copy.deepcopy(value) for name, value in sorted(data.items()) if domain in (None, name)}}


def history(session: Session, *, key: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """The data edits (revisions), newest first; ``key`` keeps the edits of that key or below it
    (``screening`` or ``screening.thresholds``)."""
    if not 1 <= limit <= MAX_HISTORY_PAGE or offset < 0:
        raise InvalidInput(f"limit: must be from 1 to {MAX_HISTORY_PAGE}, and offset at least 0")
    query = sa.select(PolicyDataEdit)
    if key:
        query = query.where(sa.or_(PolicyDataEdit.key == key, PolicyDataEdit.key.startswith(f"{key}.", autoescape=True)))
    total = int(session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(query.order_by(PolicyDataEdit.id.desc()).offset(offset).limit(limit))
    items = [edit_json(row) for row in rows]
    return {"items": items, "total": total, "offset": offset, "limit": limit,
            "next_offset": offset + limit if offset + limit < total else None}


def _data_at(session: Session, edit_id: int) -> dict[str, Any]:
    """The effective policy data after edit ``edit_id`` (0: the files' data), on the files of today."""
    if edit_id < 0:
        raise InvalidInput(f"revision: must be 0 (the policy files' data) or an edit id, got {edit_id}")
    if edit_id and session.get(PolicyDataEdit, edit_id) is None:
        raise NotFound(f"revision: no policy data revision {edit_id}")
    _modules, _tests, data = read_files(get_service().directory)
    return apply_edits(data, [(row.key, row.value["value"]) for row in _edit_rows(session, upto=edit_id)])


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        for name, inner in value.items():
            _flatten(inner, f"{prefix}.{name}" if prefix else str(name), out)
    else:
        out[prefix] = value
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def diff_data(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed between two data documents, per dotted key (leaves); lists also say which entries
    were added and removed, and a long list (``DIFF_LIST_ITEMS``) only that."""
    flat_before, flat_after = _flatten(before, "", {}), _flatten(after, "", {})
    changes = []
    for key in sorted(set(flat_before) | set(flat_after)):
        old, new = flat_before.get(key, _MISSING), flat_after.get(key, _MISSING)
        if old is not _MISSING and new is not _MISSING and _canonical(old) == _canonical(new):
            continue
        change: dict[str, Any] = {"key": key, "change": "added" if old is _MISSING else "removed" if new is _MISSING else "changed"}
        if isinstance(old, list) or isinstance(new, list):
            old_items = {_canonical(v): v for v in (old if isinstance(old, list) else [])}
            new_items = {_canonical(v): v for v in (new if isinstance(new, list) else [])}
            change["added"] = [v for k, v in new_items.items() if k not in old_items]
            change["removed"] = [v for k, v in old_items.items() if k not in new_items]
            if max(len(old_items), len(new_items)) > DIFF_LIST_ITEMS:
                changes.append(change)
                continue
        if old is not _MISSING:
            change["before"] = old
        if new is not _MISSING:
            change["after"] = new
        changes.append(change)
    return changes


_MISSING = object()


def diff(session: Session, *, to: int, since: int | None = None) -> dict[str, Any]:
    """The changes from revision ``since`` (default: the one before ``to``) to revision ``to``;
    revision 0 is the data of the policy files."""
    if since is None:
        since = int(session.scalar(sa.select(sa.func.max(PolicyDataEdit.id)).where(PolicyDataEdit.id < to)) or 0)
    before, after = _data_at(session, since), _data_at(session, to)
    edit = session.get(PolicyDataEdit, to) if to else None
    return {"from": since, "to": to, "edit": edit_json(edit) if edit is not None else None,
            "changes": diff_data(before, after)}


def rollback(session: Session, *, to: int, actor: audit.Actor | str | User, note: str) -> dict[str, Any]:
    """Restore the data of revision ``to`` (0: the policy files' data) with new edits, checked like any
    edit (``check_edits``) and audited (``policy.data.edit`` with ``rollback_to``); history keeps
    everything. Each field that differs gets one edit; a domain that gained a field since is
    restored whole. Returns the new revision and the edits made."""
    if not note.strip():
        raise InvalidInput("note: say why the data is rolled back (kept with the edit and in the audit trail)")
    target, current = _data_at(session, to), _data_at(session, int(session.scalar(sa.select(sa.func.max(PolicyDataEdit.id))) or 0))
    edits: list[tuple[str, Any]] = []
    for domain in sorted(set(target) | set(current)):
        then, now = target.get(domain, {}), current.get(domain, {})
        if _canonical(then) == _canonical(now):
            continue
        if set(now) - set(then):
            edits.append((domain, then))
            continue
        edits += [(f"{domain}.{name}", value) for name, value in then.items() if _canonical(value) != _canonical(now.get(name))]
    if not edits:
        raise InvalidInput(f"to: the data in force already is the data of revision {to}; there is nothing to restore")
    bundle = check_edits(session, edits)
    rows = [_store_edit(session, key=key, value=value, actor=actor, note=f"rollback to revision {to}: {note.strip()}",
                        revision=bundle.revision, details={"rollback_to": to}) for key, value in edits]
    return {"revision": bundle.revision, "restored": to, "edits": [edit_json(row) for row in rows]}
