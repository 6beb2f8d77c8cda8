"""What differs between model families when fine-tuning: prompts, latents, objective, LoRA files.

Everything else in a recipe is family-agnostic. A :class:`Family` knows, for one loaded pipeline,

* which modules carry LoRA (the UNet or transformer attention projections; CLIP text encoders
  when ``train_text_encoder`` is set; T5 encoders never, they are too large to adapt usefully);
* how a prompt becomes the tensors the denoiser is conditioned on (``encode``), per prompt, so
  they can be cached;
* how pixels become latents (distribution parameters from the VAE, scaled and shifted the way the
  family's pipeline un-does them);
* the training objective: noise or v-prediction on a DDPM schedule for ``sd1``/``sd2``/``sdxl``
  (with optional min-SNR-gamma weighting), rectified flow matching for ``sd3`` and ``flux``
  (velocity ``noise - latents`` at logit-normal sampled sigmas, shifted like the scheduler). Which
  of noise or velocity is the one the model was trained for, read from its scheduler config
  (``prediction_type``): SD 2.x-v (768 px) predicts velocity, SD 2.x base (512 px) and SD1 noise.
  Training for the other would teach the model a target its sampler misreads;
* how to write ``pytorch_lora_weights.safetensors`` with the pipeline class's own
  ``save_lora_weights`` so plain diffusers loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentops.core.errors import InvalidInput
from latentops.pipelines.finetune import adapters, convs

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
FLOW_FAMILIES = frozenset({"sd3", "flux"})
TEXT_LENGTH = {"sd3": 77, "flux": 128}  # T5 sequence length used for training prompts


@dataclass
class Conditioning:
    """Per-prompt conditioning tensors (no batch dimension) as cached on disk."""

    tensors: dict[str, torch.Tensor]


class Family:
    """Family-specific steps of fine-tuning around one loaded pipeline."""

    def __init__(self, family: str, pipeline: Any) -> None:
        self.name = family
        self.pipeline = pipeline
        self.flow = family in FLOW_FAMILIES
        self.denoiser_attr = "transformer" if self.flow else "unet"
        self.vae = pipeline.vae
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        if self.flow:
            from diffusers import FlowMatchEulerDiscreteScheduler

            self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        else:
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

    @property
    def objective(self) -> str:
        """What the denoiser learns to predict: ``epsilon``, ``v_prediction`` or ``flow_matching``."""
        return "flow_matching" if self.flow else str(self.scheduler.config.prediction_type)

    # -- modules ------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> Any:  # the pipeline's UNet or transformer (a diffusers model)
        return getattr(self.pipeline, self.denoiser_attr)

    def text_encoder_names(self) -> list[str]:
        """CLIP encoders that may carry LoRA, by pipeline attribute."""
        names = {"sd1": ["text_encoder"], "sd2": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"],
                 "sd3": ["text_encoder", "text_encoder_2"], "flux": ["text_encoder"]}[self.name]
        return [n for n in names if getattr(self.pipeline, n, None) is not None]

    def all_text_encoders(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [getattr(self.pipeline, n) for n in names if getattr(self.pipeline, n, None) is not None]

    def add_lora(self, *, rank: int, alpha: float, text_encoder: bool) -> dict[str, torch.nn.Module]:
        """Attach fresh LoRA layers; returns the modules that now train, by pipeline attribute."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        self.denoiser.add_adapter(PeftLoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                 target_modules=UNET_TARGETS))
        trained = {self.denoiser_attr: self.denoiser}
        if text_encoder:
            for name in self.text_encoder_names():
                module = getattr(self.pipeline, name)
                # peft directly: transformers' own add_adapter wants a newer peft than diffusers supports.
                inject_adapter_in_model(PeftLoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                       target_modules=CLIP_TARGETS), module)
                trained[name] = module
        for module in trained.values():
            adapters.use_fused_forward(module)
        convs.use_packed_weights(self.denoiser)  # its convolutions stay frozen while the LoRA trains
        return trained

    # -- text --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_cached(self, prompt: str, device: torch.device) -> Conditioning:
        return Conditioning({k: v[0].detach().float().cpu() for k, v in self.encode([prompt], device).items()})

    def encode(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Conditioning for a batch of prompts (gradients flow when text encoders carry LoRA)."""
        pipe = self.pipeline
        if self.name in ("sd1", "sd2"):
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return {"prompt_embeds": embeds}
        if self.name == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
            return {"prompt_embeds": embeds, "pooled": pooled}
        if self.name == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=TEXT_LENGTH["sd3"])
            return {"prompt_embeds": embeds, "pooled": pooled}
        embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, max_sequence_length=TEXT_LENGTH["flux"])
        return {"prompt_embeds": embeds, "pooled": pooled}

    # -- latents -----------------------------------------------------------------------------------
    @torch.no_grad()
    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) for pixels in [-1, 1], shape (B, 3, H, W)."""
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def to_model_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A latent sampled from the posterior, scaled (and shifted) as the denoiser expects."""
        sample = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (sample - self.shift) * self.scaling

    # -- objective ---------------------------------------------------------------------------------
    def loss(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], *, generator: torch.Generator,
             micro: list[tuple[int, int, int, int, int, int]], noise_offset: float,
             min_snr_gamma: float | None, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample loss (shape (B,)) for model-space ``latents`` on the denoiser's device."""
        # Where the weights are. (diffusers' ``ModelMixin.device`` walks every submodule looking for group
        # offloading, which training never uses: 9 ms per call on SD1.5, 5% of a small model's CPU step.)
        device = next(self.denoiser.parameters()).device
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator)
        if noise_offset:
            # Offset noise lets the model learn overall brightness (very dark/bright images).
            noise = noise + noise_offset * torch.randn((batch, latents.shape[1], 1, 1), generator=generator)
        if self.flow:
            u = torch.sigmoid(torch.randn((batch,), generator=generator))  # logit-normal: favours middle sigmas
            shift = float(getattr(self.scheduler.config, "shift", 1.0) or 1.0)
            sigmas = shift * u / (1 + (shift - 1) * u)
            latents, noise, sigmas = latents.to(device), noise.to(device), sigmas.to(device)
            sigma = sigmas.view(-1, 1, 1, 1)
            noisy = (1.0 - sigma) * latents + sigma * noise
            prediction = self._flow_forward(noisy.to(dtype), sigmas, cond, dtype)
            target = noise - latents
            return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        steps = int(self.scheduler.config.num_train_timesteps)
        timesteps = torch.randint(0, steps, (batch,), generator=generator)
        latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        extra: dict[str, Any] = {}
        if self.name == "sdxl":
            time_ids = torch.tensor(micro, dtype=dtype, device=device)
            extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"].to(device, dtype), "time_ids": time_ids}
        prediction = self.denoiser(noisy.to(dtype), timesteps, cond["prompt_embeds"].to(device, dtype), **extra).sample
        kind = self.objective
        target = noise if kind == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if min_snr_gamma is not None:
            # Min-SNR-gamma (Hang et al. 2023): down-weight easy low-noise steps so they stop dominating.
            alphas = self.scheduler.alphas_cumprod.to(device)[timesteps]
            snr = alphas / (1 - alphas)
            clipped = torch.clamp(snr, max=min_snr_gamma)
            weight = clipped / snr if kind == "epsilon" else clipped / (snr + 1)
            per_sample = per_sample * weight
        return per_sample

    def _flow_forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, torch.Tensor],
                      dtype: torch.dtype) -> torch.Tensor:
        device = noisy.device
        embeds, pooled = cond["prompt_embeds"].to(device, dtype), cond["pooled"].to(device, dtype)
        if self.name == "sd3":
            return self.denoiser(hidden_states=noisy, timestep=sigmas * 1000.0, encoder_hidden_states=embeds,
                                 pooled_projections=pooled, return_dict=False)[0]
        pipe = self.pipeline
        b, c, h, w = noisy.shape
        packed = pipe._pack_latents(noisy, b, c, h, w)
        image_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)
        guidance = torch.ones((b,), device=device, dtype=dtype) if self.denoiser.config.guidance_embeds else None
        out = self.denoiser(hidden_states=packed, timestep=sigmas.to(dtype), guidance=guidance, pooled_projections=pooled,
                            encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        return pipe._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    def check(self, *, min_snr_gamma: float | None, resolution: int) -> None:
        """Settings this family cannot honour, refused before any work starts."""
        if self.objective not in ("epsilon", "v_prediction", "flow_matching"):
            raise InvalidInput(f"model: scheduler prediction_type {self.objective!r} cannot be trained; "
                               "this recipe trains epsilon or v_prediction models")
        if self.flow and min_snr_gamma is not None:
            raise InvalidInput(f"min_snr_gamma: applies to noise-prediction models; {self.name} trains with flow matching")
        limit = getattr(self.denoiser.config, "pos_embed_max_size", None)
        if limit:
            most = int(limit) * self.vae_scale * int(self.denoiser.config.patch_size)
            if resolution > most:
                raise InvalidInput(f"resolution: this {self.name} model handles at most {most} px, got {resolution}")

    # -- LoRA files --------------------------------------------------------------------------------
    def save_lora(self, directory: Path, layers: dict[str, dict[str, torch.Tensor]]) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` in diffusers' format from peft state dicts."""
        from diffusers.utils import convert_state_dict_to_diffusers

        pipe_class = type(self.pipeline)
        kwargs: dict[str, Any] = {}
        for attr, state in layers.items():
            state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            key = f"{attr}_lora_layers"
            kwargs[key] = convert_state_dict_to_diffusers(state) if attr != "transformer" else state
            config = getattr(getattr(self.pipeline, attr, None), "peft_config", {}).get("default")
            if config is not None:  # carries alpha: without it diffusers loads at scale 1, not alpha / rank
                kwargs[f"{attr}_lora_adapter_metadata"] = config.to_dict()
        directory.mkdir(parents=True, exist_ok=True)
        pipe_class.save_lora_weights(str(directory), safe_serialization=True, **kwargs)
        return directory / "pytorch_lora_weights.safetensors"


def micro_conditioning(original: tuple[int, int], crop: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size numbers: original (h, w), crop top-left (y, x), target (h, w)."""
    return (original[1], original[0], crop[1], crop[0], bucket[1], bucket[0])


def lr_lambda_cosine(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return factor
