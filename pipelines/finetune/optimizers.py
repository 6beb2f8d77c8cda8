"""The run's compute precision and its optimizer: what the machine can run is decided here, before any work.

``precision`` maps ``mixed_precision`` to what this device runs (fp16/bf16 need a GPU); ``build``
makes AdamW (fused on the CPU and CUDA) or bitsandbytes' 8-bit AdamW when the run asks for it, or
``auto`` finds it on CUDA; ``bitsandbytes`` refuses ``adamw_8bit`` where the package is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from latentops.core.errors import InvalidInput
from latentops.pipelines.finetune.config import LoraConfig


def precision(config: LoraConfig, device: torch.device) -> str:
    if device.type != "cuda":
        if config.mixed_precision in ("fp16", "bf16"):
            raise InvalidInput(f"mixed_precision: {config.mixed_precision} needs a GPU; use 'no' or 'auto' on CPU")
        return "no"
    if config.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return config.mixed_precision


def bitsandbytes(config: LoraConfig, device: torch.device) -> Any | None:
    """bitsandbytes when the run uses 8-bit AdamW (asked for, or ``auto`` on CUDA with it installed), else None."""
    if config.optimizer != "adamw_8bit" and not (config.optimizer == "auto" and device.type == "cuda"):
        return None
    # On CPUs with AVX512-BF16, bitsandbytes warns at import that it found no 4-bit matmul
    # kernels (fetched from a hub, which never happens here); the optimizers do not use them.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes as bnb
    except ImportError:
        if config.optimizer == "adamw_8bit":
            raise InvalidInput("optimizer: adamw_8bit needs the bitsandbytes package, which is not installed "
                               "(pip install 'latentops[bnb]')") from None
        return None
    return bnb


def build(config: LoraConfig, groups: list[dict[str, Any]], device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    bnb = bitsandbytes(config, device)
    if bnb is not None:
        return bnb.optim.AdamW8bit(groups, weight_decay=config.weight_decay), "adamw_8bit"
    # One fused kernel for all parameters (on the CPU torch's default steps them one at a time in Python:
    # about 5% of a small model's step on the CPU). The state and its checkpoint format are AdamW's either way.
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda")), "adamw"
