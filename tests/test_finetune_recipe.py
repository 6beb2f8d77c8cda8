"""The LoRA recipe on tiny real models: exact resume, caching, failures, families, interoperability."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from finetune_helpers import draw_glyphs
from PIL import Image
from safetensors.torch import load_file, save_file

from latentops.core.errors import Conflict, InvalidInput, ServiceUnavailable
from latentops.pipelines import tiny
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import checkpoint, dreambooth, lora, validation
from latentops.pipelines.finetune.config import build_config
from latentops.platform.services.generation import render_for_training

REPO = Path(__file__).resolve().parents[1]
BASE = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 1, "lr": 1e-3,
        "validation_steps": 1, "seed": 7, "samples": False}


@pytest.fixture
def governed(home: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A migrated database and home for the runs that render (they take the governed generation path)."""
    from latentops.core.settings import get_settings

    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    get_settings.cache_clear()
    settings = get_settings()
    _release_unscreened(settings)
    yield settings
    get_settings.cache_clear()


def _release_unscreened(settings) -> None:  # type: ignore[no-untyped-def]
    """No screening detector weights exist offline: let the tiny models' images be released."""
    from latentops.governance import policy
    from latentops.platform.database import session_scope

    policy.use_service(None)
    with session_scope(settings.database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(settings.database_url) as db:
        policy.reload(db)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: tiny.create(family, root / family) for family in ("sd1", "sdxl", "sd3", "flux")}


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = draw_glyphs(tmp_path_factory.mktemp("instances"))
    (folder / "glyph-0.txt").write_text("a sks glyph, blue ink")
    return folder


def _weights(models: dict[str, Path], family: str) -> WeightsRef:
    return WeightsRef(content_hash=f"tiny-{family}-seed0", path=models[family], family=family)


def _lora_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


def test_a_run_stopped_at_12_and_resumed_ends_bit_identical(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = build_config({**BASE, "steps": 20, "checkpoint_every": 4, "ema_decay": 0.9, "noise_offset": 0.05,
                           "min_snr_gamma": 5.0, "lr_schedule": "cosine", "warmup_steps": 3, "crop": "random"})
    cache = tmp_path / "cache"
    straight = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "a",
                          cache_dir=cache)
    stopped = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "b",
                         cache_dir=cache, stop_after=12)
    assert stopped.stopped_early and stopped.steps == 12
    assert checkpoint.latest_step(tmp_path / "b" / "checkpoints") == 12
    resumed = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "b",
                         cache_dir=cache, resume=True)
    assert resumed.resumed_from == 12 and resumed.steps == 20
    assert resumed.losses == straight.losses
    a, b = _lora_tensors(tmp_path / "a"), _lora_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Only the newest checkpoints are kept, and the final one holds the full state.
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*"))
    assert kept == ["step-000016", "step-000020"]
    assert {p.name for p in (tmp_path / "b" / "checkpoints" / "step-000020").iterdir()} == {
        "trainable.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}


# bitsandbytes is optional and kept out of the test environment (peft imports it in every process once it
# is importable); `make install` puts it in a folder of its own, on the path of this script's process only.
BITSANDBYTES = REPO / ".venv" / "opt" / "bitsandbytes"
EIGHT_BIT_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from latentops.pipelines.engine import WeightsRef
    from latentops.pipelines.finetune import lora
    from latentops.pipelines.finetune.config import build_config

    model, instances, root = map(Path, sys.argv[1:4])
    config = build_config(json.loads(sys.argv[4]))
    weights = WeightsRef(content_hash="tiny-sd1-seed0", path=model, family="sd1")
    run = {"weights": weights, "instance_dir": instances, "cache_dir": root / "cache"}
    straight = lora.train(config, out_dir=root / "a", **run)
    lora.train(config, out_dir=root / "b", stop_after=4, **run)
    resumed = lora.train(config, out_dir=root / "b", resume=True, **run)
    print(json.dumps({"optimizer": straight.optimizer, "losses": straight.losses,
                      "resumed_from": resumed.resumed_from, "resumed_losses": resumed.losses}))
""")


def test_8bit_adamw_keeps_8bit_moments_trains_like_adamw_and_resumes_bit_identical(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (BITSANDBYTES / "bitsandbytes").is_dir(), f"{BITSANDBYTES} is missing: run make install"
    # Rank 128 on the tiny model's 32-wide layers: 4,096-element LoRA matrices, the size from which
    # bitsandbytes keeps a tensor's Adam moments in 8 bits (smaller ones stay in 32).
    settings = {**BASE, "steps": 8, "checkpoint_every": 4, "rank": 128, "lr": 1e-4}
    done = subprocess.run([sys.executable, "-c", EIGHT_BIT_SCRIPT, str(models["sd1"]), str(instances), str(tmp_path),
                           json.dumps({**settings, "optimizer": "adamw_8bit"})],
                          capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(BITSANDBYTES)})
    assert done.returncode == 0, done.stderr[-3000:]
    eight = json.loads(done.stdout.strip().splitlines()[-1])
    assert eight["optimizer"] == "adamw_8bit"
    saved = checkpoint.read_torch(checkpoint.load_latest(tmp_path / "a" / "checkpoints"), "optimizer.pt")["state"]
    # bitsandbytes packs each tensor's quantisation state under one key of its state dict.
    packed = [state.get("__bnb_optimizer_quant_state__", state) for state in saved.values()]
    moments = [state["state1"] for state in packed if state["state1"].numel() >= 4096]
    assert moments and all(m.dtype == torch.uint8 for m in moments), "first moments of large tensors are 8-bit"
    # The same run with 32-bit AdamW moves the weights the same way: 8 bits approximate the moments.
    cache = tmp_path / "cache"
    full = lora.train(build_config({**settings, "optimizer": "adamw"}), weights=_weights(models, "sd1"),
                      instance_dir=instances, out_dir=tmp_path / "full", cache_dir=cache)
    assert full.optimizer == "adamw"
    lora.train(build_config({**settings, "steps": 1, "checkpoint_every": 1, "lr": 1e-12}), weights=_weights(models, "sd1"),
               instance_dir=instances, out_dir=tmp_path / "initial", cache_dir=cache)
    w0, w8, w32 = (_lora_tensors(tmp_path / name) for name in ("initial", "a", "full"))
    for key in w32:
        moved, gap = (w32[key] - w0[key]).norm(), (w8[key] - w32[key]).norm()
        assert moved > 0 and gap < 0.1 * moved, f"{key}: 8-bit update differs from 32-bit by {gap / moved:.0%}"
    # Stopped at 4 and resumed: the 8-bit state round-trips through the checkpoint exactly.
    assert eight["resumed_from"] == 4 and eight["resumed_losses"] == eight["losses"]
    b = _lora_tensors(tmp_path / "b")
    assert all(torch.equal(w8[k], b[k]) for k in w8)


def test_8bit_adamw_without_bitsandbytes_is_refused_before_any_work(models, instances, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, whatever this environment holds
    config = build_config({**BASE, "steps": 2, "optimizer": "adamw_8bit"})
    with pytest.raises(InvalidInput, match=r"optimizer: adamw_8bit needs the bitsandbytes package.*latentops\[bnb\]"):
        lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists(), "nothing is cached or written for a refused run"


def test_features_are_cached_by_content_and_reused_across_jobs(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = build_config({**BASE, "steps": 5, "checkpoint_every": 5, "flip": False})  # one epoch: every image
    cache = tmp_path / "cache"
    lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "first", cache_dir=cache)
    entries = sorted(p.name for p in cache.rglob("*.safetensors"))
    assert entries
    # The same pictures under other names and in another order: every feature is found by content.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for index, path in enumerate(sorted(instances.glob("*.png"), reverse=True)):
        shutil.copy(path, renamed / f"z{index}.png")
        if path.with_suffix(".txt").exists():
            shutil.copy(path.with_suffix(".txt"), renamed / f"z{index}.txt")
    lora.train(config, weights=_weights(models, "sd1"), instance_dir=renamed, out_dir=tmp_path / "second", cache_dir=cache)
    assert sorted(p.name for p in cache.rglob("*.safetensors")) == entries
    # Another base model version never sees these entries.
    other = WeightsRef(content_hash="another-version", path=models["sd1"], family="sd1")
    lora.train(config, weights=other, instance_dir=instances, out_dir=tmp_path / "third", cache_dir=cache)
    assert len(list(cache.rglob("*.safetensors"))) == 2 * len(entries)


def test_an_existing_run_needs_resume_and_a_changed_config_is_refused(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = build_config({**BASE, "steps": 4, "checkpoint_every": 2})
    lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run", stop_after=2)
    with pytest.raises(Conflict, match="--resume"):
        lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run")
    changed = build_config({**BASE, "steps": 4, "checkpoint_every": 2, "rank": 8})
    with pytest.raises(Conflict, match="config_fingerprint"):
        lora.train(changed, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run", resume=True)


def test_nan_loss_fails_with_that_reason_and_keeps_the_last_good_checkpoint(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model"
    shutil.copytree(models["sd1"], model)
    weights = WeightsRef(content_hash="damaged-later", path=model, family="sd1")
    config = build_config({**BASE, "steps": 8, "checkpoint_every": 2})
    lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "run", stop_after=4)
    # The stored weights go bad on disk (a damaged volume): the loss becomes NaN at the next step.
    unet_file = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(unet_file))
    tensors["conv_out.bias"] = torch.full_like(tensors["conv_out.bias"], float("nan"))
    save_file(tensors, str(unet_file))
    with pytest.raises(checkpoint.TrainingFailed, match=r"loss is NaN or infinite at step 5; last good checkpoint: step 4"):
        lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "run", resume=True)
    kept = checkpoint.load_latest(tmp_path / "run" / "checkpoints")
    assert kept is not None and kept.step == 4
    assert torch.isfinite(torch.cat([t.flatten() for t in checkpoint.read_tensors(kept, "trainable.safetensors").values()])).all()


DISK_FULL_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from latentops.pipelines.engine import WeightsRef
    from latentops.pipelines.finetune import lora
    from latentops.pipelines.finetune.checkpoint import TrainingFailed
    from latentops.pipelines.finetune.config import build_config

    model, instances, out = map(Path, sys.argv[1:4])

    class FillDiskAfterFirstCheckpoint:
        def progress(self, step, total, **metrics):
            if step == 2:
                # From here on no file may grow past 64 bytes: the next checkpoint cannot be written.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        def log(self, message):
            pass
        def check_cancelled(self):
            pass

    config = build_config({"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "steps": 6,
                           "checkpoint_every": 2, "validation_steps": 1, "samples": False})
    try:
        lora.train(config, weights=WeightsRef("tiny-sd1-seed0", model, "sd1"), instance_dir=instances, out_dir=out,
                   cache_dir=out / "cache", hooks=FillDiskAfterFirstCheckpoint())
    except TrainingFailed as error:
        print("FAILED:", error.detail)
        sys.exit(3)
""")


def test_a_full_disk_while_checkpointing_fails_cleanly_with_the_previous_checkpoint_intact(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT, str(models["sd1"]), str(instances), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ}, check=False)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "checkpoint at step 4 could not be written (disk full); previous checkpoint (step 2) intact" in done.stdout
    kept = checkpoint.load_latest(out / "checkpoints")
    assert kept is not None and kept.step == 2
    assert not list((out / "checkpoints").glob(".staging-*"))
    assert set(checkpoint.read_tensors(kept, "trainable.safetensors"))


def _render(pipeline, family: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    size = 32 if family == "sd3" else 64
    with torch.no_grad():
        return torch.from_numpy(pipeline("a sks glyph", num_inference_steps=2, height=size, width=size, output_type="np",
                                         generator=torch.Generator().manual_seed(0)).images)


def test_lora_files_load_in_plain_diffusers_and_kohya_layout_loads_through_its_converter(models, instances, tmp_path: Path, governed) -> None:  # type: ignore[no-untyped-def]
    from diffusers import DiffusionPipeline

    config = build_config({**BASE, "steps": 4, "checkpoint_every": 4, "train_text_encoder": True, "samples": True})
    result = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run",
                        renderer=render_for_training)
    assert result.weights_path.name == "pytorch_lora_weights.safetensors" and result.kohya_path is not None
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in load_file(str(result.kohya_path)))
    pipe = DiffusionPipeline.from_pretrained(str(models["sd1"]))
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe, "sd1")
    pipe.load_lora_weights(str(tmp_path / "run"))
    with_lora = _render(pipe, "sd1")
    assert not torch.equal(before, with_lora)
    pipe.unload_lora_weights()
    assert torch.allclose(_render(pipe, "sd1"), before, atol=1e-6)
    pipe.load_lora_weights(str(result.kohya_path.parent), weight_name=result.kohya_path.name)
    assert torch.allclose(_render(pipe, "sd1"), with_lora, atol=1e-5)
    assert (tmp_path / "run" / "samples" / "grid.png").exists()
    assert (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_family_trains_and_its_lora_loads_in_diffusers(family: str, models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from diffusers import DiffusionPipeline

    extra = {"train_text_encoder": True} if family != "flux" else {}
    config = build_config({**BASE, "steps": 2, "checkpoint_every": 2, "lr": 5e-3, **extra})
    result = lora.train(config, weights=_weights(models, family), instance_dir=instances, out_dir=tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert (result.kohya_path is not None) == (family in ("sdxl", "flux"))  # sd3: none (see interop)
    pipe = DiffusionPipeline.from_pretrained(str(models[family]))
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe, family)
    pipe.load_lora_weights(str(tmp_path / "run"))
    assert not torch.equal(before, _render(pipe, family))


def test_dreambooth_generates_missing_class_images_and_trains_with_the_prior(models, instances, tmp_path: Path, governed) -> None:  # type: ignore[no-untyped-def]
    config = build_config({**BASE, "method": "dreambooth", "class_prompt": "a glyph", "num_class_images": 3,
                           "class_generation_steps": 1, "steps": 2, "checkpoint_every": 2, "prior_loss_weight": 0.5})
    class_dir = tmp_path / "class"
    result = dreambooth.run(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run",
                            class_dir=class_dir, renderer=render_for_training)
    assert len(list(class_dir.glob("*.png"))) == 3
    assert result.steps == 2 and len(result.losses) == 2
    # A second run with enough class images generates none.
    before = {p: p.stat().st_mtime_ns for p in class_dir.glob("*.png")}
    assert dreambooth.ensure_class_images(config, weights=_weights(models, "sd1"), class_dir=class_dir, device="cpu",
                                          hooks=lora.QuietHooks()) == 0
    assert {p: p.stat().st_mtime_ns for p in class_dir.glob("*.png")} == before


NO_RENDERER = r"^rendering: no governed renderer was given to this run; training images are never rendered without one$"


def test_a_run_given_no_renderer_renders_nothing_and_says_why(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights = _weights(models, "sd1")
    with pytest.raises(ServiceUnavailable, match=NO_RENDERER):
        validation.render(validation.RenderRequest(weights=weights, prompts=["a sks glyph"], seed=1, steps=1), renderer=None)
    # DreamBooth's class images: refused before the first one, and no training starts.
    config = build_config({**BASE, "method": "dreambooth", "class_prompt": "a glyph", "num_class_images": 2,
                           "class_generation_steps": 1, "steps": 2, "checkpoint_every": 2})
    with pytest.raises(ServiceUnavailable, match=NO_RENDERER):
        dreambooth.run(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "dreambooth",
                       class_dir=tmp_path / "class")
    assert not list((tmp_path / "class").iterdir()) and not (tmp_path / "dreambooth").exists()
    # A LoRA run that asks for final samples trains, then refuses to render them (the bare engine is never used).
    config = build_config({**BASE, "steps": 2, "checkpoint_every": 2, "samples": True})
    with pytest.raises(ServiceUnavailable, match=NO_RENDERER):
        lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()


def test_the_renderer_the_caller_gives_renders_every_image_of_a_run(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    asked: list[validation.RenderRequest] = []

    def renderer(request: validation.RenderRequest, *, device: str) -> list[Image.Image]:
        asked.append(request)
        return [Image.new("RGB", (32, 32), "white")] * (len(request.prompts) * request.images_per_prompt)

    config = build_config({**BASE, "steps": 2, "checkpoint_every": 2, "validation_every": 1, "samples": True})
    result = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run",
                        job_id=5, renderer=renderer)
    assert [(r.purpose, r.images_per_prompt, r.job_id) for r in asked] == [("validation", 1, 5), ("samples", 2, 5)]
    assert all(r.adapter is not None and r.prompts == ["a sks glyph"] for r in asked)
    assert len(list((tmp_path / "run" / "validation" / "step-000001").glob("sample-*.png"))) == 1
    assert len(result.samples) == 2 and result.sample_grid is not None and result.sample_grid.exists()
