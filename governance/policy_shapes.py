"""The shape of every policy-data domain: what ``policy_bundle`` checks before a bundle is used.

Each domain's checker raises ``InvalidInput`` naming the file or edit (``where``) and the field, so
a data file or a data edit with the wrong shape is refused with its path and the previous bundle
stays. ``parse_period`` reads a quota period (``calendar_month`` or ``rolling_days:N``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from latentops.core.errors import InvalidInput
from latentops.governance import personal_data
from latentops.governance.normalize import MAX_NGRAM, term_key
from latentops.governance.policy_names import check_names

_NUMBER = (int, float)


def _expect(condition: object, where: str, message: str) -> None:
    """Reject policy data that fails ``condition`` (any truthy value passes)."""
    if not condition:
        raise InvalidInput(f"{where}: {message}")


def _str_list(value: Any, where: str) -> None:
    _expect(isinstance(value, list) and all(isinstance(v, str) for v in value), where, "must be a list of strings")


def _check_prompt(data: Mapping[str, Any], where: str) -> None:
    _expect(isinstance(data.get("max_length"), int) and data["max_length"] > 0, f"{where}.max_length", "must be a positive integer")
    categories = data.get("blocked_categories")
    _expect(isinstance(categories, dict) and all(isinstance(v, str) for v in categories.values()),
            f"{where}.blocked_categories", "must map category names to labels")
    for key in ("blocked_terms", "ambiguous_terms"):
        terms: Any = data.get(key, {})
        _expect(isinstance(terms, dict), f"{where}.{key}", "must map categories to lists of terms")
        for category, items in terms.items():
            _str_list(items, f"{where}.{key}.{category}")
            for item in items:
                _expect(0 < len(term_key(item).split()) <= MAX_NGRAM, f"{where}.{key}.{category}",
                        f"term {item!r} must have 1 to {MAX_NGRAM} words after normalisation")
    _check_severity(data, categories, where)
    if "protected_names" in data:  # absent from the engines' document (HOST_KEYS)
        check_names(data["protected_names"], f"{where}.protected_names")
    personal: Any = data.get("personal_data")
    _expect(isinstance(personal, dict) and all(isinstance(personal.get(kind), str) for kind in personal_data.KINDS),
            f"{where}.personal_data", f"must give a label for each of {', '.join(personal_data.KINDS)}")
    allowed = personal.get("allowed_kinds", [])
    _str_list(allowed, f"{where}.personal_data.allowed_kinds")
    _expect(set(allowed) <= set(personal_data.KINDS), f"{where}.personal_data.allowed_kinds",
            f"must name kinds among {', '.join(personal_data.KINDS)}")
    regions = personal.get("phone_regions", [])
    _str_list(regions, f"{where}.personal_data.phone_regions")
    unknown = personal_data.unknown_regions(regions)
    _expect(not unknown, f"{where}.personal_data.phone_regions", f"unknown region codes: {', '.join(unknown)}")


_LEVELS = (0, 2, 4, 6)


def _check_severity(data: Mapping[str, Any], labels: Any, where: str) -> None:
    """``semantic``, ``block_at`` and ``team_block_at``: the severity model of the prompt policy."""
    semantic: Any = data.get("semantic")
    _expect(isinstance(semantic, dict) and isinstance(semantic.get("enabled"), bool), f"{where}.semantic.enabled", "must be true or false")
    _expect(semantic.get("unavailable") in ("deny", "keywords_only"), f"{where}.semantic.unavailable",
            "must be \"deny\" or \"keywords_only\"")
    _expect(semantic.get("keyword_level") in _LEVELS, f"{where}.semantic.keyword_level", f"must be one of {_LEVELS}")
    _expect(semantic.get("ambiguous_confirmed_at") in (None, *_LEVELS[1:]), f"{where}.semantic.ambiguous_confirmed_at",
            "must be a level of 2, 4 or 6, or null (ambiguous terms never count as listed)")
    _expect(isinstance(semantic.get("minors_present"), _NUMBER) and 0 <= semantic["minors_present"] <= 1,
            f"{where}.semantic.minors_present", "must be a score between 0 and 1")
    cuts: Any = semantic.get("cuts")
    _expect(isinstance(cuts, dict), f"{where}.semantic.cuts", "must map categories to {level: score} cuts")
    for category, levels in cuts.items():
        at = f"{where}.semantic.cuts.{category}"
        _expect(isinstance(levels, dict) and set(levels) == {"2", "4", "6"}, at, "must give the cuts for levels 2, 4 and 6")
        values = [levels[level] for level in ("2", "4", "6")]
        _expect(all(isinstance(v, _NUMBER) and 0 <= v <= 1 for v in values) and values == sorted(values), at,
                "cuts must be scores between 0 and 1, not decreasing from level 2 to 6")
    block_at: Any = data.get("block_at")
    _expect(isinstance(block_at, dict) and isinstance(labels, dict) and set(block_at) <= set(labels), f"{where}.block_at",
            "must map blocked categories (each with a label in blocked_categories) to a level")
    teams: Any = data.get("team_block_at", {})
    _expect(isinstance(teams, dict), f"{where}.team_block_at", "must map team names to {category: level}")
    for at, levels in [(f"{where}.block_at", block_at), *((f"{where}.team_block_at.{t}", v) for t, v in teams.items())]:
        _expect(isinstance(levels, dict) and all(k in block_at and v in _LEVELS[1:] for k, v in levels.items()), at,
                "must map known categories to a blocking level of 2, 4 or 6")


def _check_roles_map(value: Any, where: str) -> None:
    _expect(isinstance(value, dict) and all(isinstance(v, dict) and isinstance(v.get("roles"), list) for v in value.values()),
            where, "must map actions to {\"roles\": [...]}")


def _check_jobs(data: Mapping[str, Any], where: str) -> None:
    _check_roles_map(data.get("actions"), f"{where}.actions")
    _str_list(data.get("console_roles"), f"{where}.console_roles")
    limits: Any = data.get("limits")
    _expect(isinstance(limits, dict), f"{where}.limits", "must map roles to limits")
    for role, values in limits.items():
        for key in ("max_steps", "max_resolution", "max_rank", "max_batch", "max_processes"):
            _expect(isinstance(values, dict) and isinstance(values.get(key), _NUMBER) and values[key] >= 0,
                    f"{where}.limits.{role}.{key}", "must be a non-negative number")
    quotas: Any = data.get("quotas")
    _expect(isinstance(quotas, dict) and isinstance(quotas.get("default"), dict) and isinstance(quotas.get("teams", {}), dict),
            f"{where}.quotas", "must have a 'default' object and a 'teams' object")
    for key in ("max_concurrent_jobs", "max_queued_jobs", "max_gpu_hours"):
        _expect(isinstance(quotas["default"].get(key), _NUMBER), f"{where}.quotas.default.{key}", "must be a number")
    for name, quota in [("default", quotas["default"]), *((f"teams.{t}", v) for t, v in quotas.get("teams", {}).items())]:
        _expect(isinstance(quota, dict), f"{where}.quotas.{name}", "must be an object of quota overrides")
        for key in ("max_concurrent_jobs", "max_queued_jobs", "max_gpu_hours"):
            _expect(key not in quota or (isinstance(quota[key], _NUMBER) and not isinstance(quota[key], bool) and quota[key] >= 0),
                    f"{where}.quotas.{name}.{key}", "must be a non-negative number")
        _expect("period" not in quota or parse_period(quota["period"]), f"{where}.quotas.{name}.period",
                f"must be \"calendar_month\" or \"rolling_days:N\" with N from 1 to {MAX_PERIOD_DAYS}, got {quota.get('period')!r}")
    _str_list(data.get("attestation_required_for"), f"{where}.attestation_required_for")
    priority: Any = data.get("priority")
    _expect(isinstance(priority, dict) and isinstance(priority.get("roles", {}), dict), f"{where}.priority",
            "must have a 'default' rule and a 'roles' object")
    for name, rule in [("default", priority.get("default")), *((f"roles.{r}", v) for r, v in priority.get("roles", {}).items())]:
        _expect(isinstance(rule, dict) and all(isinstance(rule.get(k), int) and 0 <= rule[k] <= 9 for k in ("default", "max"))
                and rule["default"] <= rule["max"], f"{where}.priority.{name}",
                "must be {\"default\": 0-9, \"max\": 0-9} with default <= max")


MAX_PERIOD_DAYS = 366
_ROLLING = re.compile(r"rolling_days:([0-9]{1,3})")


def parse_period(period: Any) -> tuple[str, int] | None:
    """A GPU-hour quota period: ``("calendar_month", 0)``, ``("rolling_days", N)``; None when malformed."""
    match = _ROLLING.fullmatch(period) if isinstance(period, str) else None
    days = int(match.group(1)) if match else 0
    return ("calendar_month", 0) if period == "calendar_month" else ("rolling_days", days) if 1 <= days <= MAX_PERIOD_DAYS else None


def _check_models(data: Mapping[str, Any], where: str) -> None:
    for key in ("actions", "grant_actions", "grant_admin_roles", "console_roles"):
        _str_list(data.get(key), f"{where}.{key}")
    implied: Any = data.get("implied_by")
    _expect(isinstance(implied, dict), f"{where}.implied_by", "must map each action to the grants that imply it")
    for action in data["actions"]:
        _str_list(implied.get(action), f"{where}.implied_by.{action}")
    levels: Any = data.get("sensitivity")
    _expect(isinstance(levels, dict) and levels, f"{where}.sensitivity", "must map labels to rules")
    for label, rules in levels.items():
        _expect(isinstance(rules, dict), f"{where}.sensitivity.{label}", "must be an object")
        _str_list(rules.get("open_actions"), f"{where}.sensitivity.{label}.open_actions")
        _str_list(rules.get("allowed_roles"), f"{where}.sensitivity.{label}.allowed_roles")


def _check_datasets(data: Mapping[str, Any], where: str) -> None:
    _check_roles_map(data.get("actions"), f"{where}.actions")
    _str_list(data.get("console_roles"), f"{where}.console_roles")
    images = data.get("max_images")
    _expect(isinstance(images, dict) and all(isinstance(v, int) and v >= 0 for v in images.values()),
            f"{where}.max_images", "must map roles to non-negative integers")
    _expect(isinstance(data.get("max_resolution"), int), f"{where}.max_resolution", "must be an integer")


def _check_screening(data: Mapping[str, Any], where: str) -> None:
    thresholds = data.get("thresholds")
    _expect(isinstance(thresholds, dict) and thresholds
            and all(isinstance(v, _NUMBER) and 0 <= v <= 1 for v in thresholds.values()),
            f"{where}.thresholds", "must map categories to numbers between 0 and 1")
    _expect(isinstance(data.get("release_without_detector"), bool), f"{where}.release_without_detector", "must be true or false")
    _expect(isinstance(data.get("release_uncovered", False), bool), f"{where}.release_uncovered", "must be true or false")


def _check_access(data: Mapping[str, Any], where: str) -> None:
    actions: Any = data.get("actions")
    _expect(isinstance(actions, dict) and actions, f"{where}.actions", "must map API actions to {\"roles\", \"scopes\"}")
    for action, rules in actions.items():
        _expect(isinstance(rules, dict), f"{where}.actions.{action}", "must be an object")
        _str_list(rules.get("roles"), f"{where}.actions.{action}.roles")
        _str_list(rules.get("scopes"), f"{where}.actions.{action}.scopes")
    _str_list(data.get("all_teams_roles"), f"{where}.all_teams_roles")
    _str_list(data.get("console_roles"), f"{where}.console_roles")


# The copyright matcher's decision thresholds: (kind, low, high) per key; pHash distances are bits
# of 64 (beyond 32 any two images match), inliers at least the 8 a homography check needs and at
# most the 500 ORB features extracted per image.
COPYRIGHT_THRESHOLDS: dict[str, tuple[type, float, float]] = {
    "phash_max_distance": (int, 0, 32), "orb_min_inliers": (int, 8, 500), "clip_min_similarity": (float, 0.0, 1.0),
    "phash_support_distance": (int, 0, 32), "orb_support_inliers": (int, 8, 500),
}


def _check_copyright(data: Mapping[str, Any], where: str) -> None:
    _str_list(data.get("kinds"), f"{where}.kinds")
    _str_list(data.get("licence_applies_to"), f"{where}.licence_applies_to")
    thresholds: Any = data.get("thresholds")
    _expect(isinstance(thresholds, dict), f"{where}.thresholds", f"must be an object with {', '.join(COPYRIGHT_THRESHOLDS)}")
    unknown = sorted(set(thresholds) - set(COPYRIGHT_THRESHOLDS))
    _expect(not unknown, f"{where}.thresholds", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(COPYRIGHT_THRESHOLDS)}")
    for key, (kind, low, high) in COPYRIGHT_THRESHOLDS.items():
        value = thresholds.get(key)
        got = f"got {value!r}" if key in thresholds else "it is missing"
        if kind is int:
            _expect(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                    f"{where}.thresholds.{key}", f"must be an integer from {low:g} to {high:g}, {got}")
        else:
            _expect(isinstance(value, _NUMBER) and not isinstance(value, bool) and low < value <= high,
                    f"{where}.thresholds.{key}", f"must be a number above {low:g} and at most {high:g}, {got}")


# The longest retention of a personal payload in the audit trail, in days (100 years).
MAX_RETENTION_DAYS = 36_500


def _check_audit(data: Mapping[str, Any], where: str) -> None:
    """``retention_days``: action (or ``default``) -> days a sealed personal payload is kept."""
    retention: Any = data.get("retention_days")
    _expect(isinstance(retention, dict) and "default" in retention, f"{where}.retention_days",
            "must map actions (and \"default\") to days, e.g. {\"generation.request\": 90, \"default\": 365}")
    for action, days in retention.items():
        _expect(isinstance(action, str) and 0 < len(action) <= 64, f"{where}.retention_days",
                f"action names must be 1 to 64 characters, got {action!r}")
        _expect(isinstance(days, int) and not isinstance(days, bool) and 1 <= days <= MAX_RETENTION_DAYS,
                f"{where}.retention_days.{action}", f"must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, got {days!r}")


DATA_SHAPES = {
    "prompt": _check_prompt, "jobs": _check_jobs, "models": _check_models,
    "datasets": _check_datasets, "screening": _check_screening, "access": _check_access,
    "copyright": _check_copyright, "audit": _check_audit,
}


def check_data(domain: str, data: Any, where: str) -> None:
    """Raise ``InvalidInput`` naming ``where`` and the field when ``data`` has the wrong shape."""
    _expect(isinstance(data, dict), where, "must be a JSON object")
    checker = DATA_SHAPES.get(domain)
    if checker is not None:
        checker(data, where)


