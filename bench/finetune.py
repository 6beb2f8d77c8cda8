"""Benchmark: our LoRA recipe against a plain loop written the way diffusers' train_dreambooth_lora.py is.

The reference loop encodes every batch with the VAE and every caption with the text encoder at
every step (no caches), as the diffusers example does by default. Both loops train the same model
on the same images in the same order with the same seed, drawing their randomness in the same
order, so their loss curves must agree (the table reports the largest difference).

    python bench/finetune.py                 # CPU: SD1.5 architecture at 1/4 width, 128 px, batch 2, 20 steps, 3 rounds
    python bench/finetune.py --cuda          # GPU: full-size SD1.5 architecture (random weights), 512 px, batch 4, bf16
    PYTHONPATH=.venv/opt/bitsandbytes python bench/finetune.py --optimizer-state
                                             # AdamW against 8-bit AdamW (the optional bitsandbytes):
                                             # state memory of a full-size SD1.5 LoRA

The two variants run in lockstep: each in its own process (so peak memory is its own), taking turns
a step at a time while the other waits, blocked, using no CPU. On a shared machine whose speed drifts
from one minute to the next, that drift falls on both variants' steps alike.

Reported, for each round: seconds per step (the median step of the training loop, after a warm-up
step), setup seconds before the first step (loading; for ours also filling the feature cache, a
one-off cost per base model and image set), and peak memory (RSS on CPU, allocated VRAM on CUDA).
With ``--rounds N`` the variants take turns going first and the speed-up is the median of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _images(folder: Path, count: int, size: int) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (size + 16 * index, size), (240, 240, 230))
        ImageDraw.Draw(image).ellipse((10 + index, 12, size - 20, size - 10 - index), outline=(30, 30, 160), width=5)
        image.save(folder / f"img-{index}.png")
    return folder


def _sd15_full_size(out: Path, shrink: int = 1) -> Path:
    """The SD1.5 architecture with random weights (nothing is downloaded); ``shrink`` divides every width."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentops.pipelines import tokenizers

    vocab, _ = tokenizers.clip_vocabulary()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=768 // shrink, intermediate_size=3072 // shrink,
                                        num_hidden_layers=12, num_attention_heads=12 // shrink, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                        pad_token_id=vocab["<|endoftext|>"]))
    # The SD1.5 defaults, each width divided by ``shrink``.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768 // shrink, attention_head_dim=8,
                                block_out_channels=tuple(c // shrink for c in (320, 640, 1280, 1280)),
                                norm_num_groups=32 // shrink)
    vae = AutoencoderKL(block_out_channels=tuple(c // shrink for c in (128, 256, 512, 512)), layers_per_block=2,
                        latent_channels=4, sample_size=512, norm_num_groups=32 // shrink,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizers.build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


# --- lockstep: the two variants take turns, a step each ----------------------------------------


class _Turns:
    """A variant's side of the lockstep: before each step it says it is ready, then waits for its turn.

    The benchmark lets one variant run a single step while the other waits (blocked on a pipe, using no
    CPU), then the other, and so on. Whatever slows a shared machine down for a while slows both
    variants' steps alike, so their ratio holds still even when the absolute times do not.
    """

    def __init__(self, ready_fd: int | None, go_fd: int | None) -> None:
        self.ready_fd, self.go_fd = ready_fd, go_fd
        self.started = time.perf_counter()
        self.setup_s: float | None = None

    def wait(self) -> None:
        if self.setup_s is None:
            self.setup_s = time.perf_counter() - self.started  # loading (and, for ours, feature caching)
        if self.ready_fd is None or self.go_fd is None:
            return
        os.write(self.ready_fd, b"w")
        if os.read(self.go_fd, 1) != b"g":
            raise SystemExit("bench/finetune.py: the benchmark that started this variant went away")


class _TurnHooks:
    """The recipe's hooks: it asks ``check_cancelled`` before every step, which is where a turn starts."""

    def __init__(self, turns: _Turns) -> None:
        self.turns = turns

    def progress(self, step: int, total: int, **metrics: float) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def check_cancelled(self) -> None:
        self.turns.wait()


def _await_ready(name: str, process: subprocess.Popen[bytes], ready_fd: int) -> None:
    """Block until the ``name`` child waits for its turn (set up, or its step done); fail if it stopped instead."""
    if os.read(ready_fd, 1) != b"w":
        raise SystemExit(f"bench/finetune.py: the {name} variant stopped (exit code {process.wait()})")


def _lockstep(children: dict[str, tuple[subprocess.Popen[bytes], int, int]], order: tuple[str, ...], steps: int) -> None:
    """Run ``steps`` steps of each child, one at a time, in ``order``; each child has its (ready, go) fds."""
    for step in range(1, steps + 1):
        for name in order:
            os.write(children[name][2], b"g")
            if step < steps:
                _await_ready(name, *children[name][:2])  # its step is done; it waits for the next turn
            elif children[name][0].wait() != 0:  # the last step: let it finish and write its result
                raise SystemExit(f"bench/finetune.py: the {name} variant failed")


# --- the two variants -------------------------------------------------------------------------


def run_ours(model: Path, images: Path, work: Path, settings: dict[str, Any], device: str, turns: _Turns) -> dict[str, Any]:
    from latentops.pipelines.engine import WeightsRef
    from latentops.pipelines.finetune import lora
    from latentops.pipelines.finetune.config import build_config

    config = build_config({**settings, "instance_prompt": "a sks ring", "checkpoint_every": settings["steps"],
                           "samples": False, "optimizer": "adamw",
                           "mixed_precision": "bf16" if device == "cuda" else "no"})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = lora.train(config, weights=WeightsRef("bench-model", model, "sd1"), instance_dir=images, out_dir=work / "ours",
                        cache_dir=work / "cache", device=torch.device(device), hooks=_TurnHooks(turns))
    return {"losses": result.losses, "setup_s": turns.setup_s, "step_times": list(result.step_times)}


def run_reference(model: Path, images: Path, settings: dict[str, Any], device: str, turns: _Turns) -> dict[str, Any]:
    """A plain loop in the style of diffusers' train_dreambooth_lora.py: encode everything every step."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, DiffusionPipeline
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig as PeftLoraConfig

    from latentops.pipelines.finetune import data
    from latentops.pipelines.finetune.lora import _step_generator

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False)
        module.to(device, dtype)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(settings["seed"])
    unet.add_adapter(PeftLoraConfig(r=settings["rank"], lora_alpha=settings["rank"], init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=settings["steps"])
    instances = data.require_instances(images, instance_prompt="a sks ring")
    plan = data.batch_plan(instances, steps=settings["steps"], batch_size=settings["batch_size"],
                           resolution=settings["resolution"], crop="center", flip=True, seed=settings["seed"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, step_times = [], []
    unet.train()
    for step, batch in enumerate(plan, start=1):
        turns.wait()
        began = time.perf_counter()
        generator = _step_generator(settings["seed"], step)
        # As in the example: load and transform the images, then VAE-encode them, every step.
        pixels = torch.stack([data.to_tensor(data.apply_transform(data.decode(images / instances[s.index].file), s.transform))
                              for s in batch]).to(device, dtype)
        with torch.no_grad():
            posterior = vae.encode(pixels).latent_dist
            mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
            latents = (mean + std * torch.randn(mean.shape, generator=generator)) * vae.config.scaling_factor
            ids = tokenizer([instances[s.index].caption for s in batch], padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
            embeds = text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            prediction = unet(noisy.to(dtype), timesteps, embeds.to(dtype)).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if device == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - began)
    return {"losses": losses, "setup_s": turns.setup_s, "step_times": step_times}


def optimizer_state(rank: int, steps: int = 3) -> None:
    """Adam state memory and step time of our two optimizers for a LoRA on the full-size SD1.5 UNet.

    The optimizers come from the recipe's own factory, as a job builds them; gradients are random
    (the state's size and the update's cost do not depend on their values). Runs on the CPU.
    """
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig as PeftLoraConfig

    from latentops.core.errors import InvalidInput
    from latentops.pipelines.finetune import lora
    from latentops.pipelines.finetune.config import build_config
    from latentops.pipelines.finetune.families import UNET_TARGETS

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the SD1.5 defaults
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    print(f"optimizer state of a rank-{rank} LoRA on the full-size SD1.5 UNet ({count / 1e6:.2f} M trainable "
          f"parameters, {len(params)} tensors; fp32 weights {count * 4 / 2**20:.1f} MB), CPU")
    print(f"{'optimizer':<14}{'state MB':>10}{'bytes/param':>13}{'step ms':>10}")
    rows = {}
    for name in ("adamw", "adamw_8bit"):
        config = build_config({"instance_prompt": "x", "rank": rank, "optimizer": name})
        try:
            optimizer, chosen = lora._optimizer(config, [{"params": params, "lr": 1e-4}], torch.device("cpu"))
        except InvalidInput as error:
            raise SystemExit(f"--optimizer-state: {error.detail} or run with PYTHONPATH=.venv/opt/bitsandbytes "
                             "(where make install puts it)") from None
        generator = torch.Generator().manual_seed(1)
        times = []
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            began = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - began)
        state = sum(t.nbytes for entry in optimizer.state.values() for t in entry.values() if torch.is_tensor(t))
        rows[chosen] = state
        print(f"{chosen:<14}{state / 2**20:>10.1f}{state / count:>13.2f}{1000 * sorted(times)[len(times) // 2]:>10.1f}")
        optimizer.zero_grad(set_to_none=True)
    print(f"8-bit AdamW keeps {rows['adamw_8bit'] / rows['adamw']:.2f}x the state of AdamW")


def _child(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    device = "cuda" if args.cuda else "cpu"
    work = Path(args.work)
    turns = _Turns(args.ready_fd, args.go_fd)
    if args.variant == "ours":
        out = run_ours(Path(args.model), Path(args.images), work, settings, device, turns)
    else:
        out = run_reference(Path(args.model), Path(args.images), settings, device, turns)
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="Full-size SD1.5 architecture on the GPU, bf16.")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--optimizer-state", action="store_true",
                        help="Only compare AdamW and 8-bit AdamW state memory for a full-size SD1.5 LoRA (CPU).")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank for --optimizer-state.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="Runs of the pair, alternating which variant goes first; the speed-up reported is the "
                             "median over rounds (default 3 on the CPU, 1 on CUDA).")
    parser.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    for hidden in ("--model", "--images", "--work", "--settings", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--go-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child(args)
        return
    if args.optimizer_state:
        optimizer_state(args.rank)
        return
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("--cuda: no CUDA device here")
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit(f"--rounds: must be at least 1, got {args.rounds}")
    args.rounds = args.rounds or (1 if args.cuda else 3)
    settings = ({"resolution": 512, "batch_size": 4, "steps": args.steps or 20, "rank": 16, "lr": 1e-4, "seed": 1}
                if args.cuda else {"resolution": 128, "batch_size": 2, "steps": args.steps or 20, "rank": 4, "lr": 1e-3,
                                   "seed": 1})
    settings["flip"] = True
    work = Path(tempfile.mkdtemp(prefix="latentops-bench-finetune-"))
    try:
        # CPU: the SD1.5 architecture at a quarter of its widths (VAE 8x downsampling, as in the real
        # model, so encoding costs what it costs relative to the UNet); CUDA: at full size.
        model = _sd15_full_size(work / "sd15", shrink=1 if args.cuda else 4)
        images = _images(work / "images", 5, settings["resolution"])
        rounds = []
        for number in range(args.rounds):
            order = ("reference", "ours") if number % 2 == 0 else ("ours", "reference")
            shutil.rmtree(work / "ours", ignore_errors=True)
            shutil.rmtree(work / "cache", ignore_errors=True)  # every round computes its features afresh
            children = {}
            for variant in order:  # one sets up (loads, caches) while the other already waits for its first turn
                ready_read, ready_write = os.pipe()
                go_read, go_write = os.pipe()
                process = subprocess.Popen(
                    [sys.executable, __file__, "--variant", variant, "--model", str(model), "--images", str(images),
                     "--work", str(work), "--settings", json.dumps(settings), "--result", str(work / f"{variant}.json"),
                     "--ready-fd", str(ready_write), "--go-fd", str(go_read)] + (["--cuda"] if args.cuda else []),
                    pass_fds=(ready_write, go_read), env={**os.environ})
                os.close(ready_write)
                os.close(go_read)
                children[variant] = (process, ready_read, go_write)
                _await_ready(variant, process, ready_read)
            _lockstep(children, order, settings["steps"])
            for _, ready_read, go_write in children.values():
                os.close(ready_read)
                os.close(go_write)
            rounds.append({variant: json.loads((work / f"{variant}.json").read_text()) for variant in order})
        _report(rounds, settings, args.cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _step_time(result: dict[str, Any]) -> float:
    return _median(result["step_times"][1:] or result["step_times"])  # the first step warms up


def _report(rounds: list[dict[str, dict[str, Any]]], settings: dict[str, Any], cuda: bool) -> None:
    where = "CUDA, full-size SD1.5 architecture, bf16" if cuda else "CPU, SD1.5 architecture at 1/4 width"
    print(f"fine-tuning benchmark ({where}; {settings['resolution']} px, batch {settings['batch_size']}, "
          f"{settings['steps']} steps, rank {settings['rank']}; {len(rounds)} round(s), in lockstep)")
    print(f"{'round':<7}{'variant':<34}{'s/step':>10}{'setup s':>10}{'peak MB':>10}{'speed-up':>10}")
    ratios, diffs = [], []
    for number, results in enumerate(rounds, start=1):
        ref, ours = results["reference"], results["ours"]
        ratio = _step_time(ref) / _step_time(ours)
        ratios.append(ratio)
        diffs.append(max(abs(a - b) for a, b in zip(ref["losses"], ours["losses"], strict=True)))
        print(f"{number:<7}{'reference (encode every step)':<34}{_step_time(ref):>10.4f}{ref['setup_s']:>10.1f}"
              f"{ref['peak_mb']:>10.0f}{1.0:>10.2f}")
        print(f"{number:<7}{'latentops LoRA (cached features)':<34}{_step_time(ours):>10.4f}{ours['setup_s']:>10.1f}"
              f"{ours['peak_mb']:>10.0f}{ratio:>10.2f}")
    last = rounds[-1]
    print(f"speed-up (s/step: median step of a run; median over rounds): {_median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"loss curves: max |difference| over {len(last['ours']['losses'])} steps = {max(diffs):.2e} "
          f"(reference final {last['reference']['losses'][-1]:.4f}, ours final {last['ours']['losses'][-1]:.4f})")


if __name__ == "__main__":
    main()
