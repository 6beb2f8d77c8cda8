"""The forward pass of LoRA layers while a recipe trains them: the LoRA term added into the base product.

peft's ``lora.Linear.forward`` serves every case it supports (several adapters, mixed-adapter
batches, DoRA, dropout, merged weights) and pays for that on each call: adapter bookkeeping in
Python, then ``lora_B(lora_A(x))``, a second full-size tensor for ``* scaling`` and a third for the
sum with the base output. A UNet has a hundred or more such projections (128 in SD1.5): on the CPU
the fused forward below makes a training step of SD1.5 at a quarter width about 8% faster (see
docs/finetune.md). A recipe trains one plain adapter, for which the layer is

    base(x) + scaling * (x A^T) B^T:   out = x W^T + bias;   out.addmm_(x A^T, B^T, alpha=scaling)

the base product, into which the LoRA term is added in place: nothing full-size is written but the
output (and the backward needs no extra temporaries either). :func:`use_fused_forward` gives each
such layer that forward. The result is the same function of the same parameters (it differs from
peft's only by float rounding), the parameters and their names are peft's, so saving, loading and
resuming are untouched. A layer falls back to peft's own
forward whenever it is used any other way (adapter disabled or merged, another adapter active,
extra arguments, hooks on the base layer, mixed dtypes outside autocast).
"""

from __future__ import annotations

import types
from typing import Any

import torch

ADAPTER = "default"


def use_fused_forward(module: torch.nn.Module) -> int:
    """Give every plain peft LoRA ``Linear`` in ``module`` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for layer in module.modules():
        if type(layer) is Linear and _plain(layer):
            # An instance attribute: nn.Module.__call__ finds it before the class's forward.
            layer.forward = types.MethodType(_fused_forward, layer)
            count += 1
    return count


def _plain(layer: Any) -> bool:
    """One vanilla adapter: no dropout, no DoRA or other variant, no LoRA bias."""
    return (list(layer.lora_A) == [ADAPTER] and isinstance(layer.lora_dropout[ADAPTER], torch.nn.Identity)
            and ADAPTER not in layer.lora_variant and not layer.lora_bias.get(ADAPTER, False)
            and type(layer.base_layer) is torch.nn.Linear)


def _fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``base(x) + scaling * (x A^T) B^T``; peft's own forward for any other use of the layer."""
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    base = layer.base_layer
    if (args or kwargs or layer.disable_adapters or layer.merged or layer.active_adapters != [ADAPTER]
            or base._forward_hooks or base._forward_pre_hooks
            or (x.dtype != a.dtype and not torch.is_autocast_enabled(x.device.type))):
        return type(layer).forward(layer, x, *args, **kwargs)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.nn.functional.linear(flat, base.weight, base.bias)
    # The LoRA term is added into the base product in place (that product's backward needs only its
    # inputs). In-place ops are not autocast: under autocast ``out`` and ``flat @ a.t()`` come out in the
    # compute dtype, and B joins them.
    out.addmm_(flat @ a.t(), b.t().to(out.dtype), alpha=layer.scaling[ADAPTER])
    return out.view(*x.shape[:-1], out.shape[-1])
