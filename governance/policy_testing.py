"""Running the Rego tests of a bundle, on any engine, with rule-id coverage.

Tests are the ``test_*`` rules of ``*_test.rego`` modules; a test passes when it evaluates to
``true``. rego-cpp has no evaluation tracer, so coverage is measured over **rule ids**: every
rule id a policy can emit (the literal first argument of ``lib.violation``, or the literal prefix
of a computed one such as ``jobs.limit.``) must be named by at least one test. A run with no
tests fails, like ``opa test`` with no tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from latentops.governance.policy_bundle import DATA_ROOT, PolicyBundle, package_of
from latentops.governance.policy_engine import EmbeddedEngine, Engine, EngineUnavailable, modules_for

_LITERAL_ID = re.compile(r'lib\.violation\(\s*"([a-z_]+\.[a-z_.]+)"')
_PREFIX_ID = re.compile(r'lib\.violation\(\s*(?:concat\(""\s*,\s*\[\s*"|sprintf\(\s*")([a-z_]+\.[a-z_.]*)')


@dataclass(frozen=True)
class TestResult:
    package: str
    name: str
    passed: bool
    error: str = ""


@dataclass
class TestReport:
    results: list[TestResult]
    rule_ids: list[str] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed]

    @property
    def coverage(self) -> float:
        return 100.0 if not self.rule_ids else 100.0 * len(self.covered) / len(self.rule_ids)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed

    def summary(self) -> dict[str, object]:
        return {
            "tests": len(self.results), "passed": len(self.results) - len(self.failed), "failed": len(self.failed),
            "rule_ids": len(self.rule_ids), "covered": len(self.covered), "coverage": round(self.coverage, 1),
            "uncovered": sorted(set(self.rule_ids) - set(self.covered)),
        }


def declared_rule_ids(bundle: PolicyBundle) -> list[str]:
    """Rule ids (and computed-id prefixes ending in ``.``) the policy modules can emit."""
    found: set[str] = set()
    for source in bundle.modules.values():
        found.update(_LITERAL_ID.findall(source))
        found.update(prefix for prefix in _PREFIX_ID.findall(source) if prefix.endswith("."))
    return sorted(found)


def covered_rule_ids(bundle: PolicyBundle, rule_ids: list[str]) -> list[str]:
    text = "\n".join(bundle.tests.values())
    covered = []
    for rule_id in rule_ids:
        pattern = re.escape(rule_id) + (r"[a-z_]+" if rule_id.endswith(".") else r"(?![a-z_.])")
        if re.search(r'"' + pattern + r'"', text):
            covered.append(rule_id)
    return covered


def run_tests(bundle: PolicyBundle, engine: Engine) -> TestReport:
    """Run every test of ``bundle`` on ``engine`` (which must have the bundle loaded, with tests)."""
    results = []
    for package, name in bundle.test_names():
        try:
            results.append(TestResult(package, name, engine.query_test(package, name)))
        except EngineUnavailable as error:
            results.append(TestResult(package, name, False, str(error)))
    rule_ids = declared_rule_ids(bundle)
    return TestReport(results, rule_ids, covered_rule_ids(bundle, rule_ids))


_TEST_RUNS: dict[tuple[str, str], tuple[TestResult, ...]] = {}
_TEST_RUNS_KEPT = 64


# A reference to data (``data.policy_data.prompt``), in Rego with its strings and comments taken out.
# ``data`` alone, or ``data.policy_data`` / ``data.latentops`` without a name after it, names data it
# does not spell out.
_DATA = re.compile(r"(?<![\w.])data\b(?:\.(\w+)(?:\.(\w+))?)?")
_NOT_CODE = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')


def _domains_read(source: str) -> set[str] | None:
    """The policy-data domains ``source`` reads, or None when it may read any."""
    domains: set[str] = set()
    for root, name in (match.groups() for match in _DATA.finditer(_NOT_CODE.sub(" ", source))):
        if root is None or (root in (DATA_ROOT, "latentops") and name is None):
            return None
        if root == DATA_ROOT:
            domains.add(name)
    return domains


def reached_domains(bundle: PolicyBundle, source: str) -> set[str] | None:
    """The policy-data domains a test module can see: those read by every module a query of its package
    reaches (``policy_engine.modules_for``, test modules included); None when one of them may read any."""
    package = package_of(source)
    path = package.removeprefix("latentops.") if package.startswith("latentops.") else ""
    domains: set[str] = set()
    for module in modules_for(path, {**bundle.modules, **bundle.tests, "(tested)": source}).values():
        found = _domains_read(module)
        if found is None:
            return None
        domains |= found
    return domains


def failed_tests(bundle: PolicyBundle, domains: Collection[str] | None = None) -> tuple[TestResult, ...]:
    """The bundle's failing Rego tests on the embedded engine (``CompileError`` when it does not compile).

    ``domains``: only the tests that can see one of these policy-data domains (``reached_domains``). An
    edit of a domain changes no other test's outcome, and rego-cpp compiles a test that rebinds data
    (``with data.policy_data...``) slowly, so an edit's check runs just the tests the edit can change.

    The outcome depends only on the modules and data (the revision) and the test files, so it is
    kept per process for the last few of those. Compiling and testing a bundle takes 1-2 s; an
    edit's check (the bundle with the edit, and the one in force to compare with) pays it only for
    bundles this process has not tested yet.
    """
    if domains is not None:
        wanted = set(domains)
        bundle = dataclasses.replace(bundle, tests={
            name: source for name, source in bundle.tests.items()
            if (reached := reached_domains(bundle, source)) is None or reached & wanted})
    tests = hashlib.sha256(json.dumps(bundle.tests, sort_keys=True).encode()).hexdigest()
    key = (bundle.revision, tests)
    if key not in _TEST_RUNS:
        engine = EmbeddedEngine()
        engine.load(bundle, for_tests=True)
        while len(_TEST_RUNS) >= _TEST_RUNS_KEPT:
            _TEST_RUNS.pop(next(iter(_TEST_RUNS)))
        _TEST_RUNS[key] = tuple(run_tests(bundle, engine).failed)
    return _TEST_RUNS[key]
