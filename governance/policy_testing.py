"""Running the Rego tests of a bundle, on any engine, with rule-id coverage.

Tests are the ``test_*`` rules of ``*_test.rego`` modules; a test passes when it evaluates to
``true``. rego-cpp has no evaluation tracer, so coverage is measured over **rule ids**: every
rule id a policy can emit (the literal first argument of ``lib.violation``, or the literal prefix
of a computed one such as ``jobs.limit.``) must be named by at least one test. A run with no
tests fails, like ``opa test`` with no tests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from latentops.governance.policy_bundle import PolicyBundle
from latentops.governance.policy_engine import EmbeddedEngine, Engine, EngineUnavailable

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


def failed_tests(bundle: PolicyBundle) -> tuple[TestResult, ...]:
    """The bundle's failing Rego tests on the embedded engine (``CompileError`` when it does not compile).

    The outcome depends only on the modules and data (the revision) and the test files, so it is
    kept per process for the last few of those. Compiling and testing a bundle takes 1-2 s; an
    edit's check (the bundle with the edit, and the one in force to compare with) pays it only for
    bundles this process has not tested yet.
    """
    tests = hashlib.sha256(json.dumps(bundle.tests, sort_keys=True).encode()).hexdigest()
    key = (bundle.revision, tests)
    if key not in _TEST_RUNS:
        engine = EmbeddedEngine()
        engine.load(bundle, for_tests=True)
        while len(_TEST_RUNS) >= _TEST_RUNS_KEPT:
            _TEST_RUNS.pop(next(iter(_TEST_RUNS)))
        _TEST_RUNS[key] = tuple(run_tests(bundle, engine).failed)
    return _TEST_RUNS[key]
