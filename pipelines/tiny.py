"""Tiny random-init pipelines for every supported family, built offline.

Each builder returns a real diffusers pipeline of the family's architecture with toy widths (a few
MB on disk), saved in diffusers format so plain ``DiffusionPipeline.from_pretrained(DIR)`` loads it.
Tests and benchmarks use these instead of downloading anything. Text encoders use the real CLIP
tokenizer (:mod:`latentops.pipelines.tokenizers`); SD3 and Flux also get a small T5-style one.

``sd2`` is the 768-v model in miniature (v-prediction, OpenCLIP-style text encoder, a native size
1.5x SD1's), so the one difference that changes training, the objective, is exercised offline.

Weights are random but seeded, so two calls with the same seed write identical weights and the
model store sees the same content hash.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from latentops.pipelines import tokenizers

logger = logging.getLogger(__name__)

TinyFamily = Literal["sd1", "sd2", "sdxl", "sd3", "flux"]
TINY_FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux")
TEXT_HIDDEN = 16


def _clip_config(hidden: int = TEXT_HIDDEN, projection: int | None = None, **extra: Any) -> CLIPTextConfig:
    vocab, _ = tokenizers.clip_vocabulary()
    if projection:
        extra["projection_dim"] = projection
    settings: dict[str, Any] = {"pad_token_id": vocab["<|endoftext|>"], **extra}
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizers.CLIP_MAX_LENGTH,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        **settings,
    )


def _t5_encoder(vocab_size: int, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )


def _vae(latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, mid_block_add_attention=False, **extra,
    )


def build_sd1() -> StableDiffusionPipeline:
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=8,
    )
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config()), tokenizer=tokenizers.build_clip_tokenizer(),
        unet=unet, scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sd2() -> StableDiffusionPipeline:
    """SD 2.x-v at toy widths: what tells it from SD1 is kept, the sizes are not.

    * The text encoder stands for OpenCLIP ViT-H: a ``CLIPTextModel`` with exact GELU (SD1's CLIP
      uses quick-GELU), twice SD1's width (1024 vs 768 in the real models). SD2 conditions on the
      penultimate layer followed by the final layer norm; diffusers' SD2 weights store the encoder
      without its last layer, so ``last_hidden_state`` (what ``encode_prompt`` returns) is exactly
      that. This one is stored the same way: its layers are the ones SD2 uses.
    * The tokenizer pads with ``!`` (id 0), as OpenCLIP and SD2's tokenizer do; SD1 pads with
      ``<|endoftext|>``. The ids of the text itself are the same BPE ids.
    * The UNet gives ``attention_head_dim`` per block (read by diffusers as heads per block, a
      constant head width as in SD2) and projects into attention with linear layers.
    * The scheduler predicts velocity (``v_prediction``), as the 768-v model does.
    * ``sample_size`` 24 with the VAE's 2x scale makes 48 px natively, 1.5x SD1's 32, as 768 is to 512.
    """
    text_hidden = TEXT_HIDDEN * 2
    unet = UNet2DConditionModel(
        sample_size=24, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_hidden, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
    )
    tokenizer = tokenizers.build_clip_tokenizer()
    tokenizer.pad_token = "!"
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       prediction_type="v_prediction")
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config(text_hidden, hidden_act="gelu", pad_token_id=0)),
        tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sdxl() -> StableDiffusionXLPipeline:
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 1),
        # SDXL conditions on the pooled text_encoder_2 output plus six micro-conditioning numbers.
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN,
        cross_attention_dim=TEXT_HIDDEN * 2, norm_num_groups=8,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=TEXT_HIDDEN)),
        tokenizer=tokenizers.build_clip_tokenizer(), tokenizer_2=tokenizers.build_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def build_sd3() -> StableDiffusion3Pipeline:
    t5_tokenizer = tokenizers.build_t5_tokenizer()
    joint = TEXT_HIDDEN * 2  # the two CLIP hidden states are concatenated, then padded to T5's width
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=joint, caption_projection_dim=16, pooled_projection_dim=TEXT_HIDDEN * 2, out_channels=4,
        pos_embed_max_size=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(shift_factor=0.0),
        text_encoder=CLIPTextModelWithProjection(_clip_config(projection=TEXT_HIDDEN)),
        tokenizer=tokenizers.build_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=TEXT_HIDDEN)),
        tokenizer_2=tokenizers.build_clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(t5_tokenizer), joint), tokenizer_3=t5_tokenizer,
    )


def build_flux() -> FluxPipeline:
    t5_tokenizer = tokenizers.build_t5_tokenizer()
    joint = 32
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=joint, pooled_projection_dim=TEXT_HIDDEN,
        axes_dims_rope=(4, 4, 8),
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(shift_factor=0.0),
        text_encoder=CLIPTextModel(_clip_config()), tokenizer=tokenizers.build_clip_tokenizer(),
        text_encoder_2=_t5_encoder(len(t5_tokenizer), joint), tokenizer_2=t5_tokenizer, transformer=transformer,
    )


_BUILDERS = {"sd1": build_sd1, "sd2": build_sd2, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}


def build(family: str, *, seed: int = 0) -> DiffusionPipeline:
    """A tiny random-init pipeline of ``family``; the same seed gives the same weights."""
    if family not in _BUILDERS:
        raise ValueError(f"family: {family!r} has no tiny model; choose one of {', '.join(TINY_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = _BUILDERS[family]()
    return pipeline


def create(family: str, out: Path, *, seed: int = 0) -> Path:
    """Write a tiny ``family`` pipeline in diffusers format (safetensors) to ``out``."""
    pipeline = build(family, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(out), safe_serialization=True)
    logger.info("tiny %s pipeline written to %s", family, out)
    return out
