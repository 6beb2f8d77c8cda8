"""The policy and grant commands through the real CLI, and the grants service on both databases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from latentops.core.errors import InvalidInput, NotFound, PolicyDenied
from latentops.governance import native, policy
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.platform.database import session_scope
from latentops.platform.services import grants, users
from latentops.platform.tables import (
    AccessGrant,
    AuditEntry,
    LoraAdapter,
    ModelRecord,
    ModelVersion,
    PolicyDecision,
)


def _seed(url: str) -> None:
    with session_scope(url) as db:
        users.create_user(db, email="alice@example.com", role="submitter", team="design", password=None, actor="cli:setup")
        users.create_user(db, email="carol@example.com", role="admin", team="platform", password=None, actor="cli:setup")
        db.add(ModelRecord(name="digits-demo", family="sd", sensitivity="internal"))


@pytest.mark.one_backend
def test_check_prompt_json_prints_one_line_and_exit_code(cli) -> None:  # type: ignore[no-untyped-def]
    denied = cli("policy", "check-prompt", "--json", "M1CKEY-MOUSE")
    assert denied.returncode == 1
    line = json.loads(denied.stdout.strip())
    assert set(line) == {"allow", "reasons", "rule_ids", "revision", "categories"}
    assert line["allow"] is False and line["rule_ids"] == ["prompt.protected_name"] and len(line["revision"]) == 64
    assert {c["severity"] for c in line["categories"].values()} <= {0, 2, 4, 6}
    allowed = cli("policy", "check-prompt", "--json", "grapes in Scunthorpe")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["allow"] is True
    paraphrase = cli("policy", "check-prompt", "a man standing on the bridge railing, ready to end it all")
    assert paraphrase.returncode == 1
    assert "prompt.self_harm" in paraphrase.stdout and "self_harm: severity 6 of 6 (blocks at 6); closest to" in paraphrase.stdout


@pytest.mark.one_backend
def test_eval_and_bad_input(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("policy", "eval", "--path", "screening", "--input", '{"detector": "none", "scores": {}}')
    assert result.returncode == 1 and json.loads(result.stdout)["rule_ids"] == ["screening.no_detector"]
    bad = cli("policy", "eval", "--path", "prompt", "--input", "{nope")
    assert bad.returncode == 1 and "input: not valid JSON" in bad.stderr
    wrong = cli("policy", "eval", "--path", "prompt", "--input", '{"prompt": 5}')
    assert wrong.returncode == 1 and "prompt: must be a string, got int" in wrong.stderr


@pytest.mark.one_backend
def test_policy_test_runs_all_tests_and_fails_on_zero(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("policy", "test", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tests"] >= 30 and summary["failed"] == 0 and summary["coverage"] == 100.0
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "x" / "x.rego").write_text('package latentops.x\nimport rego.v1\ndecision := {"allow": true, "deny": []}\n')
    none = cli("policy", "test", "--dir", str(empty))
    assert none.returncode == 1 and "no tests found" in none.stderr
    (empty / "x" / "x_test.rego").write_text("package latentops.x_test\nimport rego.v1\ntest_fails if {\n  1 == 2\n}\n")
    failing = cli("policy", "test", "--dir", str(empty))
    assert failing.returncode == 1 and "FAIL: data.latentops.x_test.test_fails" in failing.stdout


@pytest.mark.one_backend
def test_revision_and_reload(cli) -> None:  # type: ignore[no-untyped-def]
    revision = cli("policy", "revision").stdout.strip()
    assert len(revision) == 64
    reloaded = cli("policy", "reload")
    assert reloaded.returncode == 0 and json.loads(reloaded.stdout)["revision"] == revision


@pytest.mark.one_backend
def test_models_grant_and_revoke_through_cli_are_audited(cli, settings_env) -> None:  # type: ignore[no-untyped-def]
    _seed(settings_env.database_url)
    granted = cli("models", "grant", "digits-demo", "--team", "design", "--action", "use", "--json")
    assert granted.returncode == 0, granted.stderr
    listed = [json.loads(line) for line in cli("models", "grants", "digits-demo", "--json").stdout.splitlines()]
    assert [(g["action"], g["team"]) for g in listed] == [("use", "design")]
    assert json.loads(cli("models", "access", "digits-demo", "--action", "use", "--as", "alice@example.com").stdout)["allow"] is True
    download = cli("models", "access", "digits-demo", "--action", "download", "--as", "alice@example.com")
    assert download.returncode == 1 and "models.no_grant" in download.stderr
    assert cli("models", "revoke", "digits-demo", "--team", "design", "--action", "use").returncode == 0
    again = cli("models", "revoke", "digits-demo", "--team", "design", "--action", "use")
    assert again.returncode == 1 and "no active 'use' grant" in again.stderr
    bad = cli("models", "grant", "digits-demo", "--team", "design", "--action", "fly")
    assert bad.returncode == 1 and "action: 'fly' is not one of use, download, manage" in bad.stderr
    with session_scope(settings_env.database_url) as db:
        actions = list(db.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))
        assert "model.grant" in actions and "model.revoke" in actions
        denied = db.scalars(sa.select(PolicyDecision).where(PolicyDecision.allow.is_(False))).all()
        assert any(d.rule_ids == ["models.no_grant"] for d in denied)  # the denied check was kept


@pytest.fixture
def embedded_policy():  # type: ignore[no-untyped-def]
    service = policy.PolicyService(engine=EmbeddedEngine())
    assert service.reload().ok
    policy.use_service(service)
    yield
    policy.use_service(None)


def test_grants_service_asks_policy_for_every_action(embedded_policy, database_url: str) -> None:  # type: ignore[no-untyped-def]
    _seed(database_url)
    with session_scope(database_url) as db, pytest.raises(PolicyDenied, match="only admins"):
        grants.grant(db, model="digits-demo", action="use", team="design", actor="alice@example.com")
    with session_scope(database_url) as db:
        row = grants.grant(db, model="digits-demo", action="download", user="alice@example.com", actor="carol@example.com")
        assert grants.grant(db, model="digits-demo", action="download", user="alice@example.com", actor="carol@example.com").id == row.id
    with session_scope(database_url) as db:
        assert grants.check_access(db, model="digits-demo", action="use", actor="alice@example.com").allow
        with pytest.raises(PolicyDenied) as denied:
            grants.check_access(db, model="digits-demo", action="manage", actor="alice@example.com")
        assert denied.value.reasons == ["models.no_grant: no grant lets you manage model 'digits-demo'; ask an admin for a grant"]
    with session_scope(database_url) as db:
        db.execute(sa.update(ModelRecord).values(sensitivity="restricted"))
    with session_scope(database_url) as db, pytest.raises(PolicyDenied, match="labelled restricted"):
        grants.check_access(db, model="digits-demo", action="use", actor="alice@example.com")
    with session_scope(database_url) as db:
        assert grants.revoke(db, model="digits-demo", action="download", user="alice@example.com", actor="carol@example.com") == 1
        assert db.scalar(sa.select(sa.func.count(AccessGrant.id)).where(AccessGrant.revoked_at.is_(None))) == 0
    with session_scope(database_url) as db:
        with pytest.raises(NotFound, match="no base model named 'nope'"):
            grants.grant(db, model="nope", action="use", team="design", actor="carol@example.com")
        with pytest.raises(InvalidInput, match="exactly one of --team or --user"):
            grants.grant(db, model="digits-demo", action="use", actor="carol@example.com")


def test_check_prompt_runs_without_torch_and_torch_is_refused_after() -> None:
    # check-prompt loads regopy without torch (1.3 s saved); torch must then fail loudly, not abort.
    code = ("import sys\nfrom latentops.governance import native\nassert native.without_torch()\nnative.load_regopy()\n"
            "assert 'torch' not in sys.modules\ntry:\n    import torch\nexcept ImportError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == native.TORCH_REFUSED


def _fresh(cli, *args: str, code: int = 0) -> tuple[subprocess.CompletedProcess[str], set[str]]:  # type: ignore[no-untyped-def]
    """Run one command in a fresh interpreter; returns it and the modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "latentops.platform.cli.main", *args], env=cli.env,
                          capture_output=True, text=True, timeout=120, check=False)
    lines = done.stderr.splitlines()
    assert done.returncode == code, [line for line in lines if not line.startswith("import time:")]
    return done, {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}


@pytest.mark.one_backend
def test_commands_that_run_no_model_decide_without_importing_torch(cli, settings_env) -> None:  # type: ignore[no-untyped-def]
    # Commands marked runs_no_model load the policy engine without torch (``native``), a fresh process each.
    _seed(settings_env.database_url)
    for args, code in ((["policy", "revision"], 0), (["quarantine", "list"], 0), (["screening", "status", "--json"], 0),
                       (["audit", "retention", "--dry-run"], 0),
                       (["models", "access", "digits-demo", "--action", "use", "--as", "alice@example.com"], 1)):
        done, imported = _fresh(cli, *args, code=code)
        assert "regopy" in imported and "torch" not in imported, args
    assert "models.no_grant" in done.stderr
    with session_scope(settings_env.database_url) as db:  # the denial was decided by the policy and kept
        denied = db.scalars(sa.select(PolicyDecision).where(PolicyDecision.allow.is_(False))).all()
        assert [d.rule_ids for d in denied] == [["models.no_grant"]]


def _seed_adapter(url: str, version: int, *, aliases: list[str], mlflow_model_uri: str | None = None) -> None:
    """Adapter ``mug-style`` at ``version``, trained on digits-demo (``_seed``) version 1."""
    with session_scope(url) as db:
        model = db.scalar(sa.select(ModelRecord))
        base = ModelVersion(model_id=model.id, version=1, content_hash="b" * 64, path="/models/digits-demo/1")
        db.add(base)
        db.flush()
        db.add(LoraAdapter(name="mug-style", version=version, base_version_id=base.id, team_id=None, job_id=None,
                           content_hash="a" * 64, path=f"/adapters/mug-style-{version}", aliases=aliases,
                           mlflow_model_uri=mlflow_model_uri))


@pytest.mark.one_backend
def test_adapter_list_reads_the_catalogue_without_importing_torch(cli, settings_env) -> None:  # type: ignore[no-untyped-def]
    _seed(settings_env.database_url)
    _seed_adapter(settings_env.database_url, 2, aliases=["candidate", "production"])
    done, imported = _fresh(cli, "finetune", "adapters", "--json")
    assert "torch" not in imported and "diffusers" not in imported
    row = json.loads(done.stdout)
    assert (row["name"], row["version"], row["aliases"], row["path"]) == ("mug-style", 2, ["candidate", "production"],
                                                                           "/adapters/mug-style-2")
    assert _fresh(cli, "finetune", "adapters", "--name", "other", "--json")[0].stdout == ""


@pytest.mark.one_backend
def test_promote_moves_the_production_alias_in_mlflow_without_importing_torch(cli, settings_env) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    _seed(settings_env.database_url)
    registry = MlflowClient(settings_env.mlflow_tracking_uri)
    registry.create_registered_model("mug-style")
    registry.create_model_version("mug-style", source=str(settings_env.home / "adapters" / "mug-style-1"))
    _seed_adapter(settings_env.database_url, 1, aliases=["candidate"], mlflow_model_uri="models:/mug-style/1")
    done, imported = _fresh(cli, "finetune", "promote", "mug-style", "--version", "1")
    assert "regopy" in imported and "torch" not in imported and "diffusers" not in imported
    assert "mug-style v1 approved for production" in done.stdout
    assert registry.get_registered_model("mug-style").aliases == {"production": 1}
    with session_scope(settings_env.database_url) as db:
        adapter = db.scalar(sa.select(LoraAdapter).where(LoraAdapter.name == "mug-style"))
        assert adapter.aliases == ["candidate", "production"]
        entry = db.scalar(sa.select(AuditEntry).where(AuditEntry.action == "lora.promote"))
        assert entry is not None and json.loads(entry.details)["mlflow_model_uri"] == "models:/mug-style/1"
