"""GPU benchmark: `latentops finetune run` against diffusers' own DreamBooth-LoRA scripts, on identical arguments.

For each family the harness builds one random-init model in code (diffusers format, saved once, nothing
downloaded), writes a handful of synthetic images, and trains a LoRA on it with diffusers' unmodified
script (the peer, from ``shared/peers/``) and with ``latentops finetune run``, interleaved in rounds
(round 1: peer then ours; round 2: ours then peer; ...):

    bench/gpu.sh                                   # on one H100/H200; within about 8 minutes
    python bench/gpu_finetune.py --families sd1    # one family
    python bench/gpu_finetune.py --dry-run         # CPU: the tiny models of pipelines/tiny.py, fp32, a few steps

===========  ==============================================================  ==========  =====  ====
family       model (random weights)                                          resolution  batch  rank
===========  ==============================================================  ==========  =====  ====
sd1          SD1.5 UNet, VAE and CLIP-L at full width and depth              512         4      16
sdxl         SDXL UNet at full width, fewer transformer layers per block;    1024        1      16
             VAE full; both CLIP encoders at full width, 2 layers each
flux         FLUX.1 transformer at full width (3072, 24 heads), fewer        1024        1      16
             double/single blocks; VAE full; CLIP and T5 at full width,
             few layers
===========  ==============================================================  ==========  =====  ====

Both sides cache the text conditioning of the single instance prompt before the loop (the SDXL and FLUX
peers precompute it; the SD1 peer encodes it every step, as it does by default), so the text encoders'
depth does not change the step time; only their widths matter (they set the conditioning's shape).

Both sides get the same model folder, images, prompt, steps, lr (constant), rank, resolution, batch,
weight decay, gradient clipping, mixed precision (bf16; ``no`` in the dry run) and seed. Each run is one
process started through this file's probe (``--probe``), the same for both sides, which changes nothing in
what runs and records:

* the wall-clock time of every optimizer step (a torch global optimizer-step hook): s/step is the median
  interval between consecutive optimizer steps after the warm-up steps (excluded). Loading, caching
  and whatever runs after the last step are outside it;
* the loss passed to ``Accelerator.backward`` at every step (both trainers call it once per step);
* peak allocated memory: on CUDA ``torch.cuda.max_memory_allocated`` over the whole process (a reset by
  the trainer is read first) and over the training steps after the first; on the CPU the peak RSS;
* the number of parameters the optimizer steps (the LoRA matrices: each trainer picks its own layers).

Once the last step is recorded the probe ends the process (``--full-runs`` lets both finish and write
their outputs). A side that fails is reported with the tail of its log and its family's remaining rounds
are skipped; a global deadline (``--deadline``, default 450 s) skips the rounds that would start after
it, and says so. The report is a table on stdout and ``report.json`` in ``--out``, with each run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of sks shape"
SEED = 0
LR = 1e-4
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0
IMAGES = 5
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # the layers latentops puts LoRA on (families.UNET_TARGETS)


@dataclass
class Family:
    """One family's benchmark settings: the peer script and the arguments both sides get."""

    name: str
    script: str
    resolution: int
    batch: int
    rank: int
    steps: int
    warmup: int
    peer_extra: list[str] = field(default_factory=list)
    description: str = ""


def families(dry_run: bool, sizes: argparse.Namespace) -> dict[str, Family]:
    """The benchmark's families; ``dry_run``: the tiny models at 64 px, batch 1, rank 4, 4 steps."""
    # The FLUX peer's defaults differ from what latentops trains with; these make them the same: T5 prompt
    # length 128 (ours) instead of 512, guidance 1 (ours) instead of 3.5, and LoRA on the attention's
    # q, k, v and output projections as ours (its default adds the context projections and the feed-forwards).
    flux_extra = ["--max_sequence_length", "128", "--guidance_scale", "1.0"]
    if not sizes.peer_default_layers:
        flux_extra += ["--lora_layers", ",".join(UNET_TARGETS)]
    if dry_run:
        steps, warmup = sizes.steps or 4, 1
        return {
            "sd1": Family("sd1", "train_dreambooth_lora.py", 64, 1, 4, steps, warmup),
            "sdxl": Family("sdxl", "train_dreambooth_lora_sdxl.py", 64, 1, 4, steps, warmup),
            "flux": Family("flux", "train_dreambooth_lora_flux.py", 64, 1, 4, steps, warmup, flux_extra),
        }
    return {
        "sd1": Family("sd1", "train_dreambooth_lora.py", 512, 4, 16, sizes.steps or 20, 3),
        "sdxl": Family("sdxl", "train_dreambooth_lora_sdxl.py", 1024, 1, 16, sizes.steps or 15, 3),
        "flux": Family("flux", "train_dreambooth_lora_flux.py", 1024, 1, 16, sizes.steps or 15, 3, flux_extra),
    }


# --- models: the real architectures with random weights, built in code --------------------------


def _clip_text(hidden: int, layers: int, heads: int, act: str, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from latentops.pipelines import tokenizers

    vocab, _ = tokenizers.clip_vocabulary()
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 4,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"], **({"projection_dim": projection} if projection else {}))
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _cpu(scheduler: Any, **config: Any) -> Any:
    """A scheduler, built on the CPU whatever device the models are being built on (it keeps its tables there)."""
    import torch

    with torch.device("cpu"):
        return scheduler(**config)


def _vae(latent_channels: int, sample_size: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         latent_channels=latent_channels, sample_size=sample_size, norm_num_groups=32,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **extra)


def build_sd15() -> tuple[Any, dict[str, Any]]:
    """SD1.5: UNet (320, 640, 1280, 1280), 2 layers per block, cross-attention 768; CLIP-L 12 x 768; the SD VAE."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from latentops.pipelines import tokenizers

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    pipe = StableDiffusionPipeline(
        vae=_vae(4, 512), text_encoder=_clip_text(768, 12, 12, "quick_gelu"), tokenizer=tokenizers.build_clip_tokenizer(),
        unet=unet, scheduler=_cpu(DDPMScheduler, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                     clip_sample=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe, {"unet": "block_out (320, 640, 1280, 1280), layers_per_block 2, cross_attention 768 (SD1.5, full)",
                  "text_encoder": "CLIP-L 12 layers x 768 (full)", "vae": "(128, 256, 512, 512), 4 latent channels (full)"}


def build_sdxl(transformer_layers: tuple[int, int, int], text_layers: int) -> tuple[Any, dict[str, Any]]:
    """SDXL at its widths; ``transformer_layers`` per down block (real: 1, 2, 10), text encoders ``text_layers`` deep."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from latentops.pipelines import tokenizers

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=transformer_layers, use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, 1024, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_clip_text(768, text_layers, 12, "quick_gelu"),
        text_encoder_2=_clip_text(1280, text_layers, 20, "gelu", projection=1280),
        tokenizer=tokenizers.build_clip_tokenizer(), tokenizer_2=tokenizers.build_clip_tokenizer(), unet=unet,
        scheduler=_cpu(EulerDiscreteScheduler, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    return pipe, {"unet": f"block_out (320, 640, 1280), layers_per_block 2, transformer layers per block "
                          f"{transformer_layers} (SDXL: (1, 2, 10)), cross_attention 2048",
                  "text_encoders": f"CLIP-L 768 and CLIP-bigG 1280 wide, {text_layers} layers each (SDXL: 12 and 32; "
                                   "their outputs are cached by both sides)",
                  "vae": "(128, 256, 512, 512), 4 latent channels (full)"}


def build_flux(double: int, single: int, text_layers: int) -> tuple[Any, dict[str, Any]]:
    """FLUX.1-dev at its widths (3072 = 24 heads x 128) with ``double``/``single`` blocks (real: 19/38)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from latentops.pipelines import tokenizers

    t5_tokenizer = tokenizers.build_t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=4096, d_kv=64, d_ff=1024, num_layers=text_layers,
                                 num_heads=8, relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0, feed_forward_proj="gated-gelu"))
    scheduler = _cpu(FlowMatchEulerDiscreteScheduler, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=_vae(16, 1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                      use_post_quant_conv=False),
        text_encoder=_clip_text(768, text_layers, 12, "quick_gelu"), tokenizer=tokenizers.build_clip_tokenizer(),
        text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
    return pipe, {"transformer": f"width 3072 (24 heads x 128), {double} double + {single} single blocks "
                                 "(FLUX.1: 19 + 38), joint attention 4096, guidance embedding",
                  "text_encoders": f"CLIP-L 768 wide and T5 4096 wide (d_ff 1024, {len(t5_tokenizer)}-token vocabulary), "
                                   f"{text_layers} layer(s) each: small, since their outputs are cached by both sides",
                  "vae": "(128, 256, 512, 512), 16 latent channels (full)"}


def build_model(family: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write ``family``'s benchmark model to ``out`` (seeded random weights); its description, with sizes."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"  # random init is quicker there
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(SEED)
        if args.dry_run:
            from latentops.pipelines import tiny

            pipe, described = tiny.build(family, seed=SEED), {"model": "pipelines/tiny.py (tiny random-init)"}
        elif family == "sd1":
            pipe, described = build_sd15()
        elif family == "sdxl":
            pipe, described = build_sdxl(args.sdxl_transformer_layers, args.text_layers)
        else:
            pipe, described = build_flux(args.flux_double_blocks, args.flux_single_blocks, args.text_layers)
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    described["denoiser_parameters_m"] = round(sum(p.numel() for p in denoiser.parameters()) / 1e6, 1)
    pipe.save_pretrained(str(out), safe_serialization=True)
    del pipe, denoiser
    if device == "cuda":
        torch.cuda.empty_cache()
    return described


def write_images(folder: Path, size: int, count: int = IMAGES) -> Path:
    """``count`` square synthetic images at exactly ``size`` px (so every crop and resize is the identity)."""
    import random

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        step = size // 16
        draw.ellipse((step * (1 + index % 3), step * 2, size - step * (2 + index), size - step), fill=tuple(rng.randrange(256) for _ in range(3)))
        draw.rectangle((step, step, step * (4 + index), step * 3), fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"shape{index}.png")
    return folder


# --- the two sides' command lines ---------------------------------------------------------------


def peer_command(spec: Family, script: Path, model: Path, images: Path, out: Path, precision: str) -> list[str]:
    """diffusers' script on the shared arguments (weight decay and clipping given explicitly: the scripts' defaults differ)."""
    return [str(script), "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
            "--instance_prompt", PROMPT, "--output_dir", str(out), "--resolution", str(spec.resolution),
            "--train_batch_size", str(spec.batch), "--rank", str(spec.rank), "--max_train_steps", str(spec.steps),
            "--learning_rate", str(LR), "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--seed", str(SEED),
            "--mixed_precision", precision, "--adam_weight_decay", str(WEIGHT_DECAY), "--max_grad_norm", str(MAX_GRAD_NORM),
            "--checkpointing_steps", "100000000", *spec.peer_extra]


def ours_config(spec: Family, model_name: str, images: Path, precision: str) -> str:
    """The ``finetune run --config`` file with the same settings (AdamW as the peers, no flips, no sample grid)."""
    values: dict[str, Any] = {
        "model": model_name, "method": "lora", "instance-dir": str(images), "instance-prompt": PROMPT,
        "steps": spec.steps, "rank": spec.rank, "lr": LR, "resolution": spec.resolution, "batch-size": spec.batch,
        "seed": SEED, "checkpoint-every": spec.steps, "lr_schedule": "constant", "warmup_steps": 0,
        "mixed_precision": precision, "optimizer": "adamw", "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
        "crop": "center", "flip": False, "samples": False, "attest-licence": True, "attest-consent": True,
    }
    lines = ["[finetune]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    return "\n".join(lines) + "\n"


def ours_command(config: Path, out: Path) -> list[str]:
    return ["latentops.platform.cli.main:run", "finetune", "run", "--config", str(config), "--out", str(out),
            "--no-track", "--json"]


def probe_command(result: Path, steps: int, full_run: bool, target: list[str]) -> list[str]:
    """Run ``target`` (a script path or ``module:function``, then its arguments) under this file's probe."""
    return [sys.executable, str(Path(__file__).resolve()), "--probe", str(result), "--probe-steps", str(steps),
            *(["--probe-full-run"] if full_run else []), "--", *target]


# --- the probe: runs in each trainer's process ---------------------------------------------------


def probe(result_path: Path, steps: int, full_run: bool, target: list[str]) -> None:
    """Record optimizer-step times, losses and peak memory of ``target`` run in this process; write them as JSON."""
    import resource
    import runpy

    import accelerate
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    cuda = torch.cuda.is_available()
    stamps: list[float] = []
    losses: list[Any] = []
    peaks = {"process": 0.0, "train": 0.0}
    trained = {"parameters": 0}

    def allocated_peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0

    def write() -> None:
        peaks["process"] = max(peaks["process"], allocated_peak())
        peaks["train"] = allocated_peak() if len(stamps) > 1 else 0.0
        record = {"stamps": stamps, "losses": [float(v) for v in losses], "cuda": cuda,
                  "trainable_parameters": trained["parameters"],
                  "peak_allocated_mb": peaks["process"] if cuda else None,
                  "train_peak_allocated_mb": peaks["train"] if cuda else None,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
        result_path.write_text(json.dumps(record))

    original_reset = torch.cuda.reset_peak_memory_stats

    def reset_peak(*args: Any, **kwargs: Any) -> None:  # a trainer's own reset: keep the peak before it
        peaks["process"] = max(peaks["process"], allocated_peak())
        original_reset(*args, **kwargs)

    torch.cuda.reset_peak_memory_stats = reset_peak  # type: ignore[assignment]
    torch.cuda.memory.reset_peak_memory_stats = reset_peak  # type: ignore[assignment]

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            trained["parameters"] = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        if cuda and len(stamps) == 1:  # from here on: the peak of the training steps after the first
            peaks["process"] = max(peaks["process"], allocated_peak())
            original_reset()
        if len(stamps) == steps and not full_run:
            if cuda:
                torch.cuda.synchronize()
            write()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # the last step is recorded; outputs written after training are not measured

    register_optimizer_step_post_hook(after_step)
    original_backward = accelerate.Accelerator.backward

    def backward(self: Any, loss: Any, **kwargs: Any) -> Any:
        losses.append(loss.detach())  # read after the run: no extra synchronisation per step
        return original_backward(self, loss, **kwargs)

    accelerate.Accelerator.backward = backward  # type: ignore[method-assign]
    name, args = target[0], target[1:]
    try:
        if name.endswith(".py"):
            sys.argv = [name, *args]
            sys.path.insert(0, str(Path(name).resolve().parent))
            runpy.run_path(name, run_name="__main__")
        else:
            module, function = name.split(":")
            sys.argv = [module, *args]
            getattr(__import__(module, fromlist=[function]), function)()
    finally:
        write()


# --- running the rounds ---------------------------------------------------------------------------


@dataclass
class Run:
    family: str
    side: str
    round: int
    ok: bool
    wall_s: float
    log: str
    seconds_per_step: float | None = None
    mean_seconds_per_step: float | None = None
    losses: list[float] = field(default_factory=list)
    peak_allocated_mb: float | None = None
    train_peak_allocated_mb: float | None = None
    peak_rss_mb: float | None = None
    trainable_parameters: int = 0
    error: str | None = None
    device: str | None = None


def steady_state(stamps: list[float], warmup: int) -> tuple[float, float]:
    """(median, mean) seconds per step over the steps after ``warmup``, from each optimizer step's wall-clock time."""
    if len(stamps) < 2:
        raise ValueError(f"{len(stamps)} optimizer step(s) recorded; at least 2 are needed for a step time")
    warmup = min(max(warmup, 1), len(stamps) - 1)
    deltas = [stamps[k] - stamps[k - 1] for k in range(warmup, len(stamps))]
    return statistics.median(deltas), (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run_side(side: str, spec: Family, command: list[str], result: Path, log: Path, env: dict[str, str],
             round_number: int, timeout: float) -> Run:
    """Start one side's process, wait (at most ``timeout`` s) and read what its probe recorded."""
    result.unlink(missing_ok=True)
    began = time.perf_counter()
    with log.open("w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    wall = time.perf_counter() - began
    run = Run(spec.name, side, round_number, False, round(wall, 2), str(log))
    if code is None:
        run.error = f"stopped at the deadline after {wall:.0f} s\n{_tail(log)}"
        return run
    if code != 0 or not result.exists():
        run.error = f"exit code {code}\n{_tail(log)}"
        return run
    record = json.loads(result.read_text())
    try:
        run.seconds_per_step, run.mean_seconds_per_step = steady_state(record["stamps"], spec.warmup)
    except ValueError as error:
        run.error = f"{error}\n{_tail(log)}"
        return run
    if len(record["stamps"]) != spec.steps:
        run.error = f"{len(record['stamps'])} optimizer steps recorded, {spec.steps} expected\n{_tail(log)}"
        return run
    run.ok = True
    run.losses = record["losses"]
    run.peak_allocated_mb, run.train_peak_allocated_mb = record["peak_allocated_mb"], record["train_peak_allocated_mb"]
    run.peak_rss_mb, run.device = record["peak_rss_mb"], record["device"]
    run.trainable_parameters = record["trainable_parameters"]
    return run


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", "from latentops.platform.cli.main import run; run()", *args],
                          check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"latentops {' '.join(args)}: exit {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    return done.stdout


def find_peers(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else [ROOT / "shared" / "peers", ROOT.parent / "shared" / "peers"]
    for candidate in candidates:
        if (candidate / "train_dreambooth_lora.py").exists():
            return candidate.resolve()
    raise SystemExit(f"--peers: no train_dreambooth_lora.py in {', '.join(map(str, candidates))}")


def _pairs(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, fp32, batch 1, a few steps.")
    parser.add_argument("--families", default="sd1,sdxl,flux", help="Comma-separated: sd1, sdxl, flux.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds per family (peer, ours; then ours, peer; ...).")
    parser.add_argument("--steps", type=int, default=None, help="Steps per run (default 20 sd1, 15 sdxl/flux; dry run 4).")
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="Seconds from the start after which no run starts and a running one is stopped (default 450).")
    parser.add_argument("--out", default="gpu-finetune-out", help="Folder for report.json and the runs' logs.")
    parser.add_argument("--peers", default=os.environ.get("PEERS"), help="Folder of diffusers' scripts (default shared/peers).")
    parser.add_argument("--work", default=None, help="Scratch folder for models and runs (default: a temporary one, removed).")
    parser.add_argument("--full-runs", action="store_true", help="Let each run finish and write its outputs.")
    parser.add_argument("--peer-default-layers", action="store_true",
                        help="Let the FLUX script put LoRA on its default layers (more than latentops trains).")
    parser.add_argument("--sdxl-transformer-layers", type=_pairs, default=(1, 2, 4),
                        help="SDXL transformer layers per down block (real: 1,2,10; default 1,2,4).")
    parser.add_argument("--flux-double-blocks", type=int, default=2, help="FLUX double-stream blocks (real: 19).")
    parser.add_argument("--flux-single-blocks", type=int, default=4, help="FLUX single-stream blocks (real: 38).")
    parser.add_argument("--text-layers", type=int, default=2, help="Layers of the SDXL/FLUX text encoders.")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-full-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("target", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target[:1] == ["--"]:
        args.target = args.target[1:]
    return args


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build, run the rounds, write and return the report."""
    started = time.monotonic()
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    peers = find_peers(args.peers)
    specs = families(args.dry_run, args)
    chosen = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in specs]
    if unknown or not chosen:
        raise SystemExit(f"--families: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(specs)}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds: must be at least 1, got {args.rounds}")
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not args.dry_run and not cuda:
        raise SystemExit("no CUDA device here: run on a GPU, or use --dry-run")
    precision = "bf16" if cuda else "no"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="latentops-gpu-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", LATENTOPS_HOME=str(work / "home"), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("LATENTOPS_DATABASE_URL", None)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    report: dict[str, Any] = {
        "mode": "dry-run (CPU, tiny models, fp32)" if args.dry_run else "GPU, bf16", "device": None,
        "deadline_s": args.deadline, "rounds": args.rounds, "peers": str(peers),
        "settings": {"prompt": PROMPT, "seed": SEED, "lr": LR, "lr_schedule": "constant", "weight_decay": WEIGHT_DECAY,
                     "max_grad_norm": MAX_GRAD_NORM, "optimizer": "AdamW", "mixed_precision": precision, "images": IMAGES},
        "measurement": {
            "s_per_step": "median interval between consecutive optimizer steps (torch global optimizer-step hook, "
                          "wall clock, in each trainer's process), warm-up steps excluded",
            "peak_allocated_mb": "torch.cuda.max_memory_allocated over the whole process (a trainer's own resets read "
                                 "first); train_peak_allocated_mb: over the steps after the first",
            "peak_rss_mb": "peak resident memory of the process (getrusage)",
            "losses": "the loss passed to Accelerator.backward at each step",
            "trainable_parameters": "parameters the optimizer steps (the LoRA matrices)",
            "ratio": "peer s/step / latentops s/step (median over rounds); above 1: latentops is faster",
        },
        "families": {}, "skipped": [],
    }
    try:
        _cli(env, "db", "upgrade")
        runs: dict[str, list[Run]] = {name: [] for name in chosen}
        for name in chosen:
            spec = specs[name]
            report["families"][name] = {
                "script": spec.script, "resolution": spec.resolution, "batch": spec.batch, "rank": spec.rank,
                "steps": spec.steps, "warmup_steps_excluded": spec.warmup, "peer_extra_args": spec.peer_extra}
        failed: set[str] = set()
        prepared: dict[str, tuple[Path, Path]] = {}
        for round_number in range(1, args.rounds + 1):
            for name in chosen:
                spec = specs[name]
                if name in failed:
                    continue
                entry = report["families"][name]
                if name not in prepared:
                    if time.monotonic() - started > args.deadline:
                        report["skipped"].append(f"{name}: not built, the deadline ({args.deadline:.0f} s) had passed")
                        failed.add(name)  # nothing more of it runs (its status says skipped, not failed)
                        continue
                    began = time.perf_counter()
                    try:
                        entry["model"] = build_model(name, work / f"model-{name}", args)
                        images = write_images(work / f"images-{name}", spec.resolution)
                        imported = json.loads(_cli(env, "models", "import", str(work / f"model-{name}"), "--name",
                                                   f"bench-{name}", "--sensitivity", "public", "--json"))
                        # public: the console operator may use it without a grant. The peer reads the store's copy
                        # too, so both sides load the very same files (and the disk holds one copy).
                        shutil.rmtree(work / f"model-{name}")
                    except Exception as error:  # noqa: BLE001 - the report says which family could not be set up
                        entry["failed"] = f"setup: {type(error).__name__}: {error}"[-3000:]
                        failed.add(name)
                        continue
                    entry["setup_s"] = round(time.perf_counter() - began, 1)
                    config = work / f"ours-{name}.toml"
                    config.write_text(ours_config(spec, f"bench-{name}", images, precision))
                    entry["model_folder"] = imported["path"]
                    prepared[name] = (Path(imported["path"]), images)
                    print(f"{name}: model built, saved and imported in {entry['setup_s']} s: {entry['model']}", flush=True)
                model, images = prepared[name]
                order = ("peer", "ours") if round_number % 2 else ("ours", "peer")
                for side in order:
                    remaining = args.deadline - (time.monotonic() - started)
                    if remaining <= 0:
                        report["skipped"].append(f"{name} round {round_number} {side}: the deadline ({args.deadline:.0f} s) had passed")
                        continue
                    run_dir = work / f"{name}-{side}-{round_number}"
                    shutil.rmtree(run_dir, ignore_errors=True)
                    if side == "peer":
                        target = peer_command(spec, peers / spec.script, model, images, run_dir, precision)
                    else:
                        target = ours_command(work / f"ours-{name}.toml", run_dir)
                    command = probe_command(work / "probe.json", spec.steps, args.full_runs, target)
                    run = run_side(side, spec, command, work / "probe.json", out / "logs" / f"{name}-{side}-{round_number}.log",
                                   env, round_number, remaining)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    runs[name].append(run)
                    report["device"] = report["device"] or run.device
                    shown = f"{run.seconds_per_step:.4f} s/step" if run.ok else (run.error or "").splitlines()[0]
                    print(f"{name} round {round_number} {side}: {shown} (wall {run.wall_s:.1f} s)", flush=True)
                    if not run.ok:
                        if run.error and run.error.startswith("stopped at the deadline"):
                            report["skipped"].append(f"{name} round {round_number} {side}: {run.error.splitlines()[0]}")
                        else:
                            entry["failed"] = f"{side} round {round_number}: {run.error}"
                        failed.add(name)
                        break
        for name in chosen:
            entry = report["families"][name]
            entry.update(summarise(runs[name], specs[name]))
            good = sum(run.ok for run in runs[name])
            entry["status"] = ("failed" if "failed" in entry else "done" if good == 2 * args.rounds
                               else "partial" if good else "skipped")
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        return report
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def summarise(runs: list[Run], spec: Family) -> dict[str, Any]:
    """Per side: s/step (median over its rounds), memory, losses at steps 1, middle, last; and the ratio."""
    summary: dict[str, Any] = {"runs": [run.__dict__ for run in runs]}
    middle = (spec.steps + 1) // 2
    for side in ("peer", "ours"):
        good = [run for run in runs if run.side == side and run.ok]
        if not good:
            continue
        first = good[0]

        def most(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return round(max(present), 1) if present else None

        summary[side] = {
            "s_per_step": round(statistics.median(run.seconds_per_step or 0.0 for run in good), 4),
            "s_per_step_rounds": [round(run.seconds_per_step or 0.0, 4) for run in good],
            "peak_allocated_mb": most([run.peak_allocated_mb for run in good]),
            "train_peak_allocated_mb": most([run.train_peak_allocated_mb for run in good]),
            "peak_rss_mb": most([run.peak_rss_mb for run in good]),
            "trainable_parameters": first.trainable_parameters,
            "loss_at_steps": {str(step): round(first.losses[step - 1], 5) for step in sorted({1, middle, spec.steps})
                              if step <= len(first.losses)},
            "mean_loss": round(statistics.fmean(first.losses), 5) if first.losses else None,
        }
    if "peer" in summary and "ours" in summary and summary["ours"]["s_per_step"] > 0:
        summary["ratio"] = round(summary["peer"]["s_per_step"] / summary["ours"]["s_per_step"], 3)
    return summary


def print_report(report: dict[str, Any]) -> None:
    memory = "peak alloc MB" if report["mode"].startswith("GPU") else "peak RSS MB"
    print(f"\nfine-tuning benchmark against diffusers' scripts: {report['mode']}, device {report['device']}, "
          f"{report['rounds']} round(s), {report.get('elapsed_s', 0):.0f} s")
    print("s/step: median interval between optimizer steps after warm-up (probe hook, both sides); "
          "ratio = peer / latentops")
    header = f"{'family':<7}{'side':<6}{'res':>6}{'batch':>6}{'rank':>5}{'steps':>6}{'s/step':>10}{memory:>15}" \
             f"{'train MB':>10}{'LoRA params':>13}{'loss@1':>9}{'loss@mid':>10}{'loss@last':>10}{'ratio':>8}"
    print(header)
    for name, entry in report["families"].items():
        for side in ("peer", "ours"):
            if side not in entry:
                continue
            row = entry[side]
            peak = row["peak_allocated_mb"] if memory.startswith("peak alloc") else row["peak_rss_mb"]
            train = row["train_peak_allocated_mb"] if row["train_peak_allocated_mb"] is not None else float("nan")
            losses = list(row["loss_at_steps"].values()) + [float("nan")] * 3
            ratio = f"{entry['ratio']:.2f}" if side == "ours" and "ratio" in entry else ""
            print(f"{name:<7}{side:<6}{entry['resolution']:>6}{entry['batch']:>6}{entry['rank']:>5}{entry['steps']:>6}"
                  f"{row['s_per_step']:>10.4f}{(peak or 0):>15.0f}{train:>10.0f}{row['trainable_parameters']:>13,}"
                  f"{losses[0]:>9.4f}{losses[1]:>10.4f}{losses[2]:>10.4f}{ratio:>8}")
        if "failed" in entry:
            print(f"{name}: FAILED {entry['failed']}")
        elif entry["status"] != "done":
            print(f"{name}: {entry['status']} ({len(entry['runs'])} of {2 * report['rounds']} runs; see skipped)")
        for part, text in entry.get("model", {}).items():
            print(f"  {name} {part}: {text}")
    for line in report["skipped"]:
        print(f"skipped: {line}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe:
        probe(Path(args.probe), args.probe_steps, args.probe_full_run, args.target)
        return
    report = benchmark(args)
    print_report(report)
    print(f"report: {Path(args.out).resolve() / 'report.json'}")


if __name__ == "__main__":
    main()
