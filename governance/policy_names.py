"""The protected-names list of the prompt policy: its entries, their identity, the file, edits.

The default list is ``governance/policies/prompt/protected_names.json`` (a JSON list of
``{"name", "category"}``), mounted by the bundle loader at ``data.policy_data.prompt.protected_names``.
While ``prompt/data.json`` still carries a ``protected_names`` key of its own, its entries are
shape-checked and kept after the file's, only where the file lacks their name: the file takes
precedence.

A name's identity is its normalised tokens without spaces (``name_key``): ``Spider-Man``,
``spider man`` and ``SPIDERMAN`` are one name, the same way the prompt matcher's compact form sees
them (``latentops.governance.normalize``). Two entries with one identity are duplicates.

Edits through the product store only what changed: a ``policy_data_edits`` row with the key
``prompt.protected_names`` and an object value ``{"add": [{name, category}], "remove": [name],
"recategorise": [{name, category}]}`` (``edit_names``), applied on top of the file in order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from latentops.core.errors import InvalidInput
from latentops.governance.normalize import MAX_NGRAM, term_key

NAMES_FILE = "protected_names.json"
NAMES_KEY = "prompt.protected_names"
NAME_CATEGORIES = ("trademarked character", "celebrity", "living artist")
MAX_NAME_CHARS = 200
EDIT_FIELDS = ("add", "remove", "recategorise")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _expect(condition: object, where: str, message: str) -> None:
    if not condition:
        raise InvalidInput(f"{where}: {message}")


@functools.lru_cache(maxsize=1 << 16)
def name_key(name: str) -> str:
    """A protected name's identity: its normalised tokens without spaces (``Spider-Man`` = ``spiderman``)."""
    return term_key(name).replace(" ", "")


@functools.lru_cache(maxsize=1 << 16)
def _words(name: str) -> int:
    return len(term_key(name).split())


def check_name_entry(entry: Any, where: str, *, strict: bool = True) -> None:
    """One ``{name, category}`` entry; ``strict`` (the names file, edits) also checks length and category."""
    _expect(isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("category", ""), str),
            where, "must be an object with string 'name' and 'category'")
    name = entry["name"]
    if strict:
        where = f"{where}.name"
        _expect(name.strip(), where, "must not be empty")
        _expect(len(name) <= MAX_NAME_CHARS, where, f"{name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
        _expect(not _CONTROL.search(name), where, f"{name!r} contains a control character")
        _expect(entry.get("category") in NAME_CATEGORIES, where.removesuffix(".name") + ".category",
                f"{entry.get('category')!r} is not a category; one of {', '.join(NAME_CATEGORIES)}")
    _expect(0 < _words(name) <= MAX_NGRAM, where, f"name {name!r} must have 1 to {MAX_NGRAM} words after normalisation")


def check_names(names: Any, where: str, *, strict: bool = False) -> None:
    """A protected-names list; ``strict`` also refuses duplicates after normalisation."""
    _expect(isinstance(names, list), where, "must be a list of {name, category} objects")
    seen: dict[str, int] = {}
    for i, entry in enumerate(names):
        check_name_entry(entry, f"{where}[{i}]", strict=strict)
        first = seen.setdefault(name_key(entry["name"]), i) if strict else i
        _expect(first == i, f"{where}[{i}].name",
                f"{entry['name']!r} is {names[first]['name']!r} (entry {first}) after normalisation")


def merge_names(primary: list[dict[str, str]], extra: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """``primary`` then the entries of ``extra`` whose name it lacks (``primary`` wins on the same name)."""
    seen = {name_key(entry["name"]) for entry in primary}
    return [*primary, *(entry for entry in extra if name_key(entry["name"]) not in seen)]


def mount(document: dict[str, Any], names: Any, where: str, data_where: str) -> None:
    """Put the names file's list (read from ``where``) into the prompt ``document`` of ``data_where``."""
    check_names(names, where, strict=True)
    if "protected_names" in document:
        check_names(document["protected_names"], f"{data_where}.protected_names")
    document["protected_names"] = merge_names(names, document.get("protected_names", []))


def edit_names(entries: dict[str, dict[str, str]], edit: Mapping[str, Any], where: str) -> None:
    """Apply ``{"add", "remove", "recategorise"}`` to ``entries`` (keyed by ``name_key``), in that order.

    Replaying stored edits is lenient (removing a name that is gone does nothing, adding one that
    is there replaces it), since the file under them may have changed since; ``check_edit`` is the
    strict check against the list in force, made before an edit is stored.
    """
    _expect(edit and not set(edit) - set(EDIT_FIELDS), where,
            'must be {"add": [{name, category}], "remove": [name], "recategorise": [{name, category}]}')
    for field in EDIT_FIELDS:
        _expect(isinstance(edit.get(field, []), list), f"{where}.{field}", "must be a list")
    for i, entry in enumerate(edit.get("add", [])):
        check_name_entry(entry, f"{where}.add[{i}]", strict=False)
        entries[name_key(entry["name"])] = {"name": entry["name"], "category": entry.get("category", "")}
    for i, name in enumerate(edit.get("remove", [])):
        _expect(isinstance(name, str), f"{where}.remove[{i}]", "must be a name")
        entries.pop(name_key(name), None)
    for i, entry in enumerate(edit.get("recategorise", [])):
        check_name_entry(entry, f"{where}.recategorise[{i}]", strict=False)
        found = entries.get(name_key(entry["name"]))
        if found is not None:
            entries[name_key(entry["name"])] = {**found, "category": entry.get("category", "")}


def check_edit(names: Iterable[Mapping[str, str]], edit: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check an edit strictly against the list in force ``names``, before it is stored.

    Raises ``InvalidInput`` naming the field and entry (``add[2].name: ...``) for an entry that is
    not ``{name, category}``, an empty name, one over ``MAX_NAME_CHARS`` characters or with more
    than ``MAX_NGRAM`` words, an unknown category, a name given twice in the edit (after
    normalisation) or added although the list has it. Returns ``(field, name)`` for each name to
    remove or re-categorise that the list lacks, so that the caller can answer "not found".
    """
    _expect(edit and not set(edit) - set(EDIT_FIELDS), "edit",
            'must be {"add": [{name, category}], "remove": [name], "recategorise": [{name, category}]}')
    current = {name_key(entry["name"]): entry["name"] for entry in names}
    given: dict[str, str] = {}
    unknown: list[tuple[str, str]] = []
    for field in EDIT_FIELDS:
        items = edit.get(field, [])
        _expect(isinstance(items, list), field, "must be a list")
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            if field == "remove":
                _expect(isinstance(item, str) and item.strip(), where, "must be a name")
            else:
                check_name_entry(item, where)
                where += ".name"
            name = item if field == "remove" else item["name"]
            key = name_key(name)
            _expect(key not in given, where, f"{name!r} is given twice in this edit (also {given.get(key)})")
            given[key] = where
            if field == "add":
                _expect(key not in current, where, f"{name!r} is already protected (as {current.get(key)!r})")
            elif key not in current:
                unknown.append((where, name))
    return unknown


# Keys whose object-valued edits edit the list in place (``policy_bundle.apply_edits``).
LIST_EDITS: dict[str, Callable[[dict[str, dict[str, str]], Mapping[str, Any], str], None]] = {NAMES_KEY: edit_names}
