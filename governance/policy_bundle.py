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
the document the engines load. Every data file is shape-checked (``policy_shapes.DATA_SHAPES``) before a
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
from latentops.governance import policy_names
from latentops.governance.normalize import PromptIndex
from latentops.governance.policy_names import LIST_EDITS, NAMES_FILE, NAMES_KEY, check_names, name_key
from latentops.governance.policy_shapes import check_data

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


def policy_domains(keys: Iterable[str]) -> set[str]:
    """The domains of ``data.policy_data`` that edits of ``keys`` change for the policies: host data
    (``HOST_KEYS``, the protected names), which no policy reads, changes none."""
    return {key.split(".")[0] for key in keys
            if not any(key == host or key.startswith(f"{host}.") for host in HOST_KEYS)}


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
