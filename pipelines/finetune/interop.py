"""LoRA files other tools read: diffusers' ``pytorch_lora_weights.safetensors`` and a kohya export.

The diffusers file is what ``pipe.load_lora_weights(DIR)`` reads; the recipe writes it with the
pipeline class's own ``save_lora_weights``. Many other tools (kohya-ss sd-scripts, ComfyUI,
AUTOMATIC1111) read the kohya key layout instead::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight     (lora_te1_/lora_te2_ on SDXL)

``export_kohya`` converts the diffusers file to that layout for the UNet families (``sd1``,
``sd2``, ``sdxl``); diffusers' own converter (used by ``load_lora_weights``) reads it back. SD3
and Flux LoRAs are exported in diffusers' layout only: their kohya layouts name the original
(non-diffusers) transformer blocks, a mapping this module does not carry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KOHYA_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
_PREFIXES = {
    "sd1": {"unet.": "lora_unet_", "text_encoder.": "lora_te_"},
    "sd2": {"unet.": "lora_unet_", "text_encoder.": "lora_te_"},
    "sdxl": {"unet.": "lora_unet_", "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"},
}
_SUFFIXES = {
    ".lora.down.weight": "lora_down", ".lora.up.weight": "lora_up",
    ".lora_A.weight": "lora_down", ".lora_B.weight": "lora_up",
    ".lora_linear_layer.down.weight": "lora_down", ".lora_linear_layer.up.weight": "lora_up",
}


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


def kohya_state_dict(state: dict[str, torch.Tensor], *, family: str, alpha: float) -> dict[str, torch.Tensor]:
    """The kohya layout of a diffusers-format LoRA state dict."""
    if family not in KOHYA_FAMILIES:
        raise ValueError(f"family: kohya export covers {', '.join(sorted(KOHYA_FAMILIES))}, not {family}")
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        split = _split(key)
        if split is None:
            raise ValueError(f"{key}: not a LoRA down/up weight")
        module, kind = split
        for prefix, kohya_prefix in _PREFIXES[family].items():
            if module.startswith(prefix):
                name = kohya_prefix + module[len(prefix):].replace(".", "_")
                break
        else:
            raise ValueError(f"{key}: belongs to no component this family exports")
        converted[f"{name}.{kind}.weight"] = tensor.contiguous()
        converted[f"{name}.alpha"] = torch.tensor(float(alpha))
    return converted


def export_kohya(diffusers_file: Path, target: Path, *, family: str, alpha: float) -> Path | None:
    """Write the kohya-layout copy of ``diffusers_file`` to ``target``; None for families without one."""
    if family not in KOHYA_FAMILIES:
        return None
    state = kohya_state_dict(load_file(str(diffusers_file)), family=family, alpha=alpha)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                                            "format": "pt"})
    return target
