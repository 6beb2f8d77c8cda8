"""Frozen convolutions on the CPU, with their weights laid out for oneDNN once instead of at every call.

On the CPU torch runs convolutions through oneDNN, which computes in a blocked weight layout: each
call first copies the weight from torch's plain layout into it (and the backward pass copies it
again, into the layout of the transposed convolution that gives the input's gradient). While a
LoRA trains, the denoiser's convolutions are frozen, so those copies are the same at every step; in
the UNet's low-resolution blocks, where weights are large and activations small, they cost as much
as the convolution itself. :func:`use_packed_weights` gives each frozen ``Conv2d`` a forward that
packs its weight once for the forward and once for the backward (torch's ``mkldnn`` packing ops,
the ones its compiler uses for frozen inference weights) and computes with them: the same
convolution, and a training step of SD1.5 at a quarter width 6-7% faster on its own, about 2% in the
benchmark's lockstep, where caches are cold at each step (docs/finetune.md).

The packed copies cost twice the convolution weights' memory, so a model is packed only while that
stays within ``budget_bytes``. A layer computes the usual way whenever the packed path does not
apply to the call: another device or dtype, autocast, a weight or bias that trains, hooks on the
layer. A weight changed in place or replaced is packed again.
"""

from __future__ import annotations

import types
from typing import Any, NamedTuple, cast

import torch

BUDGET_BYTES = 2 * 2**30
"""At most this much memory for the packed copies of a model's convolution weights (two per weight)."""


class _Packed(NamedTuple):
    key: tuple[int, int]  # _weight_key of the weight when packed
    forward: torch.Tensor  # weight in the layout of the forward convolution
    backward: torch.Tensor  # weight in the layout of the transposed convolution (the input's gradient)


def available() -> bool:
    """Whether this torch build has oneDNN and the packing ops (x86 builds do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_convolution_weight")
            and hasattr(ops, "_reorder_convolution_transpose_weight") and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_convolution_transpose_pointwise"))


def use_packed_weights(module: torch.nn.Module, *, budget_bytes: int = BUDGET_BYTES) -> int:
    """Give the frozen ``Conv2d`` layers of ``module`` the packed forward; returns how many (0 over budget)."""
    if not available():
        return 0
    convs = [m for m in module.modules() if type(m) is torch.nn.Conv2d and _shape_supported(m) and not _trains(m)]
    if 2 * sum(c.weight.numel() * c.weight.element_size() for c in convs) > budget_bytes:
        return 0
    for conv in convs:
        conv.forward = types.MethodType(_packed_forward, conv)  # type: ignore[method-assign]
    return len(convs)


def _shape_supported(conv: torch.nn.Conv2d) -> bool:
    return (conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _trains(conv: torch.nn.Conv2d) -> bool:
    return conv.weight.requires_grad or (conv.bias is not None and conv.bias.requires_grad)


def _packed_forward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    weight = conv.weight
    if (x.dim() != 4 or x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or (conv.bias is not None and conv.bias.dtype != torch.float32)
            or torch.is_autocast_enabled("cpu") or _trains(conv) or conv._forward_hooks or conv._forward_pre_hooks):
        return torch.nn.Conv2d.forward(conv, x)
    packed = conv.__dict__.get("_packed")
    if packed is None or packed.key != _weight_key(weight):
        try:
            packed = _pack(conv, tuple(x.shape))
        except RuntimeError:  # a configuration the packing ops refuse: this layer computes the usual way from now on
            del conv.forward
            return torch.nn.Conv2d.forward(conv, x)
        conv.__dict__["_packed"] = packed  # a plain attribute: not state, not moved by .to()
    return _PackedConv.apply(_dense(x), conv.bias, packed, conv.padding, conv.stride, conv.kernel_size)  # type: ignore[no-any-return,unused-ignore]


def _weight_key(weight: torch.Tensor) -> tuple[int, int]:
    """Storage and version: either changes when the weight is replaced, moved or changed in place."""
    return weight.data_ptr(), weight._version


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when dense in either layout the packed kernels take (they write channels-last)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _output_size(size: int, padding: int, stride: int, kernel: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _output_padding(x_shape: tuple[int, ...], padding: tuple[int, ...], stride: tuple[int, ...],
                    kernel: tuple[int, ...]) -> list[int]:
    """What the transposed convolution adds so that the gradient has the input's size (strided layers)."""
    return [size - ((_output_size(size, p, s, k) - 1) * s - 2 * p + k)
            for size, p, s, k in zip(x_shape[2:], padding, stride, kernel)]


def _pack(conv: torch.nn.Conv2d, x_shape: tuple[int, ...]) -> _Packed:
    """Both layouts of the weight, chosen for the first input's size; inputs of other sizes use them too (tested)."""
    weight = conv.weight.detach()
    padding = cast("tuple[int, int]", conv.padding)  # never a string here (_shape_supported)
    out_shape = [x_shape[0], conv.out_channels] + [_output_size(s, p, st, k) for s, p, st, k in
                                                   zip(x_shape[2:], padding, conv.stride, conv.kernel_size)]
    output_padding = _output_padding(x_shape, padding, conv.stride, conv.kernel_size)
    ops = torch.ops.mkldnn
    forward = ops._reorder_convolution_weight(weight, list(padding), list(conv.stride), [1, 1], 1, list(x_shape))
    backward = ops._reorder_convolution_transpose_weight(weight, list(padding), output_padding, list(conv.stride), [1, 1],
                                                         1, out_shape)
    return _Packed(_weight_key(conv.weight), forward, backward)


class _PackedConv(torch.autograd.Function):
    """A frozen convolution: the gradient flows to the input only, through the transposed convolution."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, packed: _Packed, padding: tuple[int, ...],
                stride: tuple[int, ...], kernel: tuple[int, ...]) -> torch.Tensor:
        ctx.packed, ctx.padding, ctx.stride = packed, list(padding), list(stride)
        ctx.output_padding = _output_padding(tuple(x.shape), padding, stride, kernel)
        return torch.ops.mkldnn._convolution_pointwise(x, packed.forward, bias, list(padding), list(stride), [1, 1], 1,
                                                       "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.mkldnn._convolution_transpose_pointwise(
                _dense(grad), ctx.packed.backward, None, ctx.padding, ctx.output_padding, ctx.stride, [1, 1], 1,
                "none", [], "")
        return grad_x, None, None, None, None, None
