"""The DreamBooth-LoRA recipe: teach a subject with a rare token, keep the class with prior images.

DreamBooth (Ruiz et al. 2022) fine-tunes on a handful of subject images under an instance prompt
("a photo of sks dog"). Alone, that drifts the whole class toward the subject ("a dog" starts to
look like *this* dog). Prior preservation counters it: images the *base* model makes for the class
prompt are trained beside the subject images, and their loss, weighted by ``prior_loss_weight``,
keeps what the model already knew.

Steps: 1. class images: reuse valid ones in the class folder, generate the missing ones with the
base model through the governed renderer the caller gave (:func:`validation.render`), seeded so a
rerun makes the same images; 2. the LoRA loop of :mod:`lora` with a prior batch beside every instance
batch. Everything else (caching, checkpoints, exact resume, outputs) is the LoRA recipe's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import data, lora, validation
from latentops.pipelines.finetune.checkpoint import TrainingFailed
from latentops.pipelines.finetune.config import DreamBoothConfig

logger = logging.getLogger(__name__)
CLASS_BATCH = 8


def ensure_class_images(config: DreamBoothConfig, *, weights: WeightsRef, class_dir: Path, device: str,
                        hooks: lora.Hooks, job_id: int | None = None,
                        renderer: validation.Renderer | None = None) -> int:
    """Fill ``class_dir`` up to ``num_class_images`` valid images, rendered by ``renderer`` (the
    governed path); returns how many were generated."""
    class_dir.mkdir(parents=True, exist_ok=True)
    existing, _ = data.load_instances(class_dir, instance_prompt=config.class_prompt, min_side=8)
    missing = config.num_class_images - len(existing)
    generated = 0
    while generated < missing:
        count = min(CLASS_BATCH, missing - generated)
        index = len(existing) + generated
        images = validation.render(validation.RenderRequest(
            weights=weights, prompts=[config.class_prompt], images_per_prompt=count, seed=config.seed + 7919 * (index + 1),
            steps=config.class_generation_steps, purpose="class_images", job_id=job_id),
            renderer=renderer, device=device)
        if not images:
            # Screening quarantined the whole batch: the class prompt does not render releasable images.
            raise TrainingFailed(f"class images: all {count} images rendered for {config.class_prompt!r} were "
                                 "quarantined by screening; use another class prompt or give class images")
        for offset, image in enumerate(images):
            image.save(class_dir / f"class-{index + offset:05d}.png")
        generated += len(images)  # quarantined images are left out; the next batch makes up for them
        hooks.log(f"class images: {len(existing) + generated}/{config.num_class_images}")
    return generated


def train(config: DreamBoothConfig, *, weights: WeightsRef, instance_dir: Path, out_dir: Path,
          class_dir: Path | None = None, hooks: lora.Hooks | None = None,
          renderer: validation.Renderer | None = None, **options: Any) -> lora.TrainingResult:
    """DreamBooth-LoRA: class images first, then the LoRA loop with prior preservation. ``renderer``
    (the governed path) renders the class images, validation images and final samples."""
    hooks = hooks or lora.QuietHooks()
    device = options.get("device") or lora._device()
    class_dir = Path(class_dir) if class_dir is not None else Path(out_dir) / "class_images"
    # 1. Class images from the base model (before any LoRA exists, so they show the untouched prior).
    ensure_class_images(config, weights=weights, class_dir=class_dir, device=device.type, hooks=hooks,
                        job_id=options.get("job_id"), renderer=renderer)
    # 2. The LoRA loop, with the prior batch.
    prior = lora.PriorData(class_prompt=config.class_prompt, folder=class_dir, weight=config.prior_loss_weight)
    return lora.train(config, weights=weights, instance_dir=instance_dir, out_dir=out_dir, hooks=hooks, prior=prior,
                      renderer=renderer, **options)


def run(config: lora.LoraConfig, *, weights: WeightsRef, instance_dir: Path, out_dir: Path, class_dir: Path | None = None,
        renderer: validation.Renderer | None = None, **options: Any) -> lora.TrainingResult:
    """Dispatch on the config's method: the entry point the CLI and the job handler call, with the
    governed ``renderer`` (without one, a run fails as soon as it has an image to render)."""
    if isinstance(config, DreamBoothConfig):
        return train(config, weights=weights, instance_dir=instance_dir, out_dir=out_dir, class_dir=class_dir,
                     renderer=renderer, **options)
    if class_dir is not None:
        logger.warning("class_dir given for a plain LoRA run; it is not used")
    return lora.train(config, weights=weights, instance_dir=instance_dir, out_dir=out_dir, renderer=renderer, **options)
