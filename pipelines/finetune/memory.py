"""Memory modes of a LoRA run: gradient checkpointing, a quantised frozen base, offload, regional compile.

Each acts on the denoiser's *repeated blocks* (:func:`blocks`): the ResNet and transformer blocks of
a UNet's down, mid and up stages (the units diffusers' own gradient checkpointing uses), the joint
transformer blocks of SD3, the double- and single-stream blocks of FLUX.

* :func:`checkpoint_blocks`: every n-th block recomputes its activations in the backward pass
  instead of keeping them (``torch.utils.checkpoint``, non-reentrant). The loss and gradients are
  the same function of the same parameters; only what is kept between forward and backward changes.
* :func:`quantize_base`: the frozen ``Linear`` weights of the denoiser are stored in 8 bits (torchao
  ``int8`` or ``fp8`` weight-only, with a scale per output row) or 4 bits (bitsandbytes ``nf4``),
  before the LoRA is attached, so peft wraps the quantised layers (its torchao and bitsandbytes
  LoRA layers). The LoRA trains in full precision; the products dequantise the base on the fly.
  :func:`require_quantization` refuses, before any work, a mode this machine's packages cannot run.
* :func:`offload`: once the feature cache holds every latent and text embedding, the text encoders
  and VAE are not needed by the loop (validation images and samples are rendered by the governed
  renderer, from the stored model): on the CPU their weights are freed, on a GPU they move to the CPU.
* :func:`compile_blocks`: each block's forward is compiled (``torch.compile``, backend from
  ``LATENTOPS_COMPILE_BACKEND``, default inductor). A block whose compilation fails runs eagerly,
  and the run logs one warning naming the reason: never a silent slowdown, never a failed run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from latentops.core.errors import InvalidInput

logger = logging.getLogger(__name__)
COMPILE_BACKEND_ENV = "LATENTOPS_COMPILE_BACKEND"
TORCHAO_MIN = (0, 16)  # peft's torchao LoRA layers need at least this
BNB_CPU_MIN = (0, 48)  # bitsandbytes runs 4-bit layers on the CPU from this version
CHECKPOINTED = "_latentops_checkpointed"
COMPILED = "_latentops_compiled"


# -- blocks ----------------------------------------------------------------------------------------
def blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks, in the order the forward pass runs them."""
    found: list[torch.nn.Module] = []
    for attr in ("transformer_blocks", "single_transformer_blocks"):  # SD3, FLUX
        found.extend(getattr(denoiser, attr, None) or [])
    if found:
        return found
    stages = [*getattr(denoiser, "down_blocks", []), getattr(denoiser, "mid_block", None), *getattr(denoiser, "up_blocks", [])]
    for stage in stages:
        if stage is None:
            continue
        resnets = list(getattr(stage, "resnets", None) or [])
        attentions = list(getattr(stage, "attentions", None) or [])
        if stage is getattr(denoiser, "mid_block", None):  # resnet, (attention, resnet)*
            order = resnets[:1] + [m for pair in zip(attentions, resnets[1:], strict=False) for m in pair]
        else:  # (resnet, attention)* as the stage runs them
            order = [m for i, resnet in enumerate(resnets) for m in (resnet, *attentions[i:i + 1])]
        found.extend(order)
    return found


# -- gradient checkpointing ------------------------------------------------------------------------
def checkpoint_blocks(denoiser: torch.nn.Module, every: int) -> int:
    """Checkpoint every ``every``-th block (the 1st, the (1+n)-th, ...); returns how many."""
    if every < 1:
        return 0
    count = 0
    for index, block in enumerate(blocks(denoiser)):
        if index % every == 0 and not getattr(block, CHECKPOINTED, False):
            _wrap(block, _checkpointed)
            setattr(block, CHECKPOINTED, True)
            count += 1
    return count


def checkpointed(denoiser: torch.nn.Module) -> list[int]:
    """Indexes (in :func:`blocks`) of the checkpointed blocks."""
    return [i for i, block in enumerate(blocks(denoiser)) if getattr(block, CHECKPOINTED, False)]


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint

    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # inference (held-out loss): nothing to save
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def _wrap(module: torch.nn.Module, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    # An instance attribute: nn.Module.__call__ finds it before the class's forward.
    module.forward = wrapper(module.forward)


# -- quantised base --------------------------------------------------------------------------------
def _version(package: str) -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


def require_quantization(mode: str, device: torch.device) -> None:
    """``InvalidInput`` naming the field, the mode and what is missing, when this machine cannot run ``mode``."""
    if mode == "none":
        return
    if mode in ("int8", "fp8"):
        version = _version("torchao")
        if version is None or _missing("torchao"):
            raise InvalidInput(f"base_quantization: {mode} needs the torchao package, which is not installed "
                               "(pip install 'latentops[quantization]')")
        if version < TORCHAO_MIN:
            raise InvalidInput(f"base_quantization: {mode} needs torchao >= {'.'.join(map(str, TORCHAO_MIN))}, "
                               f"found {'.'.join(map(str, version))}")
        return
    if mode == "nf4":
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        version = _version("bitsandbytes")
        if version is None or _missing("bitsandbytes"):
            raise InvalidInput("base_quantization: nf4 needs the bitsandbytes package, which is not installed "
                               "(pip install 'latentops[bnb]')")
        if device.type == "cpu" and version < BNB_CPU_MIN:
            raise InvalidInput(f"base_quantization: nf4 on the CPU needs bitsandbytes >= "
                               f"{'.'.join(map(str, BNB_CPU_MIN))}, found {'.'.join(map(str, version))}; "
                               "use int8 or fp8, or a GPU")
        return
    raise InvalidInput(f"base_quantization: must be none, int8, fp8 or nf4, got {mode!r}")


def _missing(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def _linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is torch.nn.Linear]


def quantize_base(denoiser: torch.nn.Module, mode: str, *, compute_dtype: torch.dtype) -> int:
    """Quantise the denoiser's ``Linear`` weights to ``mode`` (before any LoRA is attached: every one of
    them is frozen); returns how many layers."""
    if mode == "none":
        return 0
    layers = _linears(denoiser)
    for _, _, layer in layers:
        layer.requires_grad_(False)
    if mode in ("int8", "fp8"):
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        chosen = {id(layer) for _, _, layer in layers}
        quantize_(denoiser, Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig(),
                  filter_fn=lambda module, _name: id(module) in chosen)
        return len(layers)
    import bitsandbytes as bnb

    for parent, name, layer in layers:
        quantized = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        quantized.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4")
        if layer.bias is not None:
            quantized.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
        quantized.requires_grad_(False)
        setattr(parent, name, quantized.to(layer.weight.device))  # bitsandbytes quantises on the move
    return len(layers)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, the inner tensors of a quantised tensor subclass (torchao) included."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit: packed weight + absmax
    extra = tensor_bytes(state.absmax) if state is not None and getattr(state, "absmax", None) is not None else 0
    return tensor.numel() * tensor.element_size() + extra


def module_bytes(module: torch.nn.Module, *, frozen_only: bool = False) -> int:
    """Bytes of a module's parameters and buffers (only the frozen parameters with ``frozen_only``)."""
    tensors: Iterable[torch.Tensor] = [p for p in module.parameters() if not (frozen_only and p.requires_grad)]
    total = sum(tensor_bytes(t) for t in tensors if t.device.type != "meta")
    return total + sum(tensor_bytes(b) for b in module.buffers() if b.device.type != "meta")


# -- offload ---------------------------------------------------------------------------------------
def offload(modules: Iterable[torch.nn.Module], device: torch.device) -> int:
    """Take ``modules`` off ``device``: freed on the CPU, moved to the CPU from a GPU; returns bytes released."""
    released = 0
    for module in modules:
        released += module_bytes(module)
        module.to("meta" if device.type == "cpu" else "cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return released


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether any of the module's weights are held on ``device`` (a freed module holds none)."""
    return any(p.device.type == device.type for p in module.parameters())


# -- regional compile ------------------------------------------------------------------------------
class _Fallback:
    """Shared by a run's compiled blocks: the first compile failure is logged once, every block goes eager."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.reason: str | None = None

    def fail(self, error: BaseException) -> None:
        if self.reason is None:
            self.reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            logger.warning("compile: torch.compile of the denoiser's blocks (backend %r) failed, training "
                           "continues without it (eager): %s", self.backend, self.reason)


def compile_blocks(denoiser: torch.nn.Module, backend: str | None = None) -> tuple[int, _Fallback]:
    """Compile each repeated block's forward; returns how many blocks and the run's fallback state."""
    backend = backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    fallback = _Fallback(backend)
    count = 0
    for block in blocks(denoiser):
        eager = block.forward
        try:
            compiled = torch.compile(eager, backend=backend, dynamic=False)
        except Exception as error:  # noqa: BLE001 - an unknown or broken backend: eager, with a warning
            fallback.fail(error)
            return 0, fallback
        block.forward = _guarded(eager, compiled, fallback)
        setattr(block, COMPILED, True)
        count += 1
    return count, fallback


def _guarded(eager: Callable[..., Any], compiled: Callable[..., Any], fallback: _Fallback) -> Callable[..., Any]:
    from torch.utils.checkpoint import _StopRecomputationError

    def run(*args: Any, **kwargs: Any) -> Any:
        if fallback.reason is None:
            try:
                return compiled(*args, **kwargs)
            except _StopRecomputationError:  # a checkpoint's recomputation ends early on purpose
                raise
            except Exception as error:  # noqa: BLE001 - compilation happens at the first call
                fallback.fail(error)
        return eager(*args, **kwargs)
    return run
