"""A LoRA run's MLflow run: val_loss at each evaluation and the released validation images as artefacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_helpers import TINY_RECIPE, draw_glyphs, tiny_sd1_weights
from PIL import Image

from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import lora, tracking, validation
from latentops.pipelines.finetune.config import build_config

BASE = TINY_RECIPE


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightsRef:
    return tiny_sd1_weights(tmp_path_factory)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_glyphs(tmp_path_factory.mktemp("instances"), widths=(64, 64, 64), letters="ABC")


def _first_prompt_released(request: validation.RenderRequest, *, device: str) -> list[Image.Image]:
    """A renderer whose screening quarantines every image but the first prompt's (left out, as the
    governed path leaves out a quarantined image)."""
    return [Image.new("RGB", (32, 32), "red")] * request.images_per_prompt


def test_the_mlflow_run_holds_val_loss_and_the_released_validation_images(weights: WeightsRef, instances: Path,
                                                                          tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    tracker = tracking.MlflowTracker(tracking_uri=uri, base_model_path=weights.path, registered_name="lora-glyph",
                                     out_dir=out)
    config = build_config({**BASE, "steps": 4, "checkpoint_every": 4, "validation_split": 1, "validation_every": 2,
                           "validation_prompts": ["a sks glyph", "a sks glyph on fire"]})
    result = lora.train(config, weights=weights, instance_dir=instances, out_dir=out, cache_dir=tmp_path / "cache",
                        tracker=tracker, renderer=_first_prompt_released)
    client = tracking.client(uri)
    assert tracker.run_id is not None
    history = client.get_metric_history(tracker.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == result.val_losses and [m.step for m in history] == [2, 4]
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "validation_images")] == [(2, 1.0)]
    logged = [f.path for f in client.list_artifacts(tracker.run_id, "validation/step-000002")]
    assert logged == ["validation/step-000002/sample-000.png"]  # the quarantined second prompt never reaches the run
    local = client.download_artifacts(tracker.run_id, "validation/step-000002/sample-000.png", str(tmp_path / "dl"))
    assert Image.open(local).getpixel((0, 0)) == (255, 0, 0)


@pytest.fixture
def governed(home: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A migrated database and home for runs that render through the governed generation path; no
    screening detector exists offline, so images are quarantined until the policy data releases them."""
    from latentops.core.settings import get_settings
    from latentops.governance import policy

    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    get_settings.cache_clear()
    policy.use_service(None)
    yield get_settings()
    get_settings.cache_clear()


def _release_unscreened(database_url: str) -> None:
    from latentops.governance import policy
    from latentops.platform.database import session_scope

    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)


def test_validation_images_of_the_governed_path_reach_the_run_only_when_released(  # type: ignore[no-untyped-def]
        weights: WeightsRef, instances: Path, tmp_path: Path, governed) -> None:
    from latentops.platform.services.generation import render_for_training

    def renderer(request: validation.RenderRequest, *, device: str) -> list[Image.Image]:
        """The governed path; after its first render the policy data releases unscreened images."""
        images = render_for_training(request, device=device)
        _release_unscreened(governed.database_url)
        return images

    out = tmp_path / "run"
    tracker = tracking.MlflowTracker(tracking_uri=governed.mlflow_tracking_uri, base_model_path=weights.path,
                                     registered_name="lora-glyph", out_dir=out)
    config = build_config({**BASE, "steps": 3, "checkpoint_every": 3, "validation_every": 1})
    lora.train(config, weights=weights, instance_dir=instances, out_dir=out, cache_dir=tmp_path / "cache",
               tracker=tracker, renderer=renderer)
    client = tracking.client(governed.mlflow_tracking_uri)
    assert tracker.run_id is not None
    # Step 1 was quarantined by screening (no detector, nothing released): no file, no artefact.
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "validation_images")] == [(1, 0.0), (2, 1.0)]
    assert not list((out / "validation" / "step-000001").glob("*.png"))
    assert client.list_artifacts(tracker.run_id, "validation/step-000001") == []
    assert [f.path for f in client.list_artifacts(tracker.run_id, "validation/step-000002")] == [
        "validation/step-000002/sample-000.png"]
    assert client.get_metric_history(tracker.run_id, "val_loss") == []  # no held-out split: no val_loss


def test_metrics_go_to_the_run_in_batches_and_none_is_lost_when_the_run_fails(  # type: ignore[no-untyped-def]
        weights: WeightsRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentops.platform.services import finetune

    monkeypatch.setattr(tracking, "METRICS_FLUSH_S", 3600.0)  # no flush falls due by time during this test
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MlflowTracker(tracking_uri=uri, base_model_path=weights.path, registered_name="lora-glyph",
                                     out_dir=tmp_path / "run")
    tracker.start(config=build_config({**BASE, "steps": 40}), meta={}, resumed_from=0)
    assert tracker.run_id is not None
    client = tracking.client(uri)

    def steps_in_run() -> list[int]:
        return [m.step for m in client.get_metric_history(tracker.run_id, "loss")]

    with pytest.raises(RuntimeError, match="the run broke"), finetune._metrics_sent(tracker):
        for step in range(1, 31):
            tracker.metrics(step, {"loss": 1.0 / step, "lr": 1e-4})
        assert steps_in_run() == [1]  # the first step's metrics at once, the others held for one write
        raise RuntimeError("the run broke")
    assert steps_in_run() == list(range(1, 31))  # the failure sent what was held
    assert [m.value for m in client.get_metric_history(tracker.run_id, "lr")] == [1e-4] * 30

    tracker.metrics(31, {"loss": 0.5})
    tracker.metrics(32, {tracking.VALIDATION_IMAGES: 0.0})  # a validation step sends everything at once
    assert steps_in_run() == list(range(1, 32))
