"""Both engines give identical results: every Rego test and a decision table through the embedded
engine and through opa-python-client against an OPA-REST-compatible server on loopback. Known
rego-cpp gaps are pinned so we learn when they change."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opa_compat import OpaCompatServer

from latentops.governance import policy
from latentops.governance.native import load_regopy
from latentops.governance.policy_bundle import load_bundle
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.governance.policy_opa import OpaEngine
from latentops.governance.policy_testing import run_tests

BUNDLE = load_bundle()


@pytest.fixture(scope="module")
def opa_server() -> Iterator[OpaCompatServer]:
    server = OpaCompatServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engines(opa_server: OpaCompatServer) -> dict[str, object]:
    embedded = EmbeddedEngine()
    embedded.load(BUNDLE)
    opa = OpaEngine(opa_server.url)
    opa.load(BUNDLE, with_tests=True)
    opa_server.compile()  # as OPA does on storing the policies, before the first decision is timed
    return {"embedded": embedded, "opa": opa}


def test_every_rego_test_passes_identically_on_both_engines(engines: dict[str, object]) -> None:
    embedded = run_tests(BUNDLE, engines["embedded"])  # type: ignore[arg-type]
    opa = run_tests(BUNDLE, engines["opa"])  # type: ignore[arg-type]
    assert len(embedded.results) >= 30
    assert [(r.package, r.name, r.passed) for r in embedded.results] == [(r.package, r.name, r.passed) for r in opa.results]
    assert embedded.ok and opa.ok, embedded.failed or opa.failed
    assert embedded.coverage == 100.0, embedded.summary()["uncovered"]


ALICE = {"kind": "user", "user_id": 1, "memberships": [{"team": "design", "role": "submitter"}]}
MODEL = {"name": "digits", "sensitivity": "internal", "owner_team": "research"}
DECISIONS = [
    ("prompt", {"prompt": "a lighthouse at dusk"}),
    ("prompt", {"prompt": "M1CKEY-MOUSE and p.i.k.a.c.h.u"}),
    ("prompt", {"prompt": "a gory scene, mail a@b.co, card 4111 1111 1111 1111"}),
    ("prompt", {"prompt": "x" * 3000}),
    ("prompt", {"prompt": "grapes in Scunthorpe with a cocktail"}),
    ("models", {"action": "use", "subject": ALICE, "model": MODEL, "grants": [{"action": "use", "team": "design", "user_id": None}]}),
    ("models", {"action": "download", "subject": ALICE, "model": MODEL, "grants": []}),
    ("models", {"action": "grant", "subject": ALICE, "model": MODEL, "grants": []}),
    ("jobs", {"action": "fine_tune", "team": "design", "subject": ALICE, "model": MODEL,
              "grants": [{"action": "use", "team": "design", "user_id": None}],
              "params": {"steps": 5000, "resolution": 512, "rank": 8, "batch": 2},
              "uploads": {"count": 2, "attestation": {"licence": True, "consent": False}},
              "usage": {"queued_jobs": 0, "gpu_hours": 0}}),
    ("datasets", {"action": "generate", "team": "design", "subject": ALICE, "dataset": {"images": 10, "resolution": 512, "team": "design"}}),
    ("screening", {"detector": "clip", "scores": {"sexual": 0.9, "minors": 0, "violence": 0, "self_harm": 0, "hate": 0, "weapons": 0}}),
    ("screening", {"detector": "none", "scores": {}}),
]


@pytest.mark.parametrize(("path", "value"), DECISIONS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(DECISIONS)])
def test_decision_table_identical_on_both_engines(engines: dict[str, object], path: str, value: dict[str, object]) -> None:
    results = {}
    for name, engine in engines.items():
        service = policy.PolicyService(engine=engine)  # type: ignore[arg-type]
        service.bundle = BUNDLE
        results[name] = service.evaluate(path, value)[0]
    assert results["embedded"] == results["opa"].__class__(**{**results["opa"].__dict__, "engine": "embedded"})
    assert results["embedded"].rule_ids != ["policy.engine_unavailable"]


def test_opa_server_refuses_policy_that_does_not_compile_and_keeps_serving(engines: dict[str, object]) -> None:
    opa = engines["opa"]
    with pytest.raises(Exception, match="compil"):
        opa.client.update_policy_from_string("package latentops.broken\nx := 1 +\n", "broken", rego_compat=False)  # type: ignore[attr-defined]
    assert opa.evaluate("screening", {"detector": "none", "scores": {}})["allow"] is False  # type: ignore[attr-defined]
    assert opa.server_revision() == BUNDLE.revision  # type: ignore[attr-defined]


# --- pinned rego-cpp gaps: each test fails when regopy changes, so the policies can be revisited --


def _query(module: str, rule: str, input_term: str = "{}", input_value: object = None) -> str:
    regopy = load_regopy()  # torch first: see latentops.governance.native
    from regopy.rego_shared import rego_bundle_query_entrypoint, rego_free_output, rego_output_string

    rego = regopy.Interpreter()
    rego.add_module("gap.rego", "package gap\nimport rego.v1\n" + module)
    bundle = rego.build(None, [f"gap/{rule}"])
    if input_value is not None:
        rego.set_input(regopy.Input(input_value))
    else:
        rego.set_input_term(input_term)
    output = rego_bundle_query_entrypoint(rego._impl, bundle._impl, f"gap/{rule}")
    try:
        return str(rego_output_string(output))
    finally:
        rego_free_output(output)


def test_gap_sprintf_q_returns_format_unchanged() -> None:
    assert _query('x := sprintf("%q", ["a"])', "x") == '{"expressions":["%q"]}'  # OPA: "\"a\""


def test_gap_sprintf_s_quotes_computed_strings() -> None:
    assert _query('x := sprintf("<%s>", [concat("", ["a", "b"])])', "x") == '{"expressions":["<"ab">"]}'  # OPA: "<ab>"


def test_gap_regex_inline_flags_undefined() -> None:
    assert _query('x := regex.match("(?i)abc", "ABC")', "x") == "undefined"  # OPA: true


def test_gap_net_cidr_contains_undefined() -> None:
    assert _query('x := net.cidr_contains("10.0.0.0/8", "10.1.2.3")', "x") == "undefined"  # OPA: true


def test_gap_input_set_as_value_loses_string_escaping() -> None:
    # Set as a Python value, strings come back unescaped (invalid JSON); the engines therefore set
    # input as a JSON term, which keeps the escaping, and fail closed on output that does not parse.
    assert _query("x := input.s", "x", input_value={"s": 'say "hi"'}) == '{"expressions":["say "hi""]}'
    assert _query("x := input.s", "x", '{"s": "say \\"hi\\""}') == '{"expressions":["say \\"hi\\""]}'


def test_gap_with_input_over_partial_rule_aborts_the_process() -> None:
    script = (
        "import regopy\nfrom regopy.rego_shared import rego_bundle_query_entrypoint\n"
        "r = regopy.Interpreter()\n"
        "r.add_module('g.rego', 'package g\\nimport rego.v1\\nd contains 1 if input.x > 3\\n"
        "t if {\\n  s := d with input as {\"x\": 5}\\n  count(s) == 1\\n}\\n')\n"
        "b = r.build(None, ['g/t'])\nrego_bundle_query_entrypoint(r._impl, b._impl, 'g/t')\nprint('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode < 0 and "survived" not in done.stdout  # OPA: t is true
