"""Caption dropout and the held-out validation loss of a LoRA run.

**Caption dropout** (``caption_dropout``, a probability): an instance sample trains on the empty
prompt's conditioning instead of its caption, so the LoRA also learns the subject unconditioned
(what classifier-free guidance subtracts). Whether a sample is dropped is a pure function of the
seed, the step and the sample's slot in the global batch (:func:`caption_dropped`), never of an
RNG stream: a resumed run drops exactly the captions an uninterrupted one drops, and every process
of a multi-process run agrees without exchanging anything. Class images (DreamBooth's prior batch)
keep their prompt: their job is to keep the class prompt's mapping.

**Held-out split** (``validation_split``): a fraction below 1 holds out ``floor(fraction * n)``
of the ``n`` instance images (none for a set too small to spare one: 0.1 of 5 images is 0), a
whole number ``k >= 1`` holds out ``k``. The images are drawn by the seed from the images in file
order (:func:`split`), so the same config and data give the same split on every attempt and resume
(both are fixed by the checkpoint's fingerprint and dataset hash). Held-out images never enter the
batch plan.

**Validation loss** (:class:`HeldOutLoss`): the training objective on the held-out images, without
gradients, each image centre-cropped in its bucket, unflipped, and drawn ``DRAWS`` times with noises,
timesteps and latent samples from one generator seeded afresh at every evaluation. Every evaluation
therefore sees the same inputs and differs only by the weights, so the values are comparable from
one evaluation to the next (and equal for the same seed run twice).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from latentops.core.errors import InvalidInput
from latentops.pipelines.finetune import data
from latentops.pipelines.finetune.families import Family, micro_conditioning

DRAWS = 4  # noise/timestep draws per held-out image and evaluation: a steadier mean for a few images
_SPLIT_SALT = 0x5EED_0FF
_VALIDATION_SALT = 0x7A11_D47E
EMPTY_PROMPT = ""


# --- caption dropout ------------------------------------------------------------------------------


def caption_dropped(seed: int, step: int, slot: int, probability: float) -> bool:
    """Whether the sample in ``slot`` of the global batch of ``step`` trains on the empty prompt.

    A hash of (seed, step, slot) read as a uniform number in [0, 1): the same answer on every
    attempt, resume and process, whatever RNG state the run is in.
    """
    if probability <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{step}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < probability


def dropped_slots(seed: int, step: int, first_slot: int, count: int, probability: float) -> frozenset[int]:
    """Positions (0 to ``count - 1``) of this rank's samples, whose global slots start at ``first_slot``,
    that train on the empty prompt at ``step``."""
    return frozenset(i for i in range(count) if caption_dropped(seed, step, first_slot + i, probability))


# --- the held-out split ---------------------------------------------------------------------------


def held_out_count(total: int, validation_split: float) -> int:
    """How many of ``total`` images ``validation_split`` holds out (a fraction below 1, or a count)."""
    if validation_split <= 0:
        return 0
    if validation_split < 1:
        return math.floor(validation_split * total + 1e-9)
    return int(validation_split)


def split(images: list[data.InstanceImage], validation_split: float, *, seed: int
          ) -> tuple[list[data.InstanceImage], list[data.InstanceImage]]:
    """(training images, held-out images), both in file order; ``InvalidInput`` when none would train."""
    count = held_out_count(len(images), validation_split)
    if count == 0:
        return images, []
    if count >= len(images):
        shown = int(validation_split) if validation_split >= 1 else validation_split
        raise InvalidInput(f"validation_split: {shown} holds out {count} of the {len(images)} instance image(s), "
                           "leaving none to train on")
    chosen = set(random.Random(seed ^ _SPLIT_SALT).sample(range(len(images)), count))
    return ([image for i, image in enumerate(images) if i not in chosen],
            [image for i, image in enumerate(images) if i in chosen])


def transform(image: data.InstanceImage, resolution: int) -> data.Transform:
    """How a held-out image is cut for the validation loss: centred in its bucket, never flipped."""
    return data.choose_transform(image, resolution=resolution, crop="center", flip=False, rng=random.Random(0))


# --- the validation loss --------------------------------------------------------------------------


class HeldOutLoss:
    """The loss on the held-out images with fixed draws (see the module docstring)."""

    def __init__(self, family: Family, images: list[data.InstanceImage], latents: list[dict[str, torch.Tensor]], *,
                 resolution: int, batch_size: int, seed: int) -> None:
        self.family = family
        self.seed = seed
        # (image, its latent posterior, its transform) for every draw, grouped so each batch has one shape.
        items = [(image, entry, transform(image, resolution)) for image, entry in zip(images, latents, strict=True)]
        items.sort(key=lambda item: item[2].bucket)
        drawn = [item for item in items for _ in range(DRAWS)]
        # Without gradients a forward pass keeps no activations, so an evaluation batch holds all the
        # draws of a training batch's worth of images: a quarter of the calls, in the training's memory.
        per_batch = batch_size * DRAWS
        self.batches: list[list[tuple[data.InstanceImage, dict[str, torch.Tensor], data.Transform]]] = []
        for item in drawn:
            last = self.batches[-1] if self.batches else None
            if last is not None and len(last) < per_batch and last[0][2].bucket == item[2].bucket:
                last.append(item)
            else:
                self.batches.append([item])

    @torch.no_grad()
    def __call__(self, *, text: dict[str, dict[str, torch.Tensor]] | Callable[[list[str]], dict[str, torch.Tensor]],
                 autocast: Callable[[], AbstractContextManager[Any]], noise_offset: float, min_snr_gamma: float | None,
                 dtype: torch.dtype) -> float:
        """The mean loss over every held-out image and draw. ``text`` is the run's cached conditioning
        per caption, or the encoder (when the text encoders train, their LoRA changes it)."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + _VALIDATION_SALT) % (2**63 - 1))
        total, count = 0.0, 0
        for batch in self.batches:
            mean = torch.stack([entry["mean"] for _, entry, _ in batch])
            std = torch.stack([entry["std"] for _, entry, _ in batch])
            latents = self.family.to_model_latents(mean, std, generator)
            captions = [image.caption for image, _, _ in batch]
            if isinstance(text, dict):
                cond = {k: torch.stack([text[c][k] for c in captions]) for k in text[captions[0]]}
            else:
                cond = text(captions)
            micro = [micro_conditioning((image.width, image.height), (t.crop_x, t.crop_y), t.bucket)
                     for image, _, t in batch]
            with autocast():
                per_sample = self.family.loss(latents, cond, generator=generator, micro=micro, noise_offset=noise_offset,
                                              min_snr_gamma=min_snr_gamma, dtype=dtype)
            total += float(per_sample.float().sum())
            count += len(batch)
        return total / count
