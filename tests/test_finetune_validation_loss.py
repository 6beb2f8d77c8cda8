"""The held-out split and validation loss of a LoRA run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import TINY_RECIPE, draw_glyphs, tiny_sd1_weights
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import data, heldout, lora, validation
from latentops.pipelines.finetune.config import build_config

BASE = TINY_RECIPE


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightsRef:
    return tiny_sd1_weights(tmp_path_factory)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six drawn glyphs, two aspect ratios (so the held-out images fall in more than one bucket)."""
    folder = draw_glyphs(tmp_path_factory.mktemp("instances"), widths=(64, 112) * 3, letters="ABC")
    (folder / "glyph-0.txt").write_text("a sks glyph, blue ink")
    return folder


def _white(request: validation.RenderRequest, *, device: str) -> list[Image.Image]:
    """A caller's renderer that releases every image (the governed path is tested in test_finetune_recipe)."""
    return [Image.new("RGB", (32, 32), "white") for _ in request.prompts for _ in range(request.images_per_prompt)]


def _planned_files(out: Path, step: int) -> set[str]:
    """The files the checkpoint's batch plan trains on (indices into the manifest's training images)."""
    state = json.loads((out / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())
    training = [i["file"] for i in json.loads((out / "manifest.json").read_text())["instance_images"]]
    return {training[sample[0]] for batch in state["plan"] for sample in batch}


def test_the_split_is_fixed_by_the_seed_and_sized_by_fraction_or_count(instances: Path) -> None:
    images = data.require_instances(instances, instance_prompt="a sks glyph")
    train, held = heldout.split(images, 2, seed=7)
    assert len(held) == 2 and len(train) == 4 and not {i.file for i in held} & {i.file for i in train}
    assert heldout.split(images, 2, seed=7) == (train, held)  # every attempt and resume: the same split
    assert [len(heldout.split(images, value, seed=7)[1]) for value in (0, 0.1, 0.17, 0.34, 0.5, 1, 5)] == [0, 0, 1, 2, 3, 1, 5]
    assert {frozenset(i.file for i in heldout.split(images, 2, seed=s)[1]) for s in range(8)} != {frozenset(i.file for i in held)}
    # A tiny set with a fraction holds out nothing rather than starve training.
    assert heldout.split(images[:5], 0.1, seed=7) == (images[:5], [])


def test_bad_splits_are_refused_naming_the_field_before_any_work(weights: WeightsRef, instances: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^validation_split: must be a fraction below 1 or a whole number of "
                                           r"images, got 1.5$"):
        build_config({**BASE, "validation_split": 1.5})
    with pytest.raises(InvalidInput, match=r"^validation_split: Input should be greater than or equal to 0, got -1$"):
        build_config({**BASE, "validation_split": -1})
    config = build_config({**BASE, "steps": 2, "validation_split": 6})
    with pytest.raises(InvalidInput, match=r"^validation_split: 6 holds out 6 of the 6 instance image\(s\), "
                                           r"leaving none to train on$"):
        lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "run", cache_dir=tmp_path / "c")
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_val_loss_at_every_evaluation_fixed_for_a_seed_and_held_out_images_never_trained(
        weights: WeightsRef, instances: Path, tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 5, "checkpoint_every": 5, "validation_split": 2, "validation_every": 2})
    cache = tmp_path / "cache"
    first = lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "a", cache_dir=cache,
                       renderer=_white)
    # At the validation steps and at the end; the same run again gives the very same values.
    assert [step for step, _ in first.val_losses] == [2, 4, 5]
    again = lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "b", cache_dir=cache,
                       renderer=_white)
    assert again.val_losses == first.val_losses
    assert len({value for _, value in first.val_losses}) == 3  # the weights changed between evaluations
    # Recorded in the result, the checkpoint and the manifest; the held-out files are never in the plan.
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert [tuple(point) for point in result["val_losses"]] == first.val_losses
    held = json.loads((tmp_path / "a" / "manifest.json").read_text())["heldout_images"]
    images = data.require_instances(instances, instance_prompt=config.instance_prompt)
    assert held == [i.file for i in heldout.split(images, 2, seed=config.seed)[1]]
    assert _planned_files(tmp_path / "a", 5) == {i.file for i in images} - set(held)


def test_val_loss_is_the_same_after_a_resume(weights: WeightsRef, instances: Path, tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 4, "checkpoint_every": 2, "validation_split": 0.34, "validation_every": 2})
    cache = tmp_path / "cache"
    run = {"weights": weights, "instance_dir": instances, "cache_dir": cache, "renderer": _white}
    straight = lora.train(config, out_dir=tmp_path / "a", **run)
    lora.train(config, out_dir=tmp_path / "b", stop_after=2, **run)
    resumed = lora.train(config, out_dir=tmp_path / "b", resume=True, **run)
    assert [s for s, _ in straight.val_losses] == [2, 4]
    assert resumed.val_losses == straight.val_losses and resumed.losses == straight.losses



def test_a_job_whose_split_leaves_nothing_to_train_is_refused_before_screening(  # type: ignore[no-untyped-def]
        weights: WeightsRef, instances: Path, home: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    from latentops.core.settings import get_settings
    from latentops.platform.database import session_scope
    from latentops.platform.services import finetune
    from latentops.platform.services import models as models_service
    from latentops.platform.tables import PolicyDecision

    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    settings = get_settings()
    with session_scope(sqlite_url) as db:
        models_service.import_model(db, source=weights.path, name="tiny", actor="cli:tester",
                                    store_root=settings.model_store, sensitivity="public")
    request = finetune.Request(model="tiny", instance_dir=instances, attest_licence=True, attest_consent=True,
                               values={**BASE, "steps": 2, "validation_split": 6})
    with session_scope(sqlite_url) as db:
        decisions = db.scalar(sa.select(sa.func.count()).select_from(PolicyDecision))
        with pytest.raises(InvalidInput, match=r"^validation_split: 6 holds out 6 of the 6 instance image\(s\)"):
            finetune.preflight(db, settings=settings, actor="cli:tester", request=request)
        # Refused before the copyright screening and the jobs policy decide anything, and nothing is frozen.
        assert db.scalar(sa.select(sa.func.count()).select_from(PolicyDecision)) == decisions
    assert not (settings.home / "artifacts" / "finetune-uploads").exists()
    get_settings.cache_clear()


@pytest.mark.one_backend
@pytest.mark.slow
def test_finetune_run_reports_val_loss_and_refuses_a_split_that_leaves_nothing(  # type: ignore[no-untyped-def]
        weights: WeightsRef, instances: Path, tmp_path: Path, settings_env, cli) -> None:
    from latentops.platform.database import session_scope
    from latentops.platform.services import models as models_service

    with session_scope(settings_env.database_url) as db:
        models_service.import_model(db, source=weights.path, name="tiny", actor="cli:tester",
                                    store_root=settings_env.model_store, sensitivity="public")
    job = tmp_path / "job.toml"
    job.write_text(f'[finetune]\nmodel = "tiny"\ninstance-dir = "{instances}"\ninstance-prompt = "a sks glyph"\n'
                   'steps = 3\nrank = 4\nresolution = 32\nsamples = false\nvalidation-split = 0.34\n'
                   'attest-licence = true\nattest-consent = true\n')
    done = cli("finetune", "run", "--config", str(job), "--out", str(tmp_path / "out"), "--no-track")
    assert done.returncode == 0, done.stderr
    assert "val_loss " in done.stderr and ", val_loss " in done.stdout  # the progress bar and the last line
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [step for step, _ in result["val_losses"]] == [3]
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["heldout_images"]) == 2
    job.write_text(job.read_text().replace("validation-split = 0.34", "validation-split = 6"))
    refused = cli("finetune", "run", "--config", str(job), "--out", str(tmp_path / "o2"))
    assert refused.returncode == 1
    assert "validation_split: 6 holds out 6 of the 6 instance image(s), leaving none to train on" in refused.stderr
    assert not (tmp_path / "o2").exists()
