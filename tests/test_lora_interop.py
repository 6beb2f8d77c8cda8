"""The kohya export of a LoRA reads back through diffusers' own converter to the same weights.

Flux: the recipe's LoRA (attention projections and the CLIP encoder) on a tiny pipeline, saved in
diffusers' layout, exported with fused ``qkv``/``linear1`` projections, and loaded by plain
``pipe.load_lora_weights`` into fresh pipelines. diffusers' reader splits a single block's
``linear1`` at FLUX.1's widths only, so the tiny pipeline here has double blocks only; single
blocks and the top-level modules are checked at FLUX.1 width through the same reader, tensor by
tensor. SD3 has no kohya export: diffusers reads no SD3 layout but its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentops.pipelines import tiny
from latentops.pipelines.finetune import interop
from latentops.pipelines.finetune.families import Family

RANK = 4


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Flux pipeline on disk whose transformer has one double block and no single block."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = tiny.build("flux")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer = FluxTransformer2DModel.from_config({**pipe.transformer.config, "num_single_layers": 0})
    out = tmp_path_factory.mktemp("flux-double-only")
    double_only: Any = FluxPipeline(**{**pipe.components, "transformer": transformer})
    double_only.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def flux_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard tiny Flux pipeline (one double block, one single block)."""
    return tiny.create("flux", tmp_path_factory.mktemp("flux-tiny"))


def _pipeline(path: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _attach(pipe: Any, *, rank: int, alpha: float) -> dict[str, Any]:
    """The recipe's LoRA (same targets, via :class:`Family`) with non-zero random weights."""
    trained = Family("flux", pipe).add_lora(rank=rank, alpha=alpha, text_encoder=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in trained.values():
            for name, parameter in module.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return trained


def _layers(trained: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """peft state dicts by pipeline attribute, as the recipe hands them to ``Family.save_lora``."""
    return {attr: {name.replace(".default", ""): p.detach().clone()
                   for name, p in module.named_parameters() if "lora_" in name}
            for attr, module in trained.items()}


def _deltas(pipe: Any) -> dict[str, torch.Tensor]:
    """Every LoRA layer's effective weight change (``scaling * B @ A`` over active adapters)."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for attr in ("transformer", "text_encoder"):
        for name, module in getattr(pipe, attr).named_modules():
            if isinstance(module, LoraLayer):
                layer: Any = module
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                deltas[f"{attr}.{name}"] = torch.stack([layer.get_delta_weight(a) for a in active]).sum(dim=0)
    return deltas


def _render(pipe: Any) -> torch.Tensor:
    with torch.no_grad():
        return torch.from_numpy(pipe("a sks glyph", num_inference_steps=2, height=64, width=64, output_type="np",
                                     generator=torch.Generator().manual_seed(0)).images)


def _load(path: Path, lora_file: Path) -> Any:
    pipe = _pipeline(path)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    return pipe


def test_flux_export_loads_in_plain_diffusers_and_renders_like_the_diffusers_file(flux_base: Path,
                                                                                  tmp_path: Path) -> None:
    trained_pipe = _pipeline(flux_base)
    trained = _attach(trained_pipe, rank=RANK, alpha=RANK)
    trained_image, trained_deltas = _render(trained_pipe), _deltas(trained_pipe)
    diffusers_file = Family("flux", trained_pipe).save_lora(tmp_path / "run", _layers(trained))
    kohya = interop.export_kohya(diffusers_file, tmp_path / "run" / "kohya" / "lora.safetensors", family="flux",
                                 alpha=RANK)
    assert kohya is not None
    keys = {k.split(".")[0] for k in load_file(str(kohya))}
    assert {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"} <= keys
    assert all(k.startswith(("lora_unet_double_blocks_0_", "lora_te1_")) for k in keys)

    from_diffusers, from_kohya = _load(flux_base, diffusers_file), _load(flux_base, kohya)
    diffusers_deltas, kohya_deltas = _deltas(from_diffusers), _deltas(from_kohya)
    assert len(kohya_deltas) == 4 + 2 * 4  # to_q/k/v/out in the double block; q/k/v/out in two CLIP layers
    assert kohya_deltas.keys() == diffusers_deltas.keys() == trained_deltas.keys()
    for name, delta in kohya_deltas.items():
        # alpha == rank: the converter's scale is 1, so the fused qkv splits back to the very same tensors.
        assert torch.equal(delta, diffusers_deltas[name]), name
        assert torch.equal(delta, trained_deltas[name]), name

    base_image = _render(_pipeline(flux_base))
    kohya_image = _render(from_kohya)
    assert torch.allclose(kohya_image, _render(from_diffusers), atol=1e-6)
    assert torch.allclose(kohya_image, trained_image, atol=1e-6)
    assert (kohya_image - base_image).abs().max() > 1e-3


@pytest.mark.parametrize("rank,alpha", [(4, 1.0), (4, 3.0), (2, 16.0)])
def test_flux_export_keeps_alpha_over_rank_when_it_fuses_projections(flux_base: Path, tmp_path: Path, rank: int,
                                                                     alpha: float) -> None:
    trained_pipe = _pipeline(flux_base)
    trained = _attach(trained_pipe, rank=rank, alpha=alpha)
    trained_deltas = _deltas(trained_pipe)
    layers = _layers(trained)
    # The recipe's diffusers file carries alpha in its adapter metadata, so it loads at scale alpha / rank.
    diffusers_file = Family("flux", trained_pipe).save_lora(tmp_path / "run", layers)
    kohya = interop.export_kohya(diffusers_file, tmp_path / "kohya.safetensors", family="flux", alpha=alpha)
    assert kohya is not None
    exported = load_file(str(kohya))
    assert exported["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * rank
    assert exported["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 3 * alpha
    assert exported["lora_unet_double_blocks_0_img_attn_proj.alpha"].item() == alpha

    kohya_deltas = _deltas(_load(flux_base, kohya))
    diffusers_deltas = _deltas(_load(flux_base, diffusers_file))
    assert kohya_deltas.keys() == diffusers_deltas.keys() == trained_deltas.keys()
    for name, delta in kohya_deltas.items():
        assert torch.allclose(delta, trained_deltas[name], rtol=1e-5, atol=1e-7), name
        assert torch.allclose(delta, diffusers_deltas[name], rtol=1e-5, atol=1e-7), name


def test_flux_single_block_exports_linear1_as_stacked_qkv_with_a_zero_mlp_block(flux_tiny: Path,
                                                                                 tmp_path: Path) -> None:
    """kohya readers add ``alpha / rank * up @ down`` to BFL's fused weight: that must be the stacked deltas."""
    pipe = _pipeline(flux_tiny)
    trained = _attach(pipe, rank=RANK, alpha=2.0)
    deltas = _deltas(pipe)
    diffusers_file = Family("flux", pipe).save_lora(tmp_path / "run", _layers(trained))
    kohya = interop.export_kohya(diffusers_file, tmp_path / "kohya.safetensors", family="flux", alpha=2.0)
    assert kohya is not None
    exported = load_file(str(kohya))
    width = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim

    def fused_delta(name: str) -> torch.Tensor:
        down, up = exported[f"{name}.lora_down.weight"], exported[f"{name}.lora_up.weight"]
        return exported[f"{name}.alpha"].item() / down.shape[0] * (up @ down)

    linear1 = "lora_unet_single_blocks_0_linear1"
    assert exported[f"{linear1}.lora_down.weight"].shape == (4 * RANK, width)
    assert exported[f"{linear1}.lora_up.weight"].shape == (3 * width + 4 * width, 4 * RANK)
    assert exported[f"{linear1}.alpha"].item() == 4 * 2.0
    block = "transformer.single_transformer_blocks.0"
    expected = torch.cat([deltas[f"{block}.attn.to_q"], deltas[f"{block}.attn.to_k"], deltas[f"{block}.attn.to_v"],
                          torch.zeros(4 * width, width)])
    assert torch.allclose(fused_delta(linear1), expected, rtol=1e-5, atol=1e-6)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    block = "transformer.transformer_blocks.0"
    expected = torch.cat([deltas[f"{block}.attn.to_q"], deltas[f"{block}.attn.to_k"], deltas[f"{block}.attn.to_v"]])
    assert torch.allclose(fused_delta(qkv), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused_delta("lora_unet_double_blocks_0_img_attn_proj"), deltas[f"{block}.attn.to_out.0"],
                          rtol=1e-5, atol=1e-6)


# FLUX.1's widths: block width 3072, MLP 12288, T5 4096, packed latents 64, pooled CLIP 768.
_FLUX1_MODULES = {
    **{f"transformer_blocks.0.{m}": (3072, 3072) for m in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "attn.to_add_out")},
    "transformer_blocks.0.ff.net.0.proj": (3072, 12288), "transformer_blocks.0.ff.net.2": (12288, 3072),
    "transformer_blocks.0.ff_context.net.0.proj": (3072, 12288), "transformer_blocks.0.ff_context.net.2": (12288, 3072),
    "transformer_blocks.0.norm1.linear": (3072, 6 * 3072), "transformer_blocks.0.norm1_context.linear": (3072, 6 * 3072),
    "single_transformer_blocks.0.attn.to_q": (3072, 3072), "single_transformer_blocks.0.attn.to_k": (3072, 3072),
    "single_transformer_blocks.0.attn.to_v": (3072, 3072), "single_transformer_blocks.0.proj_mlp": (3072, 12288),
    "single_transformer_blocks.0.proj_out": (15360, 3072), "single_transformer_blocks.0.norm.linear": (3072, 3 * 3072),
    # block 1: what the recipe trains (attention only), so linear1's MLP part has no LoRA
    "single_transformer_blocks.1.attn.to_q": (3072, 3072), "single_transformer_blocks.1.attn.to_k": (3072, 3072),
    "single_transformer_blocks.1.attn.to_v": (3072, 3072),
    "x_embedder": (64, 3072), "context_embedder": (4096, 3072),
    "time_text_embed.timestep_embedder.linear_1": (256, 3072), "time_text_embed.timestep_embedder.linear_2": (3072, 3072),
    "time_text_embed.text_embedder.linear_1": (768, 3072), "time_text_embed.text_embedder.linear_2": (3072, 3072),
    "time_text_embed.guidance_embedder.linear_1": (256, 3072), "time_text_embed.guidance_embedder.linear_2": (3072, 3072),
    "norm_out.linear": (3072, 2 * 3072), "proj_out": (3072, 64),
}


def test_every_flux_module_reads_back_through_diffusers_converter_at_flux1_width(tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(5)
    rank, alpha = 4, 3.0
    state = {}
    for module, (fan_in, fan_out) in _FLUX1_MODULES.items():
        state[f"transformer.{module}.lora_A.weight"] = torch.randn((rank, fan_in), generator=generator)
        state[f"transformer.{module}.lora_B.weight"] = torch.randn((fan_out, rank), generator=generator)
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
    kohya = interop.export_kohya(tmp_path / "pytorch_lora_weights.safetensors", tmp_path / "kohya.safetensors",
                                 family="flux", alpha=alpha)
    assert kohya is not None
    converted = FluxPipeline.lora_state_dict(str(kohya))

    def pair(module: str) -> tuple[torch.Tensor, torch.Tensor]:
        # diffusers 0.42 names the top-level modules it converts without the "transformer." prefix
        # (and its loader then skips them); accept either spelling.
        for name in (f"transformer.{module}", module):
            if f"{name}.lora_A.weight" in converted:
                return converted.pop(f"{name}.lora_A.weight"), converted.pop(f"{name}.lora_B.weight")
        raise AssertionError(f"{module}: not in diffusers' conversion of the export")

    probe_generator = torch.Generator().manual_seed(6)
    for module, (fan_in, _) in _FLUX1_MODULES.items():
        probe = torch.randn((fan_in, 3), generator=probe_generator)
        down, up = pair(module)
        assert down.shape == (rank, fan_in), module  # the fused LoRA split back into the original rank
        # kohya's alpha is folded into the converted weights; diffusers then applies them at scale 1.
        original = (alpha / rank) * (state[f"transformer.{module}.lora_B.weight"]
                                     @ (state[f"transformer.{module}.lora_A.weight"] @ probe))
        # float32 sums over up to 15,360 inputs: allow rounding relative to the output's scale.
        assert torch.allclose(up @ (down @ probe), original, rtol=1e-4, atol=1e-5 * float(original.abs().max())), module
    down, up = pair("single_transformer_blocks.1.proj_mlp")
    assert not down.any() and not up.any()  # the zero MLP block of block 1's linear1
    assert not converted


def test_flux_export_refuses_what_has_no_kohya_name(tmp_path: Path) -> None:
    a, b = torch.ones(RANK, 8), torch.ones(8, RANK)
    cases = {
        "transformer.transformer_blocks.0.attn.norm_q.lora_A.weight": {
            "transformer.transformer_blocks.0.attn.norm_q.lora_A.weight": a,
            "transformer.transformer_blocks.0.attn.norm_q.lora_B.weight": b},
        "lora_up partner": {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a},
        "must share one rank": {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a,
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": b,
            "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": torch.ones(2 * RANK, 8),
            "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": torch.ones(8, 2 * RANK)},
        "a Flux block of width 8 has 32": {
            "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight": a,
            "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight": b},
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": {
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": a,
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": b},
    }
    for expected, state in cases.items():
        save_file(state, str(tmp_path / "in.safetensors"))
        with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
            interop.export_kohya(tmp_path / "in.safetensors", tmp_path / "out.safetensors", family="flux", alpha=RANK)
        assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("family,module,kohya", [
    ("sd1", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
    ("sd1", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
     "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    # transformers 5's CLIPTextModel has no text_model level; kohya readers expect it in the name
    ("sd1", "text_encoder.encoder.layers.0.self_attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    ("sdxl", "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj",
     "lora_te2_text_model_encoder_layers_1_self_attn_out_proj"),
])
def test_unet_families_keep_the_module_path_as_kohya_name(family: str, module: str, kohya: str) -> None:
    down, up = torch.randn(RANK, 8), torch.randn(8, RANK)
    state = {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}
    out = interop.kohya_state_dict(state, family=family, alpha=2.0)
    assert set(out) == {f"{kohya}.lora_down.weight", f"{kohya}.lora_up.weight", f"{kohya}.alpha"}
    assert torch.equal(out[f"{kohya}.lora_down.weight"], down) and torch.equal(out[f"{kohya}.lora_up.weight"], up)
    assert out[f"{kohya}.alpha"].item() == 2.0


def test_sd3_has_no_kohya_export_because_diffusers_reads_only_its_own_sd3_layout(tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    state = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(RANK, 8),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(8, RANK)}
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
    assert interop.export_kohya(tmp_path / "pytorch_lora_weights.safetensors", tmp_path / "kohya.safetensors",
                                family="sd3", alpha=RANK) is None
    assert not (tmp_path / "kohya.safetensors").exists()
    with pytest.raises(ValueError, match="not sd3 .diffusers reads SD3 LoRAs only in its own layout"):
        interop.kohya_state_dict(state, family="sd3", alpha=RANK)
    # Should diffusers learn to convert kohya's SD3 layout (sd-scripts' joint_blocks names), this fails:
    # then an export becomes checkable and belongs in interop.
    kohya_style = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.ones(RANK, 8),
                   "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.ones(24, RANK),
                   "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": torch.tensor(float(RANK))}
    assert set(StableDiffusion3Pipeline.lora_state_dict(kohya_style)) == set(kohya_style)


def test_the_recipes_diffusers_file_loads_at_its_trained_strength_when_alpha_is_not_rank(tmp_path: Path) -> None:
    from peft.tuners.lora import LoraLayer

    base = tiny.create("sd1", tmp_path / "sd1")
    trained_pipe = _pipeline(base)
    trained = Family("sd1", trained_pipe).add_lora(rank=4, alpha=2.0, text_encoder=False)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in trained["unet"].named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    saved = Family("sd1", trained_pipe).save_lora(tmp_path / "run", _layers(trained))
    loaded = _pipeline(base)
    loaded.load_lora_weights(str(saved.parent))

    def deltas(pipe: Any) -> dict[str, torch.Tensor]:
        return {name: sum(module.get_delta_weight(a) for a in module.active_adapters)  # type: ignore[misc]
                for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer)}

    want, got = deltas(trained_pipe), deltas(loaded)
    assert want.keys() == got.keys() and want
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name  # scale alpha / rank = 0.5, not 1
