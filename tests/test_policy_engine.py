"""Fail-closed engines, recorded decisions linked to the audit trail, revisions and reload."""

from __future__ import annotations

import json
import resource
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import free_port

from latentops.core.errors import InvalidInput, PolicyDenied
from latentops.governance import policy
from latentops.governance.policy_bundle import load_bundle
from latentops.governance.policy_engine import CompileError, EmbeddedEngine, compile_check, modules_for
from latentops.governance.policy_opa import OpaEngine
from latentops.platform.database import session_scope
from latentops.platform.tables import PolicyDataEdit, PolicyDecision


@pytest.fixture
def service(policy_dir: Path):  # type: ignore[no-untyped-def]
    svc = policy.PolicyService(engine=EmbeddedEngine(), directory=policy_dir)
    assert svc.reload().ok
    policy.use_service(svc)
    yield svc
    policy.use_service(None)


def test_decision_is_recorded_with_masked_input_and_linked_to_audit(service, database_url: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(database_url) as db:
        decision = policy.decide("prompt", {"prompt": "mickey mouse, mail jane.doe@example.com"}, session=db, actor="cli:tester")
    assert decision.allow is False and decision.decision_id is not None
    with session_scope(database_url) as db:
        row = db.get(PolicyDecision, decision.decision_id)
        assert row is not None
        assert row.rule_ids == ["prompt.personal_data.email", "prompt.protected_name"]
        assert row.revision == service.bundle.revision and len(row.input_hash) == 64
        stored = json.dumps(row.input_masked)
        assert "jane.doe" not in stored and "[email]" in stored
        assert row.input_masked["prompt"]["normalized"].startswith("mickey mouse")
        entry = policy.decision_entry(db, row.id)
        assert entry is not None and entry.action == "policy.decision" and entry.outcome == "deny"
        assert entry.resource == f"policy_decision:{row.id}"


def test_unreachable_opa_server_denies_with_engine_unavailable_and_records_it(policy_dir: Path, database_url: str) -> None:
    svc = policy.PolicyService(engine=OpaEngine(f"http://127.0.0.1:{free_port()}", timeout_s=0.5, mode="bundle", bundle_wait_s=0.5), directory=policy_dir)
    assert svc.reload().ok  # nothing is pushed; the server is simply not there
    policy.use_service(svc)
    try:
        with session_scope(database_url) as db:
            decision = policy.decide("prompt", {"prompt": "a lighthouse"}, session=db, actor="cli:tester")
        assert decision.allow is False
        assert decision.reasons == ["policy engine unavailable"] and decision.rule_ids == ["policy.engine_unavailable"]
        with session_scope(database_url) as db:
            row = db.get(PolicyDecision, decision.decision_id)
            assert row is not None and row.allow is False and row.engine == "opa"
            entry = policy.decision_entry(db, row.id)
            assert entry is not None and "engine_error" in entry.details
    finally:
        policy.use_service(None)


def test_undefined_decision_denies(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # A policy whose decision is undefined for this input (it requires a field the input lacks).
    source = (policy_dir / "screening" / "screening.rego").read_text()
    (policy_dir / "screening" / "screening.rego").write_text(source.replace("decision := evaluate(input)", "decision := evaluate(input) if input.never"))
    assert service.reload().ok
    decision = policy.evaluate("screening", {"detector": "clip", "scores": {}})
    assert (decision.allow, decision.reasons) == (False, ["policy engine unavailable"])


def test_input_strings_and_numbers_reach_the_embedded_policy_unchanged(policy_dir: Path) -> None:
    # Plain strings go in as values; quotes, backslashes, control characters and integers beyond
    # 64 bits go in as a JSON term. Either way the policy sees exactly what was sent.
    source = (policy_dir / "screening" / "screening.rego").read_text()
    (policy_dir / "screening" / "screening.rego").write_text(source.replace(
        "decision := evaluate(input)",
        'decision := {"allow": input.n == 3.5, "deny": [{"rule_id": "echo", "reason": t} | some t in input.texts]}'))
    engine = EmbeddedEngine()
    engine.load(load_bundle(policy_dir, []))
    plain = ["plain", "ünïcødé ✓ 雪", ""]
    for texts, extra in [(plain, {}), (plain, {"big": 2**70}), (plain, {"nested": [{"a": [1, None, True]}]}),
                         (['say "hi"'], {}), (["back\\slash"], {}), (["tab\there", "two\nlines"], {})]:
        document = engine.evaluate("screening", {"n": 3.5, "texts": texts, **extra})
        assert document["allow"] is True
        assert sorted(v["reason"] for v in document["deny"]) == sorted(texts)
    assert engine.evaluate("screening", {"n": 3, "texts": []})["allow"] is False


def test_each_path_compiles_the_packages_it_references(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # A reference by full name, without an import, brings its package into the path's interpreter.
    (policy_dir / "screening" / "limits.rego").write_text(
        'package latentops.limits\nimport rego.v1\nceiling := 2\ndecision := {"allow": true, "deny": []}\n')
    source = (policy_dir / "screening" / "screening.rego").read_text()
    (policy_dir / "screening" / "screening.rego").write_text(source.replace(
        "decision := evaluate(input)", 'decision := {"allow": data.latentops.limits.ceiling == 2, "deny": []}'))
    assert service.reload().ok
    assert policy.evaluate("screening", {"detector": "none", "scores": {}}).allow
    modules = service.bundle.modules
    assert sorted(modules_for("screening", modules)) == ["lib/lib.rego", "screening/limits.rego", "screening/screening.rego"]
    assert sorted(modules_for("prompt", modules)) == ["lib/lib.rego", "prompt/prompt.rego"]
    assert sorted(modules_for("jobs", modules)) == ["jobs/jobs.rego", "lib/lib.rego", "models/models.rego"]
    # A key computed at evaluation time could name any package: every module is kept.
    dynamic = {**modules, "prompt/any.rego": "package latentops.prompt\nimport rego.v1\npick(name) := data.latentops[name]\n"}
    assert modules_for("prompt", dynamic) == dynamic


def test_malformed_decision_denies(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    source = (policy_dir / "screening" / "screening.rego").read_text()
    (policy_dir / "screening" / "screening.rego").write_text(source.replace("decision := evaluate(input)", 'decision := {"allow": "yes", "deny": []}'))
    assert service.reload().ok
    assert policy.evaluate("screening", {"detector": "none", "scores": {}}).rule_ids == ["policy.engine_unavailable"]


def test_policy_that_does_not_compile_keeps_previous_revision_and_reports(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    before = service.bundle.revision
    (policy_dir / "prompt" / "prompt.rego").write_text("package latentops.prompt\nimport rego.v1\ndecision := 1 +\n")
    result = service.reload()
    assert result.ok is False and result.revision == before and "prompt.rego" in result.error
    assert policy.status()["last_error"] == result.error
    assert policy.evaluate("prompt", {"prompt": "pikachu"}).rule_ids == ["prompt.protected_name"]


def test_policy_that_crashes_the_compiler_keeps_previous_revision(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    before = service.bundle.revision
    # rego-cpp aborts the process evaluating `with input as` over a partial set rule.
    (policy_dir / "screening" / "crash.rego").write_text(
        "package latentops.crash\nimport rego.v1\ndeny contains 1 if input.x > 3\n"
        "probe if {\n  d := deny with input as {\"x\": 5}\n  count(d) == 1\n}\n"
        'decision := {"allow": probe, "deny": []}\n'
    )
    result = service.reload()
    assert result.ok is False and result.revision == before and "crashed" in result.error
    assert policy.evaluate("prompt", {"prompt": "a lighthouse"}).allow  # and this process still runs


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_a_bundle_is_checked_in_a_child_once_per_process_and_a_failing_one_every_time() -> None:
    bundle = load_bundle()
    entrypoints = [bundle.entrypoint(path) for path in bundle.paths]
    data = {**bundle.data, "check_nonce": uuid.uuid4().hex}  # a bundle this process has not checked yet
    before = _children_cpu()
    compile_check(bundle.modules, data, entrypoints)
    checked = _children_cpu()
    assert checked - before > 0.02  # an interpreter that imported regopy and compiled the bundle
    compile_check(bundle.modules, data, entrypoints)  # the same bundle again: no child
    compile_check(dict(bundle.modules), json.loads(json.dumps(data)), list(entrypoints))  # equal, not the same objects
    assert _children_cpu() - checked < 0.01
    compile_check(bundle.modules, {**data, "check_nonce": uuid.uuid4().hex}, entrypoints)  # other data: checked
    assert _children_cpu() - checked > 0.02
    broken = {**bundle.modules, "broken.rego": "package latentops.broken\nimport rego.v1\nx := 1 +\n"}
    for _ in range(2):  # a failure is never remembered as checked
        with pytest.raises(CompileError, match="broken.rego"):
            compile_check(broken, data, entrypoints)


def test_data_file_with_wrong_shape_keeps_previous_revision(service, policy_dir: Path) -> None:  # type: ignore[no-untyped-def]
    before = service.bundle.revision
    path = policy_dir / "prompt" / "data.json"
    data = json.loads(path.read_text())
    data["protected_names"] = ["Mickey Mouse"]
    path.write_text(json.dumps(data))
    result = service.reload()
    assert result.ok is False and result.revision == before
    assert "prompt/data.json.protected_names[0]" in result.error
    path.write_text("{not json")
    assert "prompt/data.json: not valid JSON" in service.reload().error


def test_data_change_gives_new_revision_picked_up_without_restart(service, policy_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(policy, "RELOAD_CHECK_S", 0.0)
    before = policy.revision()
    path = policy_dir / "prompt" / "data.json"
    data = json.loads(path.read_text())
    data["protected_names"].append({"name": "Totoro", "category": "trademarked character"})
    path.write_text(json.dumps(data))
    assert policy.evaluate("prompt", {"prompt": "t0t0r0 in the rain"}).rule_ids == ["prompt.protected_name"]
    assert policy.revision() != before


def test_policy_data_edit_through_the_product(service, database_url: str) -> None:  # type: ignore[no-untyped-def]
    before = service.bundle.revision
    with session_scope(database_url) as db:
        revision = policy.set_policy_data(db, key="prompt.max_length", value=10, actor="cli:admin", note="tighter")
    assert revision != before
    with session_scope(database_url) as db:
        assert policy.reload(db).revision == revision
        assert policy.policy_data("prompt.max_length") == 10
        assert policy.decide("prompt", {"prompt": "a lighthouse at dusk"}, session=db, actor="cli:t").rule_ids == ["prompt.too_long"]
        assert db.scalar(sa.select(sa.func.count(PolicyDataEdit.id))) == 1
    with session_scope(database_url) as db, pytest.raises(InvalidInput, match="max_length: must be a positive integer"):
        policy.set_policy_data(db, key="prompt.max_length", value="long", actor="cli:admin")
    with session_scope(database_url) as db:
        assert db.scalar(sa.select(sa.func.count(PolicyDataEdit.id))) == 1  # the bad edit stored nothing


def test_require_raises_policy_denied_with_reasons(service, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sqlite_url) as db, pytest.raises(PolicyDenied) as raised:
        policy.require("prompt", {"prompt": "pikachu"}, session=db, actor="cli:t")
    assert raised.value.reasons == ["prompt.protected_name: the prompt names Pikachu, a protected trademarked character"]


def test_revision_is_hash_of_policies_and_data(policy_dir: Path) -> None:
    first = load_bundle(policy_dir).revision
    assert load_bundle(policy_dir).revision == first
    (policy_dir / "prompt" / "prompt_test.rego").write_text((policy_dir / "prompt" / "prompt_test.rego").read_text() + "\n# note\n")
    assert load_bundle(policy_dir).revision == first  # tests do not change decisions
    (policy_dir / "prompt" / "prompt.rego").write_text((policy_dir / "prompt" / "prompt.rego").read_text() + "\n# note\n")
    assert load_bundle(policy_dir).revision != first


def test_a_job_acts_for_the_user_who_submitted_it(database_url: str) -> None:
    from latentops.platform.database import session_scope
    from latentops.platform.services import users
    from latentops.platform.tables import Job

    with session_scope(database_url) as db:
        owner = users.create_user(db, email="owner@x.io", role="submitter", team="vision", password=None, actor="t")
        owned, ownerless = Job(kind="generate", owner_id=owner.id), Job(kind="generate")
        db.add_all([owned, ownerless])
        db.flush()
        subject = policy.subject_for(db, f"job:{owned.id}")
        assert subject["kind"] == "user" and subject["name"] == "owner@x.io"
        assert subject["memberships"] == [{"team": "vision", "role": "submitter"}]
        assert policy.subject_for(db, f"job:{ownerless.id}")["kind"] == "system"


def test_a_service_loaded_before_any_session_takes_in_the_data_edits_at_its_first_session(database_url: str) -> None:
    from latentops.governance.policy_bundle import DATA_ROOT

    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="prompt.max_length", value=10, actor="cli:tester")
    fresh = policy.PolicyService(engine=EmbeddedEngine())  # a new process: policy_data() before any session
    fresh.refresh(None)
    assert fresh.bundle is not None and fresh.bundle.data[DATA_ROOT]["prompt"]["max_length"] != 10
    with session_scope(database_url) as db:
        fresh.refresh(db)  # at once, not after the reload interval
    assert fresh.bundle.data[DATA_ROOT]["prompt"]["max_length"] == 10
