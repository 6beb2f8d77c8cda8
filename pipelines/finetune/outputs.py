"""What a LoRA run writes besides its checkpoints: validation images, the LoRA, samples, the manifest.

Rank 0 alone calls these. Every ``validation_every`` steps the validation prompts are rendered with
the LoRA as it stands (saved beside the images as an adapter); at the end the LoRA is written in
diffusers' layout (the EMA weights when the run keeps them), two samples per prompt and their grid
are rendered with it, and ``manifest.json`` records what the run trained on. Images are rendered
only by the governed renderer the run was given (:func:`validation.render`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from latentops.pipelines.engine import AdapterRef, WeightsRef
from latentops.pipelines.finetune import data, interop, validation
from latentops.pipelines.finetune.config import LoraConfig
from latentops.pipelines.finetune.families import Family

logger = logging.getLogger(__name__)


def lora_layers(named: dict[str, torch.Tensor], override: dict[str, torch.Tensor] | None = None
                ) -> dict[str, dict[str, torch.Tensor]]:
    """Trainable tensors grouped by pipeline attribute, as peft state dicts (adapter name dropped)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named.items():
        attr, key = name.split(".", 1)
        value = (override or {}).get(name, tensor)
        layers.setdefault(attr, {})[key.replace(".default", "")] = value.detach().float().cpu()
    return layers


def write_lora(family: Family, named: dict[str, torch.Tensor], override: dict[str, torch.Tensor] | None,
               out_dir: Path) -> Path:
    """The LoRA (``override``: the EMA weights, when the run keeps them) in diffusers' layout in ``out_dir``."""
    return family.save_lora(out_dir, lora_layers(named, override))


def validation_images(family: Family, named: dict[str, torch.Tensor], *, ema: dict[str, torch.Tensor] | None,
                      weights: WeightsRef, config: LoraConfig, out_dir: Path, step: int, device: torch.device,
                      job_id: int | None, renderer: validation.Renderer | None) -> list[Path]:
    """The validation prompts rendered with the LoRA as it stands at ``step`` (saved beside them)."""
    folder = out_dir / "validation" / f"step-{step:06d}"
    path = family.save_lora(folder / "adapter", lora_layers(named, ema))
    prompts = list(config.validation_prompts or (config.instance_prompt,))
    images = validation.render(validation.RenderRequest(
        weights=weights, prompts=prompts, seed=config.sample_seed, steps=config.validation_steps, job_id=job_id,
        adapter=AdapterRef(content_hash=interop.file_sha256(path), path=path.parent)),
        renderer=renderer, device=device.type)
    return validation.save_images(images, folder, "sample")


def final_samples(weights: WeightsRef, weights_path: Path, config: LoraConfig, out_dir: Path, device: torch.device,
                  job_id: int | None, renderer: validation.Renderer | None) -> tuple[list[Path], Path | None]:
    """Two samples per validation prompt with the final LoRA, and their grid (none when screening released none)."""
    prompts = list(config.validation_prompts or (config.instance_prompt,))
    images: Sequence[Image.Image] = validation.render(validation.RenderRequest(
        weights=weights, prompts=prompts, seed=config.sample_seed, steps=config.validation_steps, images_per_prompt=2,
        purpose="samples", job_id=job_id,
        adapter=AdapterRef(content_hash=interop.file_sha256(weights_path), path=weights_path.parent)),
        renderer=renderer, device=device.type)
    folder = out_dir / "samples"
    paths = validation.save_images(list(images), folder, "sample")
    if not images:
        logger.warning("no final sample was released by screening; the run has no sample grid")
        return paths, None
    grid_path = folder / "grid.png"
    validation.grid(list(images), columns=2).save(grid_path)
    return paths, grid_path


def write_manifest(out_dir: Path, config: LoraConfig, meta: dict[str, Any], images: list[data.InstanceImage],
                   refused: list[data.FileReport], class_images: list[data.InstanceImage]) -> None:
    """``manifest.json`` (the run's hashes, config and every image it trained on or refused) and ``config.json``."""
    manifest = {
        **meta,
        "config": config.params(),
        "instance_images": [asdict(i) for i in images],
        "refused": [r.to_json() for r in refused],
        "class_images": [asdict(i) for i in class_images],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out_dir / "config.json").write_text(json.dumps(config.params(), indent=2, sort_keys=True))
