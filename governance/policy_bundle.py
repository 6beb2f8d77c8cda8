"""Policy bundles: the Rego modules and data in force, and their revision.

A bundle is read from a policy folder (``governance/policies`` by default)::

    <domain>/<name>.rego         policy modules (package latentops.<domain>)
    <domain>/<name>_test.rego    their tests (package latentops.<domain>_test)
    <domain>/data.json           editable lists and limits, mounted at data.policy_data.<domain>
    prompt/protected_names.json  the default protected-names list (``policy_names.py``)

Data edits made through the product (``policy_data_edits`` rows) are applied on top of the files,
in order. An edit whose key is a list in ``LIST_EDITS`` and whose value is an object edits that
list instead of replacing it (``{"add": [...], "remove": [...], "recategorise": [...]}``,
``policy_names.py``), so an edit of a 10,000-name list stores only what changed. The **revision**
is the SHA-256 over the policy modules (tests excluded: they do not change a decision) and the
canonical JSON of the effective data, so any change to either gives a new revision. The data the
host matches and no policy reads (``HOST_KEYS``: the protected names) is in ``host_data``, not in
the document the engines load. Every data file is shape-checked against ``DATA_SHAPES`` before a
bundle is used: a file with the wrong shape is refused with its path and field, and the previous
bundle stays.

``PolicyBundle.tarball`` is the bundle as OPA loads it (``.tar.gz``: the modules, ``/data.json``
and a ``.manifest`` whose revision is the bundle revision). Its data also carries
``latentops_meta.revision``, so the revision an OPA server holds can be read back as data. The
bytes depend only on the bundle (no timestamps), so every process serving a revision serves the
same file. ``latentops policy bundle`` writes it; ``GET /api/v1/policies/bundle.tar.gz`` serves it
to OPA servers that pull their bundle (docs/policy.md).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import rfc8785

from latentops.core.errors import InvalidInput
from latentops.governance import personal_data, policy_names
from latentops.governance.normalize import MAX_NGRAM, PromptIndex, term_key
from latentops.governance.policy_names import LIST_EDITS, NAMES_FILE, NAMES_KEY, check_names, name_key

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent / "policies"
DATA_ROOT = "policy_data"
META_ROOT = "latentops_meta"
# The parts of OPA's data tree a bundle owns: OPA refuses REST writes under them while it serves it.
BUNDLE_ROOTS = ("latentops", DATA_ROOT, META_ROOT)
DOMAINS = ("prompt", "jobs", "models", "datasets", "screening", "access", "copyright", "audit")
# Data the host matches and no policy reads: kept out of the engines' document (``PolicyBundle.data``),
# which every interpreter copies (10,000 names made loading a bundle take 30 s), and in ``host_data``.
HOST_KEYS = (NAMES_KEY,)
_PACKAGE_RE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)
_TEST_RE = re.compile(r"^(test_\w+)\s+if\b", re.MULTILINE)


@dataclass(frozen=True)
class PolicyBundle:
    """One immutable revision: modules, tests and effective data."""

    revision: str
    modules: dict[str, str]  # relative path -> source
    tests: dict[str, str]  # relative path -> source
    data: dict[str, Any]  # the whole data document: {"policy_data": {...}}
    source: str = ""
    edits_applied: int = 0
    errors: list[str] = field(default_factory=list)
    # Effective data the host matches and no policy reads (``HOST_KEYS``): {"prompt": {"protected_names": [...]}}.
    host_data: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def tarball(self) -> bytes:
        """The OPA bundle (``.tar.gz``) of this revision; built once per bundle."""
        return tarball_bytes(self)

    @cached_property
    def prompt_index(self) -> PromptIndex:
        return PromptIndex.from_data({**self.data[DATA_ROOT].get("prompt", {}), **self.host_data.get("prompt", {})})

    def entrypoint(self, path: str) -> str:
        """``prompt`` -> ``latentops/prompt/decision`` (what the engines query)."""
        return f"latentops/{path}/decision"

    @property
    def paths(self) -> list[str]:
        return sorted({pkg.removeprefix("latentops.") for pkg in (package_of(src) for src in self.modules.values())
                       if pkg.startswith("latentops.") and pkg != "latentops.lib"})

    def test_names(self) -> list[tuple[str, str]]:
        """``(package path with slashes, test rule)`` for every test, e.g. ``("latentops/prompt_test", "test_x")``."""
        found: list[tuple[str, str]] = []
        for source in self.tests.values():
            package = package_of(source).replace(".", "/")
            found.extend((package, name) for name in _TEST_RE.findall(source))
        return sorted(found)


def package_of(source: str) -> str:
    match = _PACKAGE_RE.search(source)
    return match.group(1) if match else ""


# --- data shapes ---------------------------------------------------------------------------------

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


# --- loading -------------------------------------------------------------------------------------


def _parent(data: dict[str, Any], key: str) -> dict[str, Any]:
    node = data
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidInput(f"key: {key!r} goes through a value that is not an object")
    return node


def apply_edits(data: dict[str, Any], edits: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Apply ``(dotted key, value)`` edits, e.g. ``("prompt.max_length", 1500)``, to a copy.

    Consecutive list edits (``LIST_EDITS``) work on one index of the list by name, written back
    before the next whole-value edit and at the end, so replaying many of them stays linear.
    """
    result = copy.deepcopy(data)
    lists: dict[str, dict[str, Any]] = {}

    def write_back() -> None:
        for list_key, entries in lists.items():
            _parent(result, list_key)[list_key.rsplit(".", 1)[-1]] = list(entries.values())
        lists.clear()

    for key, value in edits:
        if key in LIST_EDITS and isinstance(value, dict):
            if key not in lists:
                current = _parent(result, key).get(key.rsplit(".", 1)[-1], [])
                check_names(current, f"policy data {key}")
                lists[key] = {name_key(entry["name"]): entry for entry in current}
            LIST_EDITS[key](lists[key], value, f"value of {key}")
            continue
        write_back()
        _parent(result, key)[key.rsplit(".", 1)[-1]] = value
    write_back()
    return result


def compute_revision(modules: Mapping[str, str], data: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for path in sorted(modules):
        digest.update(path.encode() + b"\0" + modules[path].encode() + b"\0")
    digest.update(rfc8785.dumps(dict(data)))
    return digest.hexdigest()


def read_files(directory: Path) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Modules, tests and per-domain data from ``directory``; data files are shape-checked."""
    if not directory.is_dir():
        raise InvalidInput(f"policy folder: {directory} does not exist")
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    data: dict[str, Any] = {}
    for path in sorted(directory.rglob("*.rego")):
        relative = path.relative_to(directory).as_posix()
        (tests if path.stem.endswith("_test") else modules)[relative] = path.read_text(encoding="utf-8")
    for path in sorted(directory.rglob("data.json")):
        relative = path.relative_to(directory).as_posix()
        domain = path.parent.relative_to(directory).as_posix().replace("/", ".")
        document = _read_json(path, relative)
        names_file = path.parent / NAMES_FILE  # the default protected-names list (policy_names.py)
        if domain == "prompt" and names_file.is_file() and isinstance(document, dict):
            where = names_file.relative_to(directory).as_posix()
            policy_names.mount(document, _read_json(names_file, where), where, relative)
        check_data(domain, document, relative)
        data[domain] = document
    if not modules:
        raise InvalidInput(f"policy folder: {directory} holds no .rego modules")
    return modules, tests, data


def _read_json(path: Path, relative: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{relative}: not valid JSON ({error.msg} at line {error.lineno})") from None


def load_bundle(directory: Path | None = None, edits: Sequence[tuple[str, Any]] = ()) -> PolicyBundle:
    """Read, shape-check and hash a bundle (compilation is the engine's job)."""
    directory = directory or DEFAULT_POLICY_DIR
    modules, tests, data = read_files(directory)
    effective = apply_edits(data, edits)
    for domain in {key.split(".")[0] for key, _ in edits}:
        check_data(domain, effective.get(domain), f"policy data edit of {domain}")
    host: dict[str, Any] = {}
    for key in HOST_KEYS:
        domain, name = key.split(".", 1)
        if name in effective.get(domain, {}):
            host.setdefault(domain, {})[name] = effective[domain].pop(name)
    document = {DATA_ROOT: effective}
    return PolicyBundle(
        revision=compute_revision(modules, {**document, "host_data": host}), modules=modules, tests=tests, data=document,
        source=str(directory), edits_applied=len(edits), host_data=host,
    )


def fingerprint(directory: Path | None = None) -> str:
    """A cheap change detector for the policy folder: names, sizes and modification times."""
    directory = directory or DEFAULT_POLICY_DIR
    parts = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in {".rego", ".json"}:
            stat = path.stat()
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def tarball_bytes(bundle: PolicyBundle) -> bytes:
    """An OPA bundle: modules (tests excluded), ``/data.json`` and ``/.manifest`` with the revision.

    Entries and the gzip header carry no timestamps, so the same revision gives the same bytes.
    """
    files: dict[str, bytes] = {f"/{path}": source.encode() for path, source in bundle.modules.items()}
    files["/data.json"] = json.dumps({**bundle.data, META_ROOT: {"revision": bundle.revision}}, sort_keys=True).encode()
    files["/.manifest"] = json.dumps({"revision": bundle.revision, "roots": list(BUNDLE_ROOTS)}).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as archive:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_tarball(bundle: PolicyBundle, target: Path) -> Path:
    """Write the OPA bundle (``.tar.gz`` with ``.manifest``) to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bundle.tarball)
    return target
