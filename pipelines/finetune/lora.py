"""The LoRA recipe: LoRA on the denoiser (and optionally the text encoders) of any stored family.

Read top to bottom: 1. data, 2. base model, 3. feature cache, 4. LoRA + optimizer, 5. resume,
6. training loop (with checkpoints and validation), 7. outputs (written by :mod:`outputs`). DreamBooth
(:mod:`latentops.pipelines.finetune.dreambooth`) runs this same loop with a prior-preservation
batch beside every instance batch.

Determinism: the batch plan (data order, crops, flips) is fixed by the seed before the loop, and
every step draws its noise, timesteps and latent samples from its own generator seeded by
``(seed, step)``. Together with the optimizer, scheduler, RNG and EMA state in each checkpoint, a
run stopped at step k and resumed ends bit-identical (on CPU) to one that never stopped.

The loop runs under ``accelerate`` (mixed precision on GPU); the caller passes ``hooks`` for
progress, logging and cooperative cancellation, optionally a tracker (:mod:`tracking`) that
receives metrics and the outputs, and the governed ``renderer`` (:class:`validation.Renderer`) that
renders validation images and final samples (a run given none fails when it has one to render).

Several processes (``config.processes > 1``): the call that receives such a config launches that
many training processes (:mod:`launcher`, :mod:`distributed`) and returns rank 0's result; each of them runs this
same function with its ``process`` rank. The plan then holds global batches of
``batch_size * processes`` samples, of which rank r trains on the r-th ``batch_size``; the trained
modules are wrapped in DDP through ``accelerator.prepare`` so gradients are averaged over ranks; the
loss recorded is the mean over ranks. Rank 0 alone writes the cache, checkpoints, images and outputs.
A single process runs exactly as before: same plan, same noise, same ops.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentops.core.errors import Conflict, InvalidInput
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import checkpoint as ckpt
from latentops.pipelines.finetune import (
    data,
    distributed,
    heldout,
    interop,
    launcher,
    memory,
    outputs,
    validation,
)
from latentops.pipelines.finetune.cache import FeatureCache
from latentops.pipelines.finetune.checkpoint import TrainingFailed
from latentops.pipelines.finetune.config import LoraConfig
from latentops.pipelines.finetune.distributed import Rank
from latentops.pipelines.finetune.families import Family, micro_conditioning
from latentops.pipelines.finetune.optimizers import bitsandbytes as _bitsandbytes
from latentops.pipelines.finetune.optimizers import build as _optimizer
from latentops.pipelines.finetune.optimizers import precision as _precision
from latentops.pipelines.finetune.run import Hooks, PriorData, QuietHooks, Tracker, TrainingResult

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def _step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    # Every rank draws its own noise and timesteps; rank 0 draws what a single process draws.
    return torch.Generator().manual_seed((seed * 1_000_003 + step + rank * 2**40) % (2**63 - 1))


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _load_pipeline(weights: WeightsRef, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    from latentops.pipelines.engine import dtype_argument

    if weights.format != "diffusers" or not (weights.path / "model_index.json").exists():
        raise InvalidInput(f"model: {weights.path} is not a stored diffusers folder; fine-tuning needs one")
    pipeline = DiffusionPipeline.from_pretrained(str(weights.path), **{dtype_argument(): dtype}, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _conditioning(family: Family, cache: FeatureCache, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
    path = cache.text_path(prompt)
    found = cache.get(path)
    if found is None:
        found = family.encode_cached(prompt, device).tensors
        cache.put(path, found)
    return found


def _latents(family: Family, cache: FeatureCache, folder: Path, image: data.InstanceImage, transform: data.Transform,
             *, min_side: int) -> dict[str, torch.Tensor]:
    path = cache.latent_path(image.sha256, transform.key())
    found = cache.get(path)
    if found is None:
        pixels = data.to_tensor(data.apply_transform(data.decode(folder / image.file, min_side=min_side), transform))
        mean, std = family.latent_distribution(pixels.unsqueeze(0))
        found = {"mean": mean[0].cpu(), "std": std[0].cpu()}
        cache.put(path, found)
    return found


@dataclass
class _Stream:
    """One source of batches (instance images, or DreamBooth class images)."""

    folder: Path
    images: list[data.InstanceImage]
    plan: list[list[data.Sample]]
    weight: float
    min_side: int


def _batch(family: Family, cache: FeatureCache, stream: _Stream, samples: list[data.Sample], device: torch.device,
           generator: torch.Generator, text_cache: dict[str, dict[str, torch.Tensor]] | None,
           dropped: frozenset[int] = frozenset()) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[tuple[int, int, int, int, int, int]]]:
    entries = [_latents(family, cache, stream.folder, stream.images[s.index], s.transform, min_side=stream.min_side)
               for s in samples]
    mean = torch.stack([e["mean"] for e in entries])
    std = torch.stack([e["std"] for e in entries])
    latents = family.to_model_latents(mean, std, generator)
    # A dropped caption (caption_dropout) trains on the empty prompt's conditioning.
    captions = [heldout.EMPTY_PROMPT if i in dropped else stream.images[s.index].caption for i, s in enumerate(samples)]
    if text_cache is not None:
        cond = {k: torch.stack([text_cache[c][k] for c in captions]) for k in text_cache[captions[0]]}
    else:
        cond = family.encode(captions, device)  # text encoders train: no cached embeddings
    micro = [micro_conditioning((stream.images[s.index].width, stream.images[s.index].height),
                                (s.transform.crop_x, s.transform.crop_y), s.transform.bucket) for s in samples]
    return latents, cond, micro


def train(
    config: LoraConfig,
    *,
    weights: WeightsRef,
    instance_dir: Path,
    out_dir: Path,
    cache_dir: Path | None = None,
    hooks: Hooks | None = None,
    tracker: Tracker | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    prior: PriorData | None = None,
    job_id: int | None = None,
    device: torch.device | None = None,
    process: Rank | None = None,
    renderer: validation.Renderer | None = None,
    own_process: bool = False,
) -> TrainingResult:
    """Train a LoRA for ``config`` on the images in ``instance_dir``; outputs go to ``out_dir``.

    ``renderer`` is the governed path for the run's images (a module-level function, so that it
    reaches the training processes of a multi-process run by reference). ``process`` is given only
    by the launcher of a multi-process run, to each training process. ``own_process`` trains a
    single-process run in a fresh process of its own, started and relayed by the launcher as a
    multi-process run is (a queued job: the worker process that ran earlier jobs trains about 10%
    slower than a fresh one, docs/finetune.md "Queued against in process").
    """
    hooks = hooks or QuietHooks()
    device = device or _device()
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    if stop_after is not None and not 1 <= stop_after <= config.steps:
        raise InvalidInput(f"stop_after: must be between 1 and steps ({config.steps}), got {stop_after}")
    _bitsandbytes(config, device)  # an optimizer this machine cannot run is refused before any work
    memory.require_quantization(config.base_quantization, device)  # so is a quantisation it cannot run
    existing = ckpt.load_latest(checkpoints)
    if existing is not None and not resume:
        raise Conflict(f"out: {out_dir} already holds a run (checkpoint at step {existing.step}); pass --resume "
                       "to continue it, or choose another folder")
    if (config.processes > 1 or own_process) and process is None:
        # Several processes (or one of its own): this one starts them, relays rank 0's reports and returns its
        # result. What the machine cannot honour (more processes than GPUs, fp16 on a CPU) is refused before any starts.
        if device.type == "cuda" and config.processes > 1:
            distributed.require_gpus(config.processes, distributed.available_gpus())
        _precision(config, device)
        return launcher.launch(train, processes=config.processes, device_type=device.type, hooks=hooks, tracker=tracker,
                               train_kwargs={"config": config, "weights": weights, "instance_dir": Path(instance_dir),
                                             "out_dir": out_dir, "cache_dir": cache_dir, "resume": resume,
                                             "stop_after": stop_after, "prior": prior, "job_id": job_id,
                                             "renderer": renderer})
    rank, world = (process.rank, process.world_size) if process is not None else (0, 1)
    main = rank == 0

    # 1. Data: validate, caption and hash the instance images; fix the batch plan from the seed.
    #    With several processes each plan batch is the global one; rank r trains on its r-th share.
    images = data.require_instances(instance_dir, instance_prompt=config.instance_prompt)
    _, refused = data.load_instances(instance_dir, instance_prompt=config.instance_prompt)
    dataset_hash = data.dataset_hash(images)
    images, held = heldout.split(images, config.validation_split, seed=config.seed)  # held out: never in the plan
    plan_args = {"steps": config.steps, "batch_size": config.batch_size * world, "resolution": config.resolution,
                 "crop": config.crop, "flip": config.flip}
    streams = [_Stream(Path(instance_dir), images, data.batch_plan(images, seed=config.seed, **plan_args), 1.0,
                       data.MIN_SIDE)]
    if prior is not None:
        # Class images come from the base model itself (often at its native, small size).
        class_images = data.require_instances(prior.folder, instance_prompt=prior.class_prompt, min_side=8)
        streams.append(_Stream(prior.folder, class_images,
                               data.batch_plan(class_images, seed=config.seed + 1, **plan_args), prior.weight, 8))
        dataset_hash = data.dataset_hash(images + class_images)

    # 2. Base model, in the dtype the run computes in (weights stay frozen; LoRA trains in fp32).
    precision = _precision(config, device)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(config.seed)
    pipeline = _load_pipeline(weights, dtype)
    family = Family(weights.family, pipeline)
    family.check(min_snr_gamma=config.min_snr_gamma, resolution=config.resolution)
    for module in [family.vae, family.denoiser, *family.all_text_encoders()]:
        module.requires_grad_(False).eval()
    family.vae.to(device)
    for encoder in family.all_text_encoders():
        encoder.to(device)

    # 3. Feature cache: every latent the plan needs and every caption's conditioning, computed once
    #    (by rank 0 alone; the other ranks wait, then find every entry there).
    cache = FeatureCache(cache_dir or out_dir / "cache", weights.content_hash)
    started_cache = time.perf_counter()
    if not main:
        distributed.barrier(process)
    for stream in streams if main else []:
        for batch in stream.plan:
            for sample in batch:
                _latents(family, cache, stream.folder, stream.images[sample.index], sample.transform, min_side=stream.min_side)
    text_cache = None
    if not config.train_text_encoder:
        captions = {image.caption for stream in streams for image in stream.images} | {i.caption for i in held}
        captions |= {heldout.EMPTY_PROMPT} if config.caption_dropout else set()
        text_cache = {c: _conditioning(family, cache, c, device) for c in sorted(captions)}
        for encoder in family.all_text_encoders():
            encoder.to("cpu")  # not needed again until validation renders
    held_loss = heldout.HeldOutLoss(family, held, [_latents(family, cache, Path(instance_dir), i, heldout.transform(
        i, config.resolution), min_side=data.MIN_SIDE) for i in held], resolution=config.resolution,
        batch_size=config.batch_size, seed=config.seed) if held and main else None
    family.vae.to("cpu")
    released = None
    if config.offload_encoders:
        # Every latent (and, unless the text encoders train, every text embedding) is cached: the loop needs
        # neither the VAE nor the encoders again. Validation and samples render from the stored model.
        offloaded = [family.vae, *(family.all_text_encoders() if text_cache is not None else [])]
        released = memory.offload(offloaded, device)
        hooks.log(f"offload_encoders: {len(offloaded)} modules ({released / 2**20:.1f} MB) "
                  f"{'freed' if device.type == 'cpu' else 'moved to the CPU'}")
    if main:
        distributed.barrier(process)
    hooks.log(f"feature cache ready in {time.perf_counter() - started_cache:.1f}s "
              f"({cache.hits} reused, {cache.misses} computed)")

    # 4. LoRA layers, optimizer, schedule, under accelerate (DDP over the trained modules for several processes).
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu") if process is None \
        else distributed.accelerator(precision, device)
    # Memory modes (memory.py): the frozen base quantised before the LoRA wraps it, so that peft wraps the
    # quantised layers; blocks compiled, then checkpointed (the checkpoint recomputes the compiled forward).
    denoiser_bytes = memory.module_bytes(family.denoiser)
    quantized = memory.quantize_base(family.denoiser, config.base_quantization, compute_dtype=dtype)
    family.denoiser.to(device)
    modes: dict[str, Any] = {"denoiser_mb": round(memory.module_bytes(family.denoiser) / 2**20, 3),
                             **({"offloaded_mb": round(released / 2**20, 3)} if released is not None else {})}
    if quantized:
        hooks.log(f"base_quantization: {quantized} Linear layers in {config.base_quantization}, denoiser "
                  f"{denoiser_bytes / 2**20:.1f} -> {modes['denoiser_mb']:.1f} MB")
    torch.manual_seed(config.seed)  # LoRA initialisation depends only on the seed
    trained = family.add_lora(rank=config.rank, alpha=config.lora_alpha, text_encoder=config.train_text_encoder)
    compile_fallback = None
    if config.compile == "blocks":
        modes["compiled_blocks"], compile_fallback = memory.compile_blocks(family.denoiser)
    if config.checkpoint_interval:
        modes["checkpointed_blocks"] = memory.checkpoint_blocks(family.denoiser, config.checkpoint_interval)
    named = {f"{attr}.{name}": p for attr, module in trained.items() for name, p in module.named_parameters()
             if p.requires_grad}
    for parameter in named.values():
        parameter.data = parameter.data.float()  # trainable weights in fp32 whatever the compute dtype
    groups = [{"params": [p for n, p in named.items() if n.startswith(family.denoiser_attr + ".")], "lr": config.lr}]
    if config.train_text_encoder:
        groups.append({"params": [p for n, p in named.items() if not n.startswith(family.denoiser_attr + ".")],
                       "lr": config.text_encoder_lr or config.lr})
    optimizer, optimizer_name = _optimizer(config, groups, device)
    lr_scheduler = get_scheduler(config.lr_schedule, optimizer=optimizer, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=config.steps)

    def step_loss(step: int) -> torch.Tensor:
        """This rank's weighted loss at ``step`` (a single process: the whole batch)."""
        generator = _step_generator(config.seed, step, rank)
        total = torch.zeros((), device=device)
        for stream in streams:
            samples = distributed.share(stream.plan[step - 1], rank, config.batch_size)
            dropped = heldout.dropped_slots(config.seed, step, rank * config.batch_size, len(samples), config.caption_dropout) \
                if config.caption_dropout and stream is streams[0] else frozenset()  # instance captions only
            latents, cond, micro = _batch(family, cache, stream, samples, device, generator, text_cache, dropped)
            with accelerator.autocast():
                per_sample = family.loss(latents, cond, generator=generator, micro=micro, noise_offset=config.noise_offset,
                                         min_snr_gamma=config.min_snr_gamma, dtype=dtype)
            total = total + stream.weight * per_sample.mean()
        return total

    model: torch.nn.Module | None = None
    if process is None:
        prepared = accelerator.prepare(trained[family.denoiser_attr], optimizer, lr_scheduler)
        _, optimizer, lr_scheduler = prepared
    else:
        model, optimizer, lr_scheduler = accelerator.prepare(distributed.Objective(trained, step_loss), optimizer,
                                                             lr_scheduler)
    ema = {n: p.detach().clone() for n, p in named.items()} if config.ema_decay else None

    # 5. Resume: restore every piece of state, then check it belongs to this very run.
    meta = {"base_model_hash": weights.content_hash, "dataset_hash": dataset_hash, "family": weights.family,
            "config_fingerprint": config.fingerprint(), "method": config.method, "objective": family.objective,
            **({"heldout_images": [i.file for i in held]} if held else {})}
    start, losses, val_losses = 0, [], []
    if resume and existing is not None:
        for key in ("base_model_hash", "dataset_hash", "config_fingerprint"):
            if existing.state.get(key) != meta[key]:
                raise Conflict(f"resume: checkpoint {existing.path} was written with a different {key.removesuffix('_hash')}"
                               f" ({key}); start a new run in another folder")
        saved = ckpt.read_tensors(existing, "trainable.safetensors")
        with torch.no_grad():
            for name, parameter in named.items():
                parameter.copy_(saved[name])
        optimizer.load_state_dict(ckpt.read_torch(existing, "optimizer.pt"))
        lr_scheduler.load_state_dict(ckpt.read_torch(existing, "scheduler.pt"))
        if ema is not None:
            ema = ckpt.read_tensors(existing, "ema.safetensors")
        ckpt.restore_rng(ckpt.read_torch(existing, "rng.pt"))
        streams[0].plan = data.plan_from_json(existing.state["plan"])
        start, losses = existing.step, list(existing.state.get("losses", []))
        val_losses = [(int(s), float(v)) for s, v in existing.state.get("val_losses", [])]
        hooks.log(f"resuming from checkpoint at step {start}")
    if tracker is not None:
        tracker.start(config=config, meta={**meta, **modes, "optimizer": optimizer_name, "mixed_precision": precision,
                                           "images": len(images), "refused": len(refused), "distributed_type":
                                           accelerator.distributed_type.value, "effective_batch_size": config.batch_size * world},
                      resumed_from=start)

    def save_checkpoint(step: int) -> None:
        ckpt.save(checkpoints, step=step, trainable=named, optimizer=optimizer.state_dict(),
                  scheduler=lr_scheduler.state_dict(), ema=ema, keep=config.keep_checkpoints,
                  state={**meta, "config": config.params(), "plan": data.plan_to_json(streams[0].plan), "losses": losses,
                         "val_losses": val_losses})

    # 6. The loop. Several processes: each step starts with the ranks' stop vote (in hooks.check_cancelled),
    #    and the loss and the number of images trained are summed over ranks before the backward pass.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last = stop_after if stop_after is not None else config.steps
    step_times: list[float] = []
    loop_started = 0.0  # wall clock at the first step, and the loop's wall time: every per-step cost counted
    seen = config.batch_size * world
    family.denoiser.train()
    for step in range(start + 1, last + 1):
        loop_started = loop_started or time.time()
        hooks.check_cancelled()
        began = time.perf_counter()
        if model is None:
            total = step_loss(step)
            loss_value = float(total.detach())
            finite = bool(torch.isfinite(total))
        else:
            total = model(step)
            trained_here = distributed.share(streams[0].plan[step - 1], rank, config.batch_size)
            loss_sum, images_sum = distributed.sum_over_ranks([float(total.detach()), float(len(trained_here))], process)
            loss_value, seen = loss_sum / world, int(images_sum)
            finite = math.isfinite(loss_value)
        if not finite:
            kept = ckpt.latest_step(checkpoints)
            raise TrainingFailed(f"loss is NaN or infinite at step {step}; "
                                 + (f"last good checkpoint: step {kept}" if kept is not None else "no checkpoint was written"))
        accelerator.backward(total)
        accelerator.clip_grad_norm_(list(named.values()), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for name, parameter in named.items():
                    ema[name].mul_(config.ema_decay).add_(parameter.detach(), alpha=1 - config.ema_decay)
        losses.append(loss_value)
        elapsed = time.perf_counter() - began
        step_times.append(elapsed)
        metrics = {"loss": loss_value, "lr": float(lr_scheduler.get_last_lr()[0]), "step_time_s": elapsed,
                   "images_per_s": seen * len(streams) / elapsed if elapsed > 0 else 0.0,
                   "peak_memory_mb": _peak_memory_mb(device)}
        if held_loss is not None and (step == config.steps or (config.validation_every and step % config.validation_every == 0)):
            val_losses.append((step, held_loss(text=text_cache or (lambda c: family.encode(c, device)), dtype=dtype,
                                               autocast=accelerator.autocast, noise_offset=config.noise_offset,
                                               min_snr_gamma=config.min_snr_gamma)))
            metrics["val_loss"] = val_losses[-1][1]
        if tracker is not None:
            tracker.metrics(step, metrics)
        if step % config.checkpoint_every == 0 or step == last:
            if main:
                save_checkpoint(step)
            distributed.barrier(process)
        if config.validation_every and step % config.validation_every == 0 and step < config.steps:
            if main:
                shown = outputs.validation_images(family, named, ema=ema, weights=weights, config=config, out_dir=out_dir,
                                                  step=step, device=device, job_id=job_id, renderer=renderer)
                if tracker is not None:  # the released images of this step go to the run (tracking.VALIDATION_IMAGES)
                    tracker.metrics(step, {"validation_images": float(len(shown))})
            distributed.barrier(process)
        hooks.progress(step, config.steps, loss=loss_value, lr=metrics["lr"], **({"val_loss": val_losses[-1][1]} if val_losses else {}))
    stopped_early = last < config.steps
    if compile_fallback is not None and compile_fallback.reason is not None:
        hooks.log(f"compile: the blocks ran eagerly, torch.compile failed ({compile_fallback.reason})")
    loop_seconds = time.time() - loop_started if loop_started else 0.0
    seconds_per_step = sum(step_times) / len(step_times) if step_times else 0.0

    # 7. Outputs (rank 0): LoRA weights (EMA when on), a kohya-format export, the sample grid, a manifest.
    weights_path, kohya_path, grid_path = out_dir / WEIGHTS_NAME, None, None
    samples: list[Path] = []
    if main:
        final_weights = ema if ema is not None else None
        weights_path = outputs.write_lora(family, named, final_weights, out_dir)
        if not stopped_early:
            kohya_path = interop.export_kohya(weights_path, out_dir / "kohya" / "lora.safetensors", family=weights.family,
                                              alpha=config.lora_alpha)
            if config.samples:
                samples, grid_path = outputs.final_samples(weights, weights_path, config, out_dir, device, job_id,
                                                           renderer)
        outputs.write_manifest(out_dir, config, meta, images, refused, streams[1].images if len(streams) > 1 else [])
    result = TrainingResult(
        out_dir=out_dir, weights_path=weights_path, kohya_path=kohya_path, steps=last, final_loss=losses[-1] if losses else 0.0,
        losses=losses, resumed_from=start, stopped_early=stopped_early, base_model_hash=weights.content_hash,
        dataset_hash=dataset_hash, samples=samples, sample_grid=grid_path, seconds_per_step=seconds_per_step,
        step_times=step_times, first_step_at=loop_started, loop_seconds=loop_seconds, images_per_second=(seen * len(streams) / seconds_per_step) if seconds_per_step else 0.0,
        peak_memory_mb=_peak_memory_mb(device), optimizer=optimizer_name, mixed_precision=precision,
        processes=world, effective_batch_size=seen, val_losses=val_losses,
    )
    if main:
        (out_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
        if tracker is not None and not stopped_early:
            tracker.finish(result=result)
    distributed.barrier(process)  # the other ranks end once rank 0's outputs are written
    return result


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
