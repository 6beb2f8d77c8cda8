"""Memory of a FLUX.1 LoRA step, block by block, measured on the CPU and scaled to the full model.

    PYTHONPATH=.venv/opt/torchao python bench/flux_memory.py            # real widths: 3072 hidden, 24 heads,
                                                                       # 1024 px (4096 image + 512 text tokens)
    PYTHONPATH=.venv/opt/torchao python bench/flux_memory.py --dry-run  # tiny widths, seconds

(With ``.venv/opt/bitsandbytes`` on the path too, nf4 weights are measured as well.) The full run takes
about 4 minutes of block compute on the shared 2-core machine (four blocks' forward and backward at
4,608 tokens, 230 s in all), 7 minutes with start-up; it needs about 3 GB of memory.

One FLUX double-stream block and one single-stream block are built at the model's width, their
``Linear`` weights quantised as the recipe's ``base_quantization`` does it (torchao int8 by default),
compute in bf16, with a rank-16 LoRA (fp32, the recipe's targets: the attention's q, k, v and output
projections). Each runs forward, backward and an AdamW step, with and without gradient checkpointing
(the recipe's own wrapper, :mod:`latentops.pipelines.finetune.memory`), and what is live is measured
from the allocator's own records (``torch.profiler`` memory events: every tensor storage allocated
and freed, in order, temporaries included):

* **weights**: the block's frozen parameters (quantised tensors counted by their inner int8 data and
  scales) and its LoRA parameters;
* **kept**: what the forward pass leaves alive for the backward pass (saved activations and output);
* **backward peak**: the highest live memory above that during the backward pass and the optimizer step
  (the backward's temporaries, the recomputed forward of a checkpointed block, the gradients, AdamW's
  state).

The full model's peak is then *estimated*, not measured: fixed part (the non-block modules, built at
full width and measured the same way, and the inputs) + 19 double and 38 single blocks' weights and
LoRA (with gradients and two AdamW moments: 4 × the LoRA) + 19 double and 38 single blocks' kept
memory + the larger backward peak of one block (blocks run their backward one at a time). It leaves
out what a GPU adds: the CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation.
Frozen weights at other precisions (bf16, fp8, nf4) are measured on the blocks without running them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from latentops.pipelines.finetune import memory
from latentops.pipelines.finetune.families import UNET_TARGETS

MB = 2**20
GIB = 2**30
FULL = {"dim": 3072, "heads": 24, "image_tokens": 4096, "text_tokens": 512, "double": 19, "single": 38,
        "in_channels": 64, "text_dim": 4096, "pooled_dim": 768}
DRY = {"dim": 64, "heads": 2, "image_tokens": 64, "text_tokens": 16, "double": 19, "single": 38,
       "in_channels": 64, "text_dim": 128, "pooled_dim": 32}


@dataclass
class BlockMemory:
    kind: str  # double | single
    checkpointed: bool
    frozen_bytes: int
    lora_bytes: int
    kept_bytes: int  # live after the forward pass: saved activations and the output
    backward_peak_bytes: int  # highest live memory above that in backward + optimizer step
    seconds: float


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create while it is active, as long as they live (and their peak)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref[Any]] = {}
        self._kept: list[Any] = []

    def exclude(self, tensors: list[torch.Tensor]) -> None:
        """Storages that exist already (weights, inputs): ops returning views of them allocate nothing."""
        for tensor in tensors:
            flatten = getattr(tensor, "__tensor_flatten__", None)
            if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                self.exclude([getattr(tensor, name) for name in flatten()[0]])
                continue
            storage = tensor.untyped_storage()
            self._seen[id(storage)] = weakref.ref(storage)
            self._kept.append(storage)  # held: its id is not reused while the measurement runs

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if type(tensor) is not torch.Tensor or tensor.device.type == "meta":
                continue  # a quantised subclass's own storage is its inner tensors', counted as they are made
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._seen and self._seen[key]() is storage:
                continue
            size = storage.nbytes()
            self._seen[key] = weakref.ref(storage, lambda _ref, key=key, size=size: self._free(key, size))
            self.live += size
            self.peak = max(self.peak, self.live)
        return out

    def _free(self, key: int, size: int) -> None:
        self._seen.pop(key, None)
        self.live -= size

    def reset_peak(self) -> None:
        self.peak = self.live


def _rotary(heads_dim: int, text: int, image: int) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    side = int(image ** 0.5)
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    ids = torch.cat([torch.zeros(text, 3), torch.stack([torch.zeros(image), rows.float(), cols.float()], dim=1)])
    axes = [heads_dim // 8, (heads_dim - heads_dim // 8) // 2, (heads_dim - heads_dim // 8) // 2]
    return FluxPosEmbed(theta=10_000, axes_dim=axes)(ids)


def _block(kind: str, shape: dict[str, int]) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )

    head_dim = shape["dim"] // shape["heads"]
    cls = FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock
    return cls(dim=shape["dim"], num_attention_heads=shape["heads"], attention_head_dim=head_dim)


def _prepared(kind: str, shape: dict[str, int], quantization: str, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    block = _block(kind, shape).to(torch.bfloat16).requires_grad_(False)
    memory.quantize_base(block, quantization, compute_dtype=torch.bfloat16)
    targets = [t for t in UNET_TARGETS if any(name.endswith(t) for name, _ in block.named_modules())]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets),
                            block)
    for parameter in block.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return block


def measure_block(kind: str, shape: dict[str, int], *, quantization: str, rank: int, checkpointed: bool) -> BlockMemory:
    block = _prepared(kind, shape, quantization, rank)
    lora = [p for p in block.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    if checkpointed:
        memory._wrap(block, memory._checkpointed)
    dim, text, image = shape["dim"], shape["text_tokens"], shape["image_tokens"]
    generator = torch.Generator().manual_seed(1)
    # The block's inputs come from earlier blocks that carry LoRA: they require gradients.
    hidden = torch.randn(1, image, dim, generator=generator).to(torch.bfloat16).requires_grad_(True)
    context = torch.randn(1, text, dim, generator=generator).to(torch.bfloat16).requires_grad_(True)
    temb = torch.randn(1, dim, generator=generator).to(torch.bfloat16)
    rotary = _rotary(dim // shape["heads"], text, image)
    grads = [torch.randn(1, text, dim, generator=generator).to(torch.bfloat16),
             torch.randn(1, image, dim, generator=generator).to(torch.bfloat16)]
    started = time.perf_counter()
    tracker = LiveBytes()
    tracker.exclude([*block.parameters(), *block.buffers(), hidden, context, temb, *rotary, *grads])
    with tracker, torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb, image_rotary_emb=rotary)
    kept = tracker.live
    with tracker:
        tracker.reset_peak()
        torch.autograd.backward(list(outputs), grads)
        optimizer.step()
    peak = tracker.peak - kept
    seconds = time.perf_counter() - started
    assert all(p.grad is not None for p in lora), "every LoRA parameter got a gradient"
    print(f"flux_memory: {kind} block{' (checkpointed)' if checkpointed else ''}: kept {kept / MB:.1f} MB, "
          f"backward peak {peak / MB:.1f} MB, {seconds:.0f} s", file=sys.stderr, flush=True)
    return BlockMemory(kind, checkpointed, memory.module_bytes(block, frozen_only=True),
                       sum(memory.tensor_bytes(p) for p in lora), kept, peak, seconds)


def frozen_bytes(kind: str, shape: dict[str, int], quantization: str) -> int | None:
    """A block's frozen weights at ``quantization`` (None when its backend is not installed here)."""
    try:
        memory.require_quantization(quantization, torch.device("cpu"))
    except Exception:  # noqa: BLE001 - reported as not measured
        return None
    block = _block(kind, shape).to(torch.bfloat16).requires_grad_(False)
    memory.quantize_base(block, quantization, compute_dtype=torch.bfloat16)
    return memory.module_bytes(block)


def fixed_bytes(shape: dict[str, int], quantization: str) -> dict[str, int]:
    """FLUX's modules outside the blocks, at full width, and the inputs of a step (batch 1)."""
    from diffusers.models.embeddings import CombinedTimestepGuidanceTextProjEmbeddings
    from diffusers.models.normalization import AdaLayerNormContinuous

    dim = shape["dim"]
    outside = torch.nn.ModuleDict({
        "time_text_embed": CombinedTimestepGuidanceTextProjEmbeddings(embedding_dim=dim,
                                                                       pooled_projection_dim=shape["pooled_dim"]),
        "context_embedder": torch.nn.Linear(shape["text_dim"], dim),
        "x_embedder": torch.nn.Linear(shape["in_channels"], dim),
        "norm_out": AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6),
        "proj_out": torch.nn.Linear(dim, shape["in_channels"]),
    }).to(torch.bfloat16).requires_grad_(False)
    memory.quantize_base(outside, quantization, compute_dtype=torch.bfloat16)
    # Inputs: packed latents, their noise and target (fp32), the cached T5 and CLIP conditioning (fp32).
    inputs = (3 * shape["image_tokens"] * shape["in_channels"] + shape["text_tokens"] * shape["text_dim"]
              + shape["pooled_dim"]) * 4
    return {"modules": memory.module_bytes(outside), "inputs": inputs}


def encoder_bytes(dry: bool) -> dict[str, int]:
    """bf16 bytes of FLUX.1's T5-XXL and CLIP-L text encoders and its VAE, counted from their architectures
    (built on the meta device: no weights are allocated); what ``offload_encoders`` takes off the GPU."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if dry:
        t5 = T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=1000)
        clip = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vae = {"block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2,
               "up_block_types": ("UpDecoderBlock2D",) * 2, "latent_channels": 16, "norm_num_groups": 8}
    else:  # google/t5-v1_1-xxl encoder, openai/clip-vit-large-patch14 text model, FLUX.1's 16-channel VAE
        t5 = T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
                      feed_forward_proj="gated-gelu")
        clip = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              projection_dim=768)
        vae = {"block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
               "up_block_types": ("UpDecoderBlock2D",) * 4, "latent_channels": 16, "layers_per_block": 2,
               "use_quant_conv": False, "use_post_quant_conv": False}
    with torch.device("meta"):
        modules = {"t5": T5EncoderModel(t5), "clip": CLIPTextModel(clip), "vae": AutoencoderKL(**vae)}
    return {name: 2 * sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def estimate(blocks: list[BlockMemory], fixed: dict[str, int], shape: dict[str, int], checkpointed: bool) -> dict[str, Any]:
    chosen = {b.kind: b for b in blocks if b.checkpointed == checkpointed}
    double, single = chosen["double"], chosen["single"]
    n_double, n_single = shape["double"], shape["single"]
    parts = {
        "fixed (non-block modules + inputs)": fixed["modules"] + fixed["inputs"],
        f"frozen weights ({n_double} x {double.frozen_bytes / MB:.1f} + {n_single} x {single.frozen_bytes / MB:.1f} MB)":
            n_double * double.frozen_bytes + n_single * single.frozen_bytes,
        f"LoRA + gradients + AdamW moments (4 x ({n_double} x {double.lora_bytes / MB:.2f} + {n_single} x "
        f"{single.lora_bytes / MB:.2f} MB))": 4 * (n_double * double.lora_bytes + n_single * single.lora_bytes),
        f"kept for backward ({n_double} x {double.kept_bytes / MB:.1f} + {n_single} x {single.kept_bytes / MB:.1f} MB)":
            n_double * double.kept_bytes + n_single * single.kept_bytes,
        f"one block's backward peak (max({double.backward_peak_bytes / MB:.1f}, {single.backward_peak_bytes / MB:.1f}) MB)":
            max(double.backward_peak_bytes, single.backward_peak_bytes),
    }
    return {"checkpointed": checkpointed, "parts": parts, "total_bytes": sum(parts.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny widths (64 hidden, 80 tokens): seconds")
    parser.add_argument("--quantization", default="int8", choices=["none", "int8", "fp8", "nf4"])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    shape = DRY if args.dry_run else FULL
    try:
        memory.require_quantization(args.quantization, torch.device("cpu"))
    except Exception as error:  # noqa: BLE001 - the reason, not a traceback
        print(f"flux_memory: {error} (PYTHONPATH=.venv/opt/torchao for int8/fp8)", file=sys.stderr)
        return 2
    blocks = [measure_block(kind, shape, quantization=args.quantization, rank=args.rank, checkpointed=ckpt)
              for ckpt in (False, True) for kind in ("double", "single")]
    fixed = fixed_bytes(shape, args.quantization)
    estimates = [estimate(blocks, fixed, shape, ckpt) for ckpt in (False, True)]
    weights = {mode: {kind: frozen_bytes(kind, shape, mode) for kind in ("double", "single")}
               for mode in ("none", "int8", "fp8", "nf4")}
    encoders = encoder_bytes(args.dry_run)
    report = {"shape": shape, "quantization": args.quantization, "rank": args.rank, "compute_dtype": "bf16",
              "blocks": [asdict(b) for b in blocks], "fixed": fixed, "estimates": estimates,
              "frozen_block_bytes": weights, "encoder_bytes_bf16": encoders, "budget_bytes": int(args.budget_gib * GIB)}
    print(f"FLUX LoRA rank {args.rank}, {shape['image_tokens']} + {shape['text_tokens']} tokens, width {shape['dim']}, "
          f"base {args.quantization}, bf16 compute (estimate from measured per-block memory)")
    print("| block | checkpointed | frozen MB | LoRA MB | kept MB | backward peak MB | s |")
    print("|---|---|---|---|---|---|---|")
    for b in blocks:
        print(f"| {b.kind} | {'yes' if b.checkpointed else 'no'} | {b.frozen_bytes / MB:.1f} | {b.lora_bytes / MB:.2f} | "
              f"{b.kept_bytes / MB:.1f} | {b.backward_peak_bytes / MB:.1f} | {b.seconds:.1f} |")
    for found in estimates:
        print(f"\nfull model, gradient checkpointing {'on' if found['checkpointed'] else 'off'}:")
        for label, value in found["parts"].items():
            print(f"  {label}: {value / GIB:.2f} GiB")
        fits = "fits" if found["total_bytes"] <= report["budget_bytes"] else "does not fit"
        print(f"  total: {found['total_bytes'] / GIB:.2f} GiB ({fits} in {args.budget_gib:g} GiB)")
    print("\nfrozen weights per block, MB: " + ", ".join(
        f"{mode} {v['double'] / MB:.1f} / {v['single'] / MB:.1f}" if v["double"] is not None else f"{mode} not installed"
        for mode, v in weights.items()))
    print("text encoders and VAE (bf16, off the GPU with offload_encoders), GiB: "
          + ", ".join(f"{name} {value / GIB:.2f}" for name, value in encoders.items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
