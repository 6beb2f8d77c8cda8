"""LoRA files other tools read: diffusers' ``pytorch_lora_weights.safetensors`` and a kohya export.

The diffusers file is what ``pipe.load_lora_weights(DIR)`` reads; the recipe writes it with the
pipeline class's own ``save_lora_weights``. Many other tools (kohya-ss sd-scripts, ComfyUI,
Forge, AUTOMATIC1111) read the kohya key layout instead: one ``lora_down``/``lora_up``/``alpha``
triple per adapted module of the *original* model, with delta weight ``alpha / rank * up @ down``::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   (sd1/sd2/sdxl)
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight   (lora_te1_/lora_te2_ on SDXL)
    lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight                  (flux)
    lora_unet_single_blocks_0_linear1.lora_down.weight                       (flux)
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight   (flux's CLIP encoder)

``export_kohya`` writes that layout for ``sd1``, ``sd2``, ``sdxl`` and ``flux``, and diffusers'
own converters (inside ``load_lora_weights``) read it back to the same effective weights.

* UNet families: the kohya name is the diffusers module path with ``_`` for ``.``. CLIP names
  keep the ``text_model`` level that transformers 5 dropped from ``CLIPTextModel``.
* Flux: kohya names Black Forest Labs' transformer, whose projections diffusers splits. A double
  block's ``img_attn_qkv`` is diffusers' ``attn.to_q``/``to_k``/``to_v`` (``txt_attn_qkv`` the
  ``add_*_proj``), a single block's ``linear1`` is ``attn.to_q``/``to_k``/``to_v``/``proj_mlp``,
  stacked by output rows. The ``n`` rank-``r`` LoRAs of a fused module become one of rank ``n*r``:
  ``down`` their downs stacked, ``up`` their ups block-diagonal (each output slice sees only its
  own adapter), ``alpha`` times ``n`` so ``alpha / rank`` is unchanged. A part without a LoRA
  (``proj_mlp`` when attention alone was trained) gets a zero block of the same rank: the block
  layout kohya's split-qkv training writes, which diffusers' converter detects and splits back
  into the original rank-``r`` adapters. diffusers reads the ``final_layer`` modules without
  their alpha, so their scale is folded into ``up`` and their alpha written as the rank; the final
  modulation also swaps its shift/scale halves back to BFL's order.

  Limits of the reader, not of the file: diffusers' converter splits ``linear1`` at the FLUX.1
  widths (3 x 3072 + 12288), so it reads these exports for FLUX.1 models (dev, schnell and their
  fine-tunes) and fails on other widths (our tiny test models), where tools that add ``up @ down``
  to the fused weight still read them. diffusers 0.42 also converts the top-level modules
  (``img_in``, ``txt_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``final_layer``) without
  the ``transformer.`` prefix, so its loader skips them; the recipe trains none of them.
* SD3: no export (``None``). diffusers reads SD3 LoRAs only in its own layout:
  ``SD3LoraLoaderMixin`` converts neither kohya's ``joint_blocks`` names nor any other, so an
  export could not be read back and checked. The diffusers file is the one to share.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KOHYA_FAMILIES = frozenset({"sd1", "sd2", "sdxl", "flux"})
NO_KOHYA_REASON = {"sd3": "diffusers reads SD3 LoRAs only in its own layout (it has no converter for kohya's)"}
_PREFIXES = {
    "sd1": {"unet.": "lora_unet_", "text_encoder.": "lora_te_"},
    "sd2": {"unet.": "lora_unet_", "text_encoder.": "lora_te_"},
    "sdxl": {"unet.": "lora_unet_", "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"},
    "flux": {"text_encoder.": "lora_te1_"},  # the transformer is mapped block by block below
}
_NETWORK_MODULE = {"flux": "networks.lora_flux"}
_SUFFIXES = {
    ".lora.down.weight": "lora_down", ".lora.up.weight": "lora_up",
    ".lora_A.weight": "lora_down", ".lora_B.weight": "lora_up",
    ".lora_linear_layer.down.weight": "lora_down", ".lora_linear_layer.up.weight": "lora_up",
}

# Flux: diffusers module (inside a block, or at the top) -> kohya name of the BFL module.
_FLUX_DOUBLE = {
    "attn.to_out.0": "img_attn_proj", "ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2",
    "norm1.linear": "img_mod_lin", "attn.to_add_out": "txt_attn_proj", "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2", "norm1_context.linear": "txt_mod_lin",
}
_FLUX_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
_FLUX_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
}
_FLUX_FINAL = {"proj_out": "final_layer_linear", "norm_out.linear": "final_layer_adaLN_modulation_1"}
# Fused BFL modules: their diffusers parts in output-row order, with each part's output width as a
# multiple of the block width (the single-block MLP ratio is fixed at 4 in BFL's and diffusers' Flux).
_FLUX_DOUBLE_FUSED = {
    "img_attn_qkv": (("attn.to_q", 1), ("attn.to_k", 1), ("attn.to_v", 1)),
    "txt_attn_qkv": (("attn.add_q_proj", 1), ("attn.add_k_proj", 1), ("attn.add_v_proj", 1)),
}
_FLUX_SINGLE_FUSED = {"linear1": (("attn.to_q", 1), ("attn.to_k", 1), ("attn.to_v", 1), ("proj_mlp", 4))}
_FLUX_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


@dataclass(frozen=True)
class _Lora:
    """One module's LoRA pair from the diffusers file (``key`` names it in error messages)."""

    key: str
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    for suffix, kind in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


def _modules(state: dict[str, torch.Tensor]) -> dict[str, _Lora]:
    """The diffusers state dict grouped by module path, each with both halves present."""
    halves: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        split = _split(key)
        if split is None:
            raise ValueError(f"{key}: not a LoRA down/up weight")
        module, kind = split
        halves.setdefault(module, {})[kind] = (key, tensor)
    modules: dict[str, _Lora] = {}
    for module, pair in halves.items():
        key = next(iter(pair.values()))[0]
        if len(pair) < 2:
            missing = "lora_up" if "lora_down" in pair else "lora_down"
            raise ValueError(f"{key}: {module} has no {missing} partner")
        down, up = pair["lora_down"][1], pair["lora_up"][1]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{key}: {module} is not a linear LoRA pair "
                             f"(down {tuple(down.shape)}, up {tuple(up.shape)})")
        modules[module] = _Lora(key, down, up)
    return modules


def _entry(out: dict[str, torch.Tensor], name: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> None:
    out[f"{name}.lora_down.weight"] = down.contiguous()
    out[f"{name}.lora_up.weight"] = up.contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(alpha))


def _fused(parts: dict[str, _Lora], spec: tuple[tuple[str, int], ...], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA for a fused module from its parts' LoRAs: downs stacked, ups block-diagonal.

    ``up @ down`` then equals the parts' ``up_i @ down_i`` stacked by output rows; missing parts
    contribute a zero block of the common rank.
    """
    present = list(parts.values())
    ranks = {lora.rank for lora in present}
    if len(ranks) > 1:
        keys = ", ".join(f"{lora.key} (rank {lora.rank})" for lora in present)
        raise ValueError(f"{keys}: parts of the fused kohya module {name} must share one rank to share its alpha")
    widths = {int(lora.down.shape[1]) for lora in present}
    if len(widths) > 1:
        raise ValueError(f"{present[0].key}: parts of the fused kohya module {name} read inputs of different widths")
    rank, width = ranks.pop(), widths.pop()
    reference = present[0].down
    downs, ups = [], []
    for part, factor in spec:
        lora = parts.get(part)
        if lora is None:
            downs.append(reference.new_zeros((rank, width)))
            ups.append(reference.new_zeros((width * factor, rank)))
            continue
        if lora.up.shape[0] != width * factor:
            raise ValueError(f"{lora.key}: {part} has {lora.up.shape[0]} outputs; a Flux block of width {width} "
                             f"has {width * factor}")
        downs.append(lora.down)
        ups.append(lora.up)
    return torch.cat(downs, dim=0), torch.block_diag(*ups)


def _flux_transformer(modules: dict[str, _Lora], alpha: float, out: dict[str, torch.Tensor]) -> None:
    """kohya entries for the Flux transformer's LoRAs (module paths without ``transformer.``)."""
    fused: dict[str, tuple[tuple[tuple[str, int], ...], dict[str, _Lora]]] = {}  # kohya name -> (spec, parts)
    for module, lora in modules.items():
        match = _FLUX_BLOCK.fullmatch(module)
        if match is not None:
            kind, index, inner = match.groups()
            double = kind == "transformer_blocks"
            block = f"lora_unet_{'double' if double else 'single'}_blocks_{index}"
            plain, groups = (_FLUX_DOUBLE, _FLUX_DOUBLE_FUSED) if double else (_FLUX_SINGLE, _FLUX_SINGLE_FUSED)
            if inner in plain:
                _entry(out, f"{block}_{plain[inner]}", lora.down, lora.up, alpha)
                continue
            group = next((g for g, spec in groups.items() if inner in dict(spec)), None)
            if group is not None:
                fused.setdefault(f"{block}_{group}", (groups[group], {}))[1][inner] = lora
                continue
        elif module in _FLUX_TOP:
            _entry(out, f"lora_unet_{_FLUX_TOP[module]}", lora.down, lora.up, alpha)
            continue
        elif module in _FLUX_FINAL:
            # diffusers reads final_layer LoRAs at scale 1 (it drops their alpha): fold alpha / rank
            # into up and write alpha = rank, which every kohya reader applies as scale 1 too.
            up = lora.up * (alpha / lora.rank) if alpha != lora.rank else lora.up
            if module == "norm_out.linear":
                up = _swap_halves(up)  # diffusers' AdaLayerNormContinuous emits (scale, shift); BFL (shift, scale)
            _entry(out, f"lora_unet_{_FLUX_FINAL[module]}", lora.down, up, lora.rank)
            continue
        raise ValueError(f"{lora.key}: transformer.{module} has no module in kohya's Flux layout")
    for name, (spec, parts) in fused.items():
        down, up = _fused(parts, spec, name)
        _entry(out, name, down, up, alpha * len(spec))


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def kohya_state_dict(state: dict[str, torch.Tensor], *, family: str, alpha: float) -> dict[str, torch.Tensor]:
    """The kohya layout of a diffusers-format LoRA state dict trained with ``alpha``."""
    if family not in KOHYA_FAMILIES:
        reason = f" ({NO_KOHYA_REASON[family]})" if family in NO_KOHYA_REASON else ""
        raise ValueError(f"family: kohya export covers {', '.join(sorted(KOHYA_FAMILIES))}, not {family}{reason}")
    converted: dict[str, torch.Tensor] = {}
    transformer: dict[str, _Lora] = {}
    for module, lora in _modules(state).items():
        if family == "flux" and module.startswith("transformer."):
            transformer[module[len("transformer."):]] = lora
            continue
        for prefix, kohya_prefix in _PREFIXES[family].items():
            if module.startswith(prefix):
                path = module[len(prefix):]
                if prefix.startswith("text_encoder") and not path.startswith("text_model."):
                    # transformers 5 dropped CLIPTextModel's ``text_model`` level; kohya names keep it.
                    path = "text_model." + path
                name = kohya_prefix + path.replace(".", "_")
                break
        else:
            raise ValueError(f"{lora.key}: belongs to no component this family exports")
        _entry(converted, name, lora.down, lora.up, alpha)
    if transformer:
        _flux_transformer(transformer, alpha, converted)
    return converted


def export_kohya(diffusers_file: Path, target: Path, *, family: str, alpha: float) -> Path | None:
    """Write the kohya-layout copy of ``diffusers_file`` to ``target``; None for families without one (sd3)."""
    if family not in KOHYA_FAMILIES:
        return None
    state = kohya_state_dict(load_file(str(diffusers_file)), family=family, alpha=alpha)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata={"ss_network_module": _NETWORK_MODULE.get(family, "networks.lora"),
                                            "ss_network_alpha": str(alpha), "format": "pt"})
    return target
