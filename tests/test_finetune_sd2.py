"""Stable Diffusion 2 as a trainable family: the tiny 768-v model, its detection, v-prediction, resume, diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from finetune_helpers import draw_glyphs
from PIL import Image
from safetensors.torch import load_file
from test_finetune_recipe import _release_unscreened

from latentops.pipelines import tiny
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import data, lora
from latentops.pipelines.finetune.config import build_config
from latentops.pipelines.finetune.families import Family
from latentops.pipelines.store import ModelStore, family_of_diffusers
from latentops.platform.services.generation import render_for_training
from latentops.platform.services.models import native_resolution

BASE = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 1, "lr": 5e-3,
        "validation_steps": 1, "seed": 11, "samples": False}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: tiny.create(family, root / family) for family in ("sd1", "sd2")}


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_glyphs(tmp_path_factory.mktemp("instances"))


@pytest.fixture
def governed(home: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A migrated database and home, for runs that render through the governed generation path."""
    from latentops.core.settings import get_settings

    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    get_settings.cache_clear()
    _release_unscreened(get_settings())
    yield
    get_settings.cache_clear()


def _weights(models: dict[str, Path], family: str) -> WeightsRef:
    return WeightsRef(content_hash=f"tiny-{family}-seed0", path=models[family], family=family)


def _pipeline(path: Path) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _render(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    with torch.no_grad():
        return torch.from_numpy(pipeline("a sks glyph", num_inference_steps=2, height=32, width=32, output_type="np",
                                         generator=torch.Generator().manual_seed(0)).images)


def _fixed_latents(family: Family, instances: Path, copies: int) -> torch.Tensor:
    """The first instance image, resized to 32 px, as ``copies`` model-space latents."""
    image = data.decode(min(instances.glob("*.png")), min_side=8).convert("RGB").resize((32, 32))
    mean, std = family.latent_distribution(data.to_tensor(image).unsqueeze(0))
    return family.to_model_latents(mean, std, torch.Generator().manual_seed(0)).repeat(copies, 1, 1, 1)


def test_tiny_sd2_keeps_what_tells_sd2_from_sd1_and_is_detected_as_sd2(models: dict[str, Path], tmp_path: Path) -> None:
    unet = json.loads((models["sd2"] / "unet" / "config.json").read_text())
    encoder = json.loads((models["sd2"] / "text_encoder" / "config.json").read_text())
    scheduler = json.loads((models["sd2"] / "scheduler" / "scheduler_config.json").read_text())
    assert unet["use_linear_projection"] is True and unet["attention_head_dim"] == [2, 4]
    assert unet["cross_attention_dim"] == encoder["hidden_size"] == 32  # SD1's tiny encoder: 16
    assert encoder["hidden_act"] == "gelu" and scheduler["prediction_type"] == "v_prediction"
    pipeline = _pipeline(models["sd2"])
    ids = pipeline.tokenizer("a red cube", padding="max_length", max_length=77).input_ids
    assert ids[:5] == [49406, 320, 736, 11353, 49407] and set(ids[5:]) == {0}  # OpenCLIP pads with "!" (id 0)
    # The catalogue's detection, and the native size the recipe defaults to (UNet sample size x VAE scale).
    store = ModelStore(tmp_path / "store")
    assert store.inspect(models["sd2"]).family == "sd2" and store.inspect(models["sd1"]).family == "sd1"
    assert (native_resolution(models["sd2"]), native_resolution(models["sd1"])) == (48, 32)
    # The same seed gives the same weights; another seed other weights.
    again = tiny.create("sd2", tmp_path / "again")
    other = tiny.create("sd2", tmp_path / "other", seed=1)
    hashes = [store.inspect(path).content_hash for path in (models["sd2"], again, other)]
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize(("unet", "family"), [
    ({"cross_attention_dim": 1024, "use_linear_projection": True, "attention_head_dim": [5, 10, 20, 20]}, "sd2"),
    ({"cross_attention_dim": 1024}, "sd2"),  # an SD 2.0 conversion that predates use_linear_projection
    ({"cross_attention_dim": 256, "use_linear_projection": True}, "sd2"),  # a narrower SD2 (pruned, tiny)
    ({"cross_attention_dim": 768, "use_linear_projection": False, "attention_head_dim": 8}, "sd1"),
    ({"cross_attention_dim": 768}, "sd1"),
])
def test_sd2_is_told_from_sd1_by_its_unet_config(tmp_path: Path, unet: dict[str, object], family: str) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet}))
    assert family_of_diffusers(tmp_path) == family


def test_sd2_loss_is_against_the_velocity_and_sd1_against_the_noise(models: dict[str, Path], instances: Path) -> None:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear, by hand
    alphas = torch.cumprod(1 - betas, dim=0)
    for name, expected in (("sd2", "v_prediction"), ("sd1", "epsilon")):
        family = Family(name, _pipeline(models[name]))
        assert family.objective == expected
        latents = _fixed_latents(family, instances, copies=4)
        cond = family.encode(["a sks glyph"] * 4, torch.device("cpu"))
        with torch.no_grad():
            loss = family.loss(latents, cond, generator=torch.Generator().manual_seed(3), micro=[], noise_offset=0.0,
                               min_snr_gamma=None, dtype=torch.float32)
            # The same draws, the same order: noise, then timesteps.
            generator = torch.Generator().manual_seed(3)
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, 1000, (4,), generator=generator)
            a = alphas[timesteps].float().view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            prediction = family.denoiser(noisy, timesteps, cond["prompt_embeds"]).sample
        velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
        against = {kind: F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
                   for kind, target in (("v_prediction", velocity), ("epsilon", noise))}
        assert torch.allclose(loss, against[expected], rtol=1e-4, atol=1e-6), name
        other = "epsilon" if expected == "v_prediction" else "v_prediction"
        assert not torch.allclose(loss, against[other], rtol=1e-2), name


def test_sd2_trains_with_a_finite_loss_that_the_lora_lowers(models: dict[str, Path], instances: Path,
                                                           tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 24, "checkpoint_every": 24, "lr": 1e-2, "crop": "center", "flip": False})
    result = lora.train(config, weights=_weights(models, "sd2"), instance_dir=instances, out_dir=tmp_path / "run")
    assert len(result.losses) == 24 and all(torch.isfinite(torch.tensor(result.losses)))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["family"] == "sd2" and manifest["objective"] == "v_prediction"
    # Single steps draw random timesteps, so their losses scatter; the same 32 draws before and after
    # training show what the LoRA learnt: the v-prediction loss on the training images goes down.
    pipeline = _pipeline(models["sd2"])
    family = Family("sd2", pipeline)

    def fixed_loss() -> float:
        latents = _fixed_latents(family, instances, copies=32)
        cond = family.encode(["a sks glyph"] * 32, torch.device("cpu"))
        with torch.no_grad():
            return float(family.loss(latents, cond, generator=torch.Generator().manual_seed(5), micro=[],
                                     noise_offset=0.0, min_snr_gamma=None, dtype=torch.float32).mean())

    before = fixed_loss()
    pipeline.load_lora_weights(str(tmp_path / "run"))
    after = fixed_loss()
    assert after < before * 0.9, (before, after)


def test_sd2_stopped_and_resumed_ends_bit_identical(models: dict[str, Path], instances: Path, tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 6, "checkpoint_every": 2, "train_text_encoder": True, "min_snr_gamma": 5.0,
                           "crop": "random"})
    run = {"weights": _weights(models, "sd2"), "instance_dir": instances, "cache_dir": tmp_path / "cache"}
    straight = lora.train(config, out_dir=tmp_path / "a", **run)
    stopped = lora.train(config, out_dir=tmp_path / "b", stop_after=3, **run)
    assert stopped.stopped_early and stopped.steps == 3
    resumed = lora.train(config, out_dir=tmp_path / "b", resume=True, **run)
    assert resumed.resumed_from == 3 and resumed.losses == straight.losses
    a = load_file(str(tmp_path / "a" / lora.WEIGHTS_NAME))
    b = load_file(str(tmp_path / "b" / lora.WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder.") for k in a) and any(k.startswith("unet.") for k in a)


def test_sd2_lora_loads_in_stable_diffusion_pipeline_and_through_the_kohya_converter(  # type: ignore[no-untyped-def]
        models: dict[str, Path], instances: Path, tmp_path: Path, governed) -> None:
    config = build_config({**BASE, "steps": 3, "checkpoint_every": 3, "train_text_encoder": True, "samples": True})
    result = lora.train(config, weights=_weights(models, "sd2"), instance_dir=instances, out_dir=tmp_path / "run",
                        renderer=render_for_training)
    # The final samples went through the governed engine with the sd2 LoRA loaded (48 px: the native size).
    assert result.sample_grid is not None and len(result.samples) == 2
    assert {Image.open(path).size for path in result.samples} == {(48, 48)}
    keys = load_file(str(result.weights_path)).keys()
    # diffusers' names: the UNet's attention projections (its linear-projection transformer blocks too).
    assert any(".transformer_blocks.0.attn2.to_k." in k for k in keys if k.startswith("unet."))
    assert any(".self_attn.q_proj." in k for k in keys if k.startswith("text_encoder."))
    pipeline = _pipeline(models["sd2"])
    before = _render(pipeline)
    pipeline.load_lora_weights(str(tmp_path / "run"))
    with_lora = _render(pipeline)
    assert not torch.allclose(before, with_lora, atol=1e-3)
    pipeline.unload_lora_weights()
    assert torch.allclose(_render(pipeline), before, atol=1e-6)
    assert result.kohya_path is not None
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in load_file(str(result.kohya_path)))
    pipeline.load_lora_weights(str(result.kohya_path.parent), weight_name=result.kohya_path.name)
    assert torch.allclose(_render(pipeline), with_lora, atol=1e-5)


@pytest.mark.one_backend
@pytest.mark.slow
def test_sd2_from_create_tiny_through_import_to_a_finetune_run_at_its_native_size(  # type: ignore[no-untyped-def]
        cli, settings_env, tmp_path: Path) -> None:
    made = cli("models", "create-tiny", "--family", "sd2", "--out", str(tmp_path / "sd2"))
    assert made.returncode == 0, made.stderr
    imported = cli("models", "import", str(tmp_path / "sd2"), "--name", "tiny-v", "--sensitivity", "public", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["family"] == "sd2"
    _release_unscreened(settings_env)
    (tmp_path / "instances").mkdir()
    instances = draw_glyphs(tmp_path / "instances")
    job = tmp_path / "job.toml"  # no resolution: the run trains at the model's native 48 px
    job.write_text(f'[finetune]\nmodel = "tiny-v"\ninstance-dir = "{instances}"\ninstance-prompt = "a sks glyph"\n'
                   'steps = 2\nrank = 4\ncheckpoint-every = 2\nsamples = false\n'
                   'attest-licence = true\nattest-consent = true\n')
    out = tmp_path / "out"
    ran = cli("finetune", "run", "--config", str(job), "--out", str(out), "--no-track", "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["steps"] == 2 and result["adapter"] == "tiny-v-lora"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["family"], manifest["objective"], manifest["config"]["resolution"]) == ("sd2", "v_prediction", 48)
    pipeline = _pipeline(tmp_path / "sd2")
    before = _render(pipeline)
    pipeline.load_lora_weights(str(out))
    assert not torch.allclose(before, _render(pipeline), atol=1e-3)
