"""The governed path: every image has its decisions, screening result, provenance and audit entries;
flagged images are never returned; denied prompts stop before generation; nothing bypasses it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from generation_helpers import catalogue, tiny_source
from PIL import Image

from latentops.core.errors import PolicyDenied
from latentops.governance import policy
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import validation
from latentops.platform.database import session_scope
from latentops.platform.services import generation
from latentops.platform.tables import Asset, AuditEntry, ModelVersion, PolicyDecision, ScreeningResult

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("models"))


def _run(settings, prompt: str, n: int = 3, seed: int = 5):  # type: ignore[no-untyped-def]
    with session_scope(settings.database_url) as db:
        target = generation.resolve(db, model="tiny@latest")
        return generation.generate(db, settings=settings, actor="cli:test", target=target,
                                   spec=generation.GenerationSpec(prompts=[prompt], images_per_prompt=n, seed=seed, steps=1))


def _assert_accounted(db, asset: Asset) -> None:  # type: ignore[no-untyped-def]
    """The asset's request decision, screening result and audit entries all exist and agree."""
    decision = db.get(PolicyDecision, asset.policy_decision_id)
    assert decision is not None and decision.allow and decision.path == "prompt"
    result = db.get(ScreeningResult, asset.screening_result_id)
    assert result is not None and result.source == f"asset:{asset.id}"
    actions = set(db.scalars(sa.select(AuditEntry.action).where(AuditEntry.resource == f"asset:{asset.id}")))
    assert actions & {"asset.release", "asset.quarantine"}
    requests = [json.loads(d) for d in db.scalars(sa.select(AuditEntry.details).where(
        AuditEntry.action == "generation.request"))]
    assert any(asset.id in r["assets"] and asset.policy_decision_id in r["decisions"] for r in requests)
    screened = db.scalars(sa.select(AuditEntry).where(AuditEntry.resource == f"screening_result:{result.id}")).one()
    assert screened.action == "screening.result"


def test_every_generated_image_is_decided_screened_signed_stored_and_audited(settings_env, source: Path) -> None:
    catalogue(settings_env, source)
    result = _run(settings_env, "a red square on white paper")
    assert len(result.images) == 3 and len(result.released) == 3
    assert [i.seed for i in result.images] == [5, 6, 7]
    with session_scope(settings_env.database_url) as db:
        for image in result.images:
            asset = db.get(Asset, image.asset_id)
            assert asset is not None and asset.status == "released" and asset.purpose == "generation"
            assert asset.prompt_ref == generation.prompt_ref("a red square on white paper")
            assert asset.model_version_id == db.scalar(sa.select(ModelVersion.id))
            assert Path(asset.path).read_bytes() == image.png
            assert asset.provenance["c2pa"]["signed"] and asset.provenance["c2pa"]["asset_id"] == asset.id
            _assert_accounted(db, asset)
    # The same request on CPU gives the same pixels.
    again = _run(settings_env, "a red square on white paper")
    assert [i.image().tobytes() for i in again.images] == [i.image().tobytes() for i in result.images]


def test_flagged_images_are_quarantined_and_their_pixels_never_returned(settings_env, source: Path) -> None:
    catalogue(settings_env, source, release_unscreened=False)  # no detector and policy holds unscreened images
    result = _run(settings_env, "a blue circle", n=2)
    assert result.released == [] and len(result.quarantined) == 2
    for image in result.images:
        assert image.png is None and image.reasons
        with pytest.raises(Exception, match="quarantined"):
            image.image()
    with session_scope(settings_env.database_url) as db:
        for image in result.images:
            asset = db.get(Asset, image.asset_id)
            assert asset is not None and asset.status == "quarantined"
            _assert_accounted(db, asset)


def test_a_denied_prompt_stops_before_generation_and_the_decision_is_kept(settings_env, source: Path) -> None:
    catalogue(settings_env, source)
    denial = None
    with session_scope(settings_env.database_url) as db:
        target = generation.resolve(db, model="tiny")
        try:
            generation.generate(db, settings=settings_env, actor="cli:test", target=target,
                                spec=generation.GenerationSpec(prompts=["a pornographic portrait"], steps=1))
        except PolicyDenied as error:
            denial = error
    assert denial is not None and any("prompt." in r for r in denial.reasons)
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Asset.id))) == 0
        assert db.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.allow.is_(False))) == 1


@pytest.mark.one_backend
def test_cli_generate_writes_released_images_and_a_denied_prompt_exits_non_zero(cli, settings_env, source: Path,
                                                                               tmp_path: Path) -> None:
    catalogue(settings_env, source)
    out = tmp_path / "out"
    done = cli("generate", "--model", "tiny@1", "--prompt", "a green triangle", "-n", "2", "--seed", "3", "--steps", "1",
               "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(done.stdout)
    assert payload["released"] == 2 and len(list(out.glob("*.png"))) == 2
    assert Image.open(min(out.glob("*.png"))).size == (32, 32)
    denied = cli("generate", "--model", "tiny", "--prompt", "a naked person", "--out", str(tmp_path / "no"))
    assert denied.returncode != 0
    assert "PolicyDenied" in denied.stderr and "prompt." in denied.stderr
    assert not (tmp_path / "no").exists()
    with session_scope(settings_env.database_url) as db:  # the refusal is kept as evidence
        assert db.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.allow.is_(False))) == 1
    unknown = cli("generate", "--model", "tiny@v9", "--prompt", "a cat", "--out", str(tmp_path / "no"))
    assert unknown.returncode == 1 and "no version or alias 'v9'" in unknown.stderr


def test_training_renders_take_the_governed_path(settings_env, source: Path) -> None:
    catalogue(settings_env, source)
    with session_scope(settings_env.database_url) as db:
        version = db.scalars(sa.select(ModelVersion)).one()
        weights = WeightsRef(content_hash=version.content_hash, path=Path(version.path), family="sd1")
    images = validation.render(validation.RenderRequest(weights=weights, prompts=["a sks glyph"], seed=1, steps=1,
                                                        images_per_prompt=2, purpose="class_images"),
                               renderer=generation.render_for_training)
    assert len(images) == 2
    with session_scope(settings_env.database_url) as db:
        assets = db.scalars(sa.select(Asset)).all()
        assert {a.purpose for a in assets} == {"class_images"} and len(assets) == 2
        for asset in assets:
            assert asset.model_version_id == version.id
            _assert_accounted(db, asset)
    # A denied prompt renders nothing for training either.
    with pytest.raises(PolicyDenied):
        validation.render(validation.RenderRequest(weights=weights, prompts=["a pornographic glyph"], seed=1, steps=1),
                          renderer=generation.render_for_training)
    policy.use_service(None)


# --- nothing returns pixels that skipped a step ------------------------------------------------------

# Code that may call the engine: the governed path itself, and the demo model's evaluation, which
# only counts how many generated digits a classifier reads correctly and never stores or returns them.
ENGINE_CALLERS = {"platform/services/generation.py", "pipelines/demo/evaluation.py"}


def _engine_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        # engine.generate(...), default_engine().generate(...), Engine(...).generate(...), self._engine...
        if isinstance(func, ast.Attribute) and func.attr == "generate":
            receiver = ast.unparse(func.value).lower()
            if "engine" in receiver:
                lines.append(node.lineno)
        # A diffusers pipeline called directly: DiffusionPipeline.from_pretrained(...)(...) or pipeline(prompt=...).
        if isinstance(func, ast.Name) and func.id in {"pipeline", "pipe"} and any(k.arg == "prompt" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_no_code_path_generates_pixels_outside_the_governed_path() -> None:
    offenders = []
    for folder in ("platform", "governance", "pipelines"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative in ENGINE_CALLERS or relative == "pipelines/engine.py":
                continue
            offenders += [f"{relative}:{line}" for line in _engine_calls(path)]
    assert offenders == [], f"images generated outside the governed path: {offenders}"
    # The scan itself finds calls: the governed path is seen calling the engine.
    assert _engine_calls(REPO / "platform/services/generation.py")
    # ... and the engine's own pipeline call is the one place diffusers runs.
    assert _engine_calls(REPO / "pipelines/engine.py") or "pipeline(**kwargs)" in (REPO / "pipelines/engine.py").read_text()


@pytest.mark.one_backend
def test_cli_generate_exits_3_and_says_what_would_release_when_every_image_is_held(cli, settings_env, source: Path,
                                                                                  tmp_path: Path) -> None:
    catalogue(settings_env, source, release_unscreened=False)  # no detector, and policy holds unscreened images
    out = tmp_path / "out"
    held = cli("generate", "--model", "tiny", "--prompt", "a green triangle", "-n", "2", "--steps", "1", "--out", str(out))
    assert held.returncode == 3, held.stderr[-2000:]
    assert "0 released, 2 quarantined" in held.stdout and not list(out.glob("*.png"))
    message = " ".join(held.stderr.split())
    assert "nothing released: all 2 images are held for review in the quarantine (assets 1, 2)" in message
    assert "latentops quarantine release ID --reason" in message and "screening.release_uncovered" in message
    scripted = cli("generate", "--model", "tiny", "--prompt", "a green triangle", "--steps", "1", "--out", str(out), "--json")
    assert scripted.returncode == 3 and json.loads(scripted.stdout)["released"] == 0
