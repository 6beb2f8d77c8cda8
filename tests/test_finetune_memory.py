"""Memory modes of the LoRA recipe on tiny real models: checkpointing every n-th block, a quantised base,
encoder offload after caching, and regional compile with its eager fallback."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_helpers import draw_glyphs
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.pipelines import tiny
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import lora, memory, tracking, validation
from latentops.pipelines.finetune.config import build_config
from latentops.pipelines.finetune.families import Family

REPO = Path(__file__).resolve().parents[1]
BASE = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 1, "lr": 1e-3,
        "validation_steps": 1, "seed": 7, "samples": False}
# Checkpointing recomputes the same ops on the same inputs: on the CPU the results agree to float rounding.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: tiny.create(family, root / family) for family in ("sd1", "sdxl", "sd3", "flux")}


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_glyphs(tmp_path_factory.mktemp("instances"))


def _weights(models: dict[str, Path], family: str) -> WeightsRef:
    return WeightsRef(content_hash=f"tiny-{family}-seed0", path=models[family], family=family)


def _family(models: dict[str, Path], family: str) -> Family:
    """The family's tiny pipeline, every module frozen (as the recipe loads it)."""
    loaded = Family(family, lora._load_pipeline(_weights(models, family), torch.float32))
    for module in [loaded.vae, loaded.denoiser, *loaded.all_text_encoders()]:
        module.requires_grad_(False)
    return loaded


# -- config ---------------------------------------------------------------------------------------
def test_gradient_checkpointing_takes_a_bool_or_every_nth_block_and_names_the_field_when_wrong() -> None:
    assert build_config({**BASE, "gradient_checkpointing": False}).checkpoint_interval == 0
    assert build_config({**BASE, "gradient_checkpointing": True}).checkpoint_interval == 1
    assert build_config({**BASE, "gradient_checkpointing": 3}).checkpoint_interval == 3
    for bad in (0, -2, 65, "often", 1.5):
        with pytest.raises(InvalidInput, match=r"^gradient_checkpointing: must be true, false or a whole number n "
                                               r"from 1 to 64 \(checkpoint every n-th block\)"):
            build_config({**BASE, "gradient_checkpointing": bad})
    with pytest.raises(InvalidInput, match=r"^base_quantization: .*'none', 'int8', 'fp8' or 'nf4'.*got 'int4'"):
        build_config({**BASE, "base_quantization": "int4"})
    with pytest.raises(InvalidInput, match=r"^compile: .*got 'everything'"):
        build_config({**BASE, "compile": "everything"})


def test_memory_modes_at_their_defaults_fingerprint_as_before_and_reach_the_mlflow_params() -> None:
    config = build_config({**BASE, "steps": 8})
    values = config.model_dump(mode="json")
    for key in ("processes", "caption_dropout", "validation_split", "base_quantization", "offload_encoders", "compile"):
        del values[key]
    assert values["gradient_checkpointing"] is False  # serialised as it always was
    assert config.fingerprint() == hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    on = build_config({**BASE, "steps": 8, "gradient_checkpointing": True})
    assert on.model_dump(mode="json")["gradient_checkpointing"] is True
    fingerprints = {config.fingerprint(), on.fingerprint()}
    for key, value in (("gradient_checkpointing", 2), ("base_quantization", "int8"), ("offload_encoders", True),
                       ("compile", "blocks")):
        changed = build_config({**BASE, "steps": 8, key: value})
        assert changed.params()[key] == value and config.params()[key] != value
        fingerprints.add(changed.fingerprint())
    assert len(fingerprints) == 6


def test_the_mlflow_run_records_the_memory_modes_and_what_they_did(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    weights = _weights(models, "sd1")
    tracker = tracking.MlflowTracker(tracking_uri=uri, base_model_path=weights.path, registered_name="lora-memory",
                                     out_dir=tmp_path / "run")
    config = build_config({**BASE, "steps": 2, "gradient_checkpointing": 2, "offload_encoders": True})
    lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "run", tracker=tracker)
    assert tracker.run_id is not None
    params = tracking.client(uri).get_run(tracker.run_id).data.params
    assert (params["gradient_checkpointing"], params["base_quantization"], params["offload_encoders"],
            params["compile"]) == ("2", "none", "True", "False")
    assert params["checkpointed_blocks"] == "6"  # 12 blocks in the tiny SD1 UNet, every second one
    assert float(params["offloaded_mb"]) > 0 and float(params["denoiser_mb"]) > 0
    assert "compiled_blocks" not in params


# -- gradient checkpointing -----------------------------------------------------------------------
@pytest.mark.parametrize(("family", "blocks"), [("sd1", 12), ("sdxl", 12), ("sd3", 1), ("flux", 2)])
def test_every_nth_block_is_checkpointed_and_recomputed_in_the_backward_pass(models, family: str, blocks: int) -> None:  # type: ignore[no-untyped-def]
    loaded = _family(models, family)
    found = memory.blocks(loaded.denoiser)
    assert len(found) == blocks
    torch.manual_seed(0)
    loaded.add_lora(rank=4, alpha=4, text_encoder=False)
    calls = [0] * blocks
    for index, block in enumerate(found):  # counts every run of the block's own forward, recomputations included
        block.forward = _counting(block.forward, calls, index)
    every = 2 if blocks > 1 else 1
    assert memory.checkpoint_blocks(loaded.denoiser, every) == math.ceil(blocks / every)
    assert memory.checkpointed(loaded.denoiser) == list(range(0, blocks, every))
    cond = loaded.encode(["a sks glyph"], torch.device("cpu"))
    latents = torch.randn(1, loaded.vae.config.latent_channels, 4, 4)
    loss = loaded.loss(latents, cond, generator=torch.Generator().manual_seed(1), micro=[(32, 32, 0, 0, 32, 32)],
                       noise_offset=0.0, min_snr_gamma=None, dtype=torch.float32).mean()
    assert calls == [1] * blocks
    loss.backward()
    # A checkpointed block runs its forward again during the backward pass, the others do not; blocks before
    # the first LoRA layer (the UNet's first ResNet) have no backward pass, so nothing to recompute.
    trains = [any("lora_" in name for name, _ in block.named_parameters()) for block in found]
    backward = [any(trains[: i + 1]) for i in range(blocks)]
    assert calls == [2 if i % every == 0 and backward[i] else 1 for i in range(blocks)]
    assert calls.count(2) >= max(1, math.ceil(blocks / every) - 1)


def _counting(forward: Any, calls: list[int], index: int) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        calls[index] += 1
        return forward(*args, **kwargs)
    return run


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_checkpointed_runs_train_like_the_plain_run(models, instances, tmp_path: Path, family: str) -> None:  # type: ignore[no-untyped-def]
    run = {"weights": _weights(models, family), "instance_dir": instances, "cache_dir": tmp_path / "cache"}
    plain = lora.train(build_config({**BASE, "steps": 3}), out_dir=tmp_path / "plain", **run)
    weights = {}
    for setting in (True, 2):
        checked = lora.train(build_config({**BASE, "steps": 3, "gradient_checkpointing": setting}),
                             out_dir=tmp_path / f"ckpt-{setting}", **run)
        assert checked.losses == pytest.approx(plain.losses, rel=TOLERANCE, abs=TOLERANCE)
        weights[setting] = _lora(tmp_path / f"ckpt-{setting}")
    reference = _lora(tmp_path / "plain")
    for tensors in weights.values():  # three optimizer steps on the gradients: the same weights
        assert tensors.keys() == reference.keys()
        assert all(torch.allclose(tensors[k], reference[k], rtol=TOLERANCE, atol=TOLERANCE) for k in reference)


def _lora(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / lora.WEIGHTS_NAME))


# -- quantised base ---------------------------------------------------------------------------------
# torchao (like bitsandbytes) stays out of the test environment: once importable, diffusers imports it in
# every process. `make install` puts both in folders of their own, on the path of this script's process only.
OPT = REPO / ".venv" / "opt"
QUANTIZED_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from diffusers import StableDiffusionPipeline
    from latentops.pipelines.engine import WeightsRef
    from latentops.pipelines.finetune import lora, memory, tracking, validation
    from latentops.pipelines.finetune.config import build_config
    from latentops.pipelines.finetune.families import Family

    model, instances, root = map(Path, sys.argv[1:4])
    settings = json.loads(sys.argv[4])
    weights = WeightsRef(content_hash="tiny-sd1-seed0", path=model, family="sd1")
    report = {}
    for mode in ("int8", "fp8", "nf4"):
        family = Family("sd1", lora._load_pipeline(weights, torch.float32))
        before = memory.module_bytes(family.denoiser)
        linear = sum(memory.tensor_bytes(m.weight) for m in family.denoiser.modules() if type(m) is torch.nn.Linear)
        count = memory.quantize_base(family.denoiser, mode, compute_dtype=torch.float32)
        linear_after = sum(memory.tensor_bytes(m.weight) for m in family.denoiser.modules()
                           if isinstance(m, torch.nn.Linear))  # bitsandbytes' Linear4bit is one
        torch.manual_seed(0)
        family.add_lora(rank=4, alpha=4, text_encoder=False)
        wrapped = [m for m in family.denoiser.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
        report[mode] = {
            "layers": count, "before": before, "after": memory.module_bytes(family.denoiser, frozen_only=True),
            "linear_before": linear,
            "linear_after": linear_after,
            "lora_layers": sorted({f"{type(m).__module__}.{type(m).__name__}" for m in wrapped}),
            "weights": sorted({type(m.get_base_layer().weight).__name__ for m in wrapped}),
            "dtypes": sorted({str(getattr(m.get_base_layer().weight, "qdata", m.get_base_layer().weight).dtype)
                              for m in wrapped}),
            "losses": lora.train(build_config({**settings, "base_quantization": mode}), weights=weights,
                                 instance_dir=instances, out_dir=root / mode, cache_dir=root / "cache").losses,
        }
    pipeline = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(root / "int8"), weight_name="pytorch_lora_weights.safetensors")
    image = pipeline("a sks glyph", num_inference_steps=2, height=32, width=32, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
    report["rendered"] = list(image.shape)
    print(json.dumps(report))
""")


def test_a_quantised_base_trains_a_lora_that_diffusers_loads(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for package in ("torchao", "bitsandbytes"):
        assert (OPT / package / package).is_dir(), f"{OPT / package} is missing: run make install"
    settings = {**BASE, "steps": 4, "lr": 5e-3}
    done = subprocess.run([sys.executable, "-c", QUANTIZED_SCRIPT, str(models["sd1"]), str(instances), str(tmp_path),
                           json.dumps(settings)], capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(str(OPT / p) for p in ("torchao", "bitsandbytes"))})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    plain = lora.train(build_config(settings), weights=_weights(models, "sd1"), instance_dir=instances,
                       out_dir=tmp_path / "plain", cache_dir=tmp_path / "cache")
    # peft wraps torchao's layers in its torchao LoRA layer, and bitsandbytes' Linear4bit (a Linear whose
    # forward dequantises) in its plain one. Share: 1 byte (int8, fp8) or half a byte (nf4) per fp32 weight
    # of 4 bytes, plus the scales (one fp32 per row of 32 in the tiny model; nf4: one per 64 weights).
    expected = {"int8": ("peft.tuners.lora.torchao.TorchaoLoraLinear", "Int8Tensor", "torch.int8", 0.30),
                "fp8": ("peft.tuners.lora.torchao.TorchaoLoraLinear", "Float8Tensor", "torch.float8_e4m3fn", 0.30),
                "nf4": ("peft.tuners.lora.layer.Linear", "Params4bit", "torch.uint8", 0.15)}
    for mode, (layer, weight, dtype, share) in expected.items():
        found = report[mode]
        assert found["layers"] > 0 and found["lora_layers"] == [layer], (mode, found["lora_layers"])
        assert found["weights"] == [weight] and found["dtypes"] == [dtype], mode
        # The base as a whole shrinks by that (its convolutions and norms stay as they were).
        assert found["linear_after"] <= share * found["linear_before"], (mode, found)
        assert found["before"] - found["after"] >= found["linear_before"] - found["linear_after"] > 0, (mode, found)
        losses = found["losses"]
        assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
        # The same batches and noise: each step's loss stays close to the unquantised run's.
        assert max(abs(a - b) / b for a, b in zip(losses, plain.losses, strict=True)) < 0.15, (mode, losses, plain.losses)
    assert report["rendered"] == [1, 32, 32, 3]


def test_a_quantisation_whose_backend_is_missing_is_refused_before_any_work(models, instances, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # not importable, whatever this environment holds
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    for mode, package, extra in (("int8", "torchao", "quantization"), ("fp8", "torchao", "quantization"),
                                 ("nf4", "bitsandbytes", "bnb")):
        config = build_config({**BASE, "steps": 2, "base_quantization": mode})
        with pytest.raises(InvalidInput, match=rf"^base_quantization: {mode} needs the {package} package, which is "
                                               rf"not installed \(pip install 'latentops\[{extra}\]'\)$"):
            lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / mode)
        assert not (tmp_path / mode).exists(), "nothing is cached or written for a refused run"


# -- offload -----------------------------------------------------------------------------------------
def test_offload_frees_the_encoders_and_vae_on_the_cpu(models) -> None:  # type: ignore[no-untyped-def]
    loaded = _family(models, "sdxl")
    modules = [loaded.vae, *loaded.all_text_encoders()]
    held = sum(memory.module_bytes(m) for m in modules)
    assert len(modules) == 3 and held > 0
    assert memory.offload(modules, torch.device("cpu")) == held
    assert not any(memory.on_device(m, torch.device("cpu")) for m in modules)
    assert sum(memory.module_bytes(m) for m in modules) == 0
    assert memory.module_bytes(loaded.denoiser) > 0  # the denoiser keeps its weights


def _render_with_diffusers(request: validation.RenderRequest, *, device: str) -> list[Image.Image]:
    """Renders what the run asks for from the stored model and the adapter it saved (the governed path's
    screening and audit are tested elsewhere; here: that the run's images still render)."""
    from diffusers import StableDiffusionPipeline

    assert request.adapter is not None
    pipeline = StableDiffusionPipeline.from_pretrained(str(request.weights.path), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(request.adapter.path), weight_name=lora.WEIGHTS_NAME)
    return list(pipeline(request.prompts * request.images_per_prompt, num_inference_steps=request.steps, height=32,
                         width=32, generator=torch.Generator().manual_seed(request.seed)).images)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def progress(self, step: int, total: int, **metrics: float) -> None:
        pass

    def log(self, message: str) -> None:
        self.lines.append(message)

    def check_cancelled(self) -> None:
        pass


def test_after_offload_the_run_trains_and_validation_images_still_render(models, instances, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hooks = _Log()
    config = build_config({**BASE, "steps": 2, "checkpoint_every": 2, "validation_every": 1, "offload_encoders": True})
    result = lora.train(config, weights=_weights(models, "sd1"), instance_dir=instances, out_dir=tmp_path / "run",
                        hooks=hooks, renderer=_render_with_diffusers)
    plain = lora.train(build_config({**BASE, "steps": 2}), weights=_weights(models, "sd1"), instance_dir=instances,
                       out_dir=tmp_path / "plain")
    assert result.losses == plain.losses  # offloading changes nothing the loop computes
    freed = [line for line in hooks.lines if line.startswith("offload_encoders:")]
    assert len(freed) == 1 and "2 modules" in freed[0] and freed[0].endswith("freed"), hooks.lines
    assert hooks.lines.index(freed[0]) < next(i for i, line in enumerate(hooks.lines) if line.startswith("feature cache ready"))
    rendered = list((tmp_path / "run" / "validation" / "step-000001").glob("sample-*.png"))
    assert len(rendered) == 1


# -- regional compile --------------------------------------------------------------------------------
def test_a_failing_compile_falls_back_to_eager_with_a_warning_and_the_run_completes(  # type: ignore[no-untyped-def]
        models, instances, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(memory.COMPILE_BACKEND_ENV, "no_such_backend")  # torch.compile knows no such backend
    hooks = _Log()
    run = {"weights": _weights(models, "flux"), "instance_dir": instances, "cache_dir": tmp_path / "cache"}
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        compiled = lora.train(build_config({**BASE, "steps": 2, "compile": "blocks"}), out_dir=tmp_path / "compiled",
                              hooks=hooks, **run)
    warnings = [r.getMessage() for r in caplog.records if r.name == memory.__name__]
    assert len(warnings) == 1 and "'no_such_backend'" in warnings[0] and "training continues without it" in warnings[0]
    assert "no_such_backend" in warnings[0].split("(eager): ", 1)[1], "the reason is named"
    assert any(line.startswith("compile: the blocks ran eagerly") for line in hooks.lines)
    eager = lora.train(build_config({**BASE, "steps": 2}), out_dir=tmp_path / "eager", **run)
    assert compiled.steps == 2 and compiled.losses == eager.losses


def test_compiled_blocks_train_like_eager_ones(models, instances, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                               caplog: pytest.LogCaptureFixture) -> None:
    # dynamo's own "eager" backend: the blocks are captured as graphs (what can break), without inductor's
    # minutes of code generation on this CPU.
    monkeypatch.setenv(memory.COMPILE_BACKEND_ENV, "eager")
    torch._dynamo.reset()
    run: dict[str, Any] = {"weights": _weights(models, "flux"), "instance_dir": instances, "cache_dir": tmp_path / "cache"}
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        compiled = lora.train(build_config({**BASE, "steps": 2, "compile": "blocks", "gradient_checkpointing": True}),
                              out_dir=tmp_path / "compiled", **run)
    assert not [r for r in caplog.records if r.name == memory.__name__], "compiled without falling back"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2, "each block was captured"
    eager = lora.train(build_config({**BASE, "steps": 2}), out_dir=tmp_path / "eager", **run)
    assert compiled.losses == pytest.approx(eager.losses, rel=TOLERANCE, abs=TOLERANCE)
