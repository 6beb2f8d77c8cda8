"""Which Rego tests an edit of policy data runs: those that can see the edited domain, and no fewer."""

from __future__ import annotations

import dataclasses

import pytest

from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR, PolicyBundle, load_bundle, policy_domains
from latentops.governance.policy_testing import failed_tests, reached_domains


@pytest.fixture(scope="module")
def shipped() -> PolicyBundle:
    return load_bundle(DEFAULT_POLICY_DIR)


def test_each_shipped_test_module_sees_the_domains_its_policies_read(shipped: PolicyBundle) -> None:
    seen = {name.split("/")[0]: reached_domains(shipped, source) for name, source in shipped.tests.items()}
    # jobs.rego reads the models policy's rules (grants), so a models edit can change a jobs test.
    assert seen["jobs"] == {"jobs", "models"}
    assert seen["prompt"] == {"prompt"} and seen["screening"] == {"screening"} and seen["models"] == {"models"}
    assert seen["lib"] == set()  # the helpers read no policy data: no edit can change their tests
    assert all(domains == {name} for name, domains in seen.items() if name not in ("jobs", "lib"))


def _with_module(bundle: PolicyBundle, source: str) -> PolicyBundle:
    return dataclasses.replace(bundle, modules={**bundle.modules, "extra/extra.rego": source})


TEST = "package latentops.extra_test\n\nimport data.latentops.extra\nimport rego.v1\n\ntest_x if extra.x\n"


@pytest.mark.parametrize(("body", "expected"), [
    # Named domains, also through a package it reads (jobs reads models).
    ("import data.latentops.jobs\nx if data.policy_data.audit.y", {"audit", "jobs", "models"}),
    # A test package's helpers count too (jobs_test reads the jobs and models data).
    ("import data.latentops.jobs_test\nx if jobs_test.quota", {"jobs", "models"}),
    # Strings and comments name nothing.
    ('# data.policy_data.jobs\nx if "data.policy_data.models" != "data"', set()),
    # Data it does not spell out: every domain.
    ("x if data.policy_data[k]", None),
    ("x if data.policy_data", None),
    ("x if data[k]", None),
    ("x if data.latentops[k]", None),
    # Another root than the edited one: no domain.
    ("x if data.latentops_meta.revision", set()),
])
def test_references_are_read_from_the_code_and_unknown_ones_count_as_every_domain(
        shipped: PolicyBundle, body: str, expected: set[str] | None) -> None:
    bundle = _with_module(shipped, f"package latentops.extra\n\nimport rego.v1\n\n{body}\n")
    assert reached_domains(bundle, TEST) == expected


def test_an_edit_runs_the_tests_that_see_its_domain_and_not_the_others() -> None:
    edited = load_bundle(DEFAULT_POLICY_DIR, [("screening.release_without_detector", True)])
    failing = {(r.package, r.name) for r in failed_tests(edited)}
    # The screening tests pin the shipped value; every test run finds exactly those.
    assert failing and {package for package, _ in failing} == {"latentops/screening_test"}
    assert {(r.package, r.name) for r in failed_tests(edited, {"screening"})} == failing
    assert failed_tests(edited, {"models", "jobs"}) == ()  # those tests cannot see the screening data
    # A module that may read any data has its tests run for an edit of any domain.
    dynamic = _with_module(edited, 'package latentops.extra\n\nimport rego.v1\n\nx if data.policy_data[k].release_without_detector == false\n')
    dynamic = dataclasses.replace(dynamic, tests={**dynamic.tests, "extra/extra_test.rego": TEST})
    assert {(r.package, r.name) for r in failed_tests(dynamic, {"jobs"})} == {("latentops/extra_test", "test_x")}


def test_host_data_is_no_domain_the_policies_see() -> None:
    # The protected names are matched by the host and read by no policy: an edit of them runs no Rego test.
    assert policy_domains(["prompt.protected_names"]) == set()
    assert policy_domains(["prompt.protected_names", "prompt.max_length", "jobs.quotas"]) == {"prompt", "jobs"}
    assert policy_domains(["prompt.protected_names_extra"]) == {"prompt"}  # another key, not the host's
    assert failed_tests(load_bundle(DEFAULT_POLICY_DIR, [("screening.release_without_detector", True)]), set()) == ()
