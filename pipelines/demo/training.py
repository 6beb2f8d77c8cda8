"""Train the demo base model from scratch: a tiny text-to-image latent diffusion model of digits.

Recipe, top to bottom:

1. config (``DemoTrainingConfig``; saved into the model folder so the run describes itself)
2. data: the fixed ``base`` split of scikit-learn's digits at 32×32 (``digits.load("base")``)
3. autoencoder: an ``AutoencoderKL`` from 32×32×3 pixels to 8×8×4 latents, trained on reconstruction
4. text encoder + UNet: a 2-layer CLIP text encoder (real CLIP tokenizer) and a small
   ``UNet2DConditionModel``, trained together on the noise-prediction loss over frozen latents;
   10% of prompts are dropped to "" so classifier-free guidance works at sampling time
5. save: a plain ``StableDiffusionPipeline`` folder (safetensors) that
   ``DiffusionPipeline.from_pretrained`` loads, with the EMA weights of UNet and text encoder

Everything is seeded; on one machine and torch version the same config gives the same weights.
The machine this runs on is small and shared, so the models are small and the run is short.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from latentops.pipelines import tokenizers
from latentops.pipelines.demo import digits

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float], None]


@dataclass
class DemoTrainingConfig:
    """Everything that determines the demo model. Defaults are the committed model's."""

    seed: int = 1234
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 1200
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    prompt_dropout: float = 0.1
    ema_decay: float = 0.995
    text_hidden: int = 32
    text_layers: int = 2
    unet_channels: tuple[int, int] = (32, 64)
    train_timesteps: int = 1000
    # One thread: on a shared, busy machine two threads wait on each other and run ~10x slower.
    threads: int = 1
    extra: dict[str, str] = field(default_factory=dict)


# 1. models ------------------------------------------------------------------------------------


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=digits.IMAGE_SIZE,
        # Attention at 8×8 buys nothing for strokes this simple and doubles the cost of a step.
        mid_block_add_attention=False,
    )


def build_text_encoder(config: DemoTrainingConfig) -> CLIPTextModel:
    vocab, _ = tokenizers.clip_vocabulary()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=config.text_hidden,
            intermediate_size=config.text_hidden * 4,
            num_hidden_layers=config.text_layers,
            num_attention_heads=4,
            max_position_embeddings=tokenizers.CLIP_MAX_LENGTH,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )


def build_unet(config: DemoTrainingConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=digits.IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def noise_scheduler(config: DemoTrainingConfig) -> DDPMScheduler:
    # The cosine schedule keeps enough signal at small resolutions, where linear schedules destroy
    # an 8×8 latent within the first few hundred steps. It drives the signal to ~0 at the last
    # step, where predicting the noise makes the implied clean latent explode (blobby, saturated
    # samples), so the UNet predicts velocity instead.
    return DDPMScheduler(
        num_train_timesteps=config.train_timesteps, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
    )


# 2. training stages ---------------------------------------------------------------------------


def _lr_at(step: int, config: DemoTrainingConfig, total: int, peak: float) -> float:
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return peak * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def train_vae(data: torch.Tensor, config: DemoTrainingConfig, progress: Progress | None) -> AutoencoderKL:
    generator = torch.Generator().manual_seed(config.seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(config.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config, config.vae_steps, config.vae_lr)
        batch = data[torch.randint(0, len(data), (config.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, batch) + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress and (step % 100 == 0 or step == config.vae_steps - 1):
            progress("vae", step + 1, config.vae_steps, loss.item())
    vae.eval()
    return vae


@torch.no_grad()
def _encode_all(vae: AutoencoderKL, data: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in data.split(128)])


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters(), strict=True):
            target.lerp_(source, 1.0 - decay)


def train_denoiser(
    latents: torch.Tensor, labels: torch.Tensor, config: DemoTrainingConfig, progress: Progress | None
) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    generator = torch.Generator().manual_seed(config.seed + 1)
    torch.manual_seed(config.seed + 1)  # parameter init
    text_encoder, unet = build_text_encoder(config), build_unet(config)
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    scheduler = noise_scheduler(config)
    tokenizer = tokenizers.build_clip_tokenizer()
    # Token ids for the ten prompts plus the empty prompt (index 10) used for guidance.
    prompt_ids = tokenizer(
        [*digits.PROMPTS, ""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    parameters = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    text_encoder.train()
    unet.train()
    for step in range(config.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config, config.unet_steps, config.unet_lr)
        pick = torch.randint(0, len(latents), (config.unet_batch,), generator=generator)
        clean, label = latents[pick], labels[pick].clone()
        label[torch.rand(config.unet_batch, generator=generator) < config.prompt_dropout] = 10
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, config.train_timesteps, (config.unet_batch,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        # Only eleven distinct prompts exist: encode each once per step, then index by label.
        context = text_encoder(prompt_ids)[0][label]
        target = scheduler.get_velocity(clean, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        _ema_update(ema_text, text_encoder, config.ema_decay)
        _ema_update(ema_unet, unet, config.ema_decay)
        if progress and (step % 100 == 0 or step == config.unet_steps - 1):
            progress("unet", step + 1, config.unet_steps, loss.item())
    return ema_text, ema_unet


# 3. the whole recipe --------------------------------------------------------------------------


def train(config: DemoTrainingConfig, out: Path, progress: Progress | None = None) -> dict[str, float]:
    """Train the demo model into the diffusers folder ``out``; returns timings in seconds."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()

    # 2. data
    base = digits.load("base")
    labels = torch.from_numpy(base.labels)

    # 3. autoencoder, then the latent scale that makes latents unit-variance for the denoiser
    vae = train_vae(base.images, config, progress)
    vae_done = time.perf_counter()
    latents = _encode_all(vae, base.images)
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)

    # 4. text encoder + UNet on scaled latents
    text_encoder, unet = train_denoiser(latents * scaling_factor, labels, config, progress)
    finished = time.perf_counter()

    # 5. save a plain StableDiffusionPipeline folder
    sampler = DPMSolverMultistepScheduler.from_config(noise_scheduler(config).config, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizers.build_clip_tokenizer(), unet=unet,
        scheduler=sampler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(out), safe_serialization=True)
    timings = {
        "vae_seconds": round(vae_done - started, 1),
        "denoiser_seconds": round(finished - vae_done, 1),
        "total_seconds": round(finished - started, 1),
    }
    (out / "training.json").write_text(
        json.dumps({"config": asdict(config), "timings": timings, "scaling_factor": scaling_factor}, indent=2) + "\n"
    )
    logger.info("demo model trained in %.0fs into %s", timings["total_seconds"], out)
    return timings
