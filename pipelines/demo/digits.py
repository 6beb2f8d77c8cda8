"""The handwritten-digit data behind the demo model: images, prompts, the fixed split, and the judge.

scikit-learn bundles 1,797 8×8 grey-level digits (values 0..16). We upsample them to 32×32 and draw
them as dark ink on white paper, in RGB, so the demo model produces ordinary images.

The split is fixed and seeded: a stratified half (``base``) trains the demo model; the other half
(``heldout``) never touches it, so the augmentation benchmark can train on synthetic images and
measure on real ones the generator has not seen. The classifier that judges generated digits is
trained on ``heldout`` only, for the same reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
SPLIT_SEED = 20_240_601
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
Split = Literal["base", "heldout", "all"]


def prompt_for(digit: int) -> str:
    """The prompt the demo model was trained on for ``digit``."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit: must be 0..9, got {digit}")
    return f"a handwritten digit {DIGIT_WORDS[digit]}"


PROMPTS = tuple(prompt_for(digit) for digit in range(10))


@dataclass(frozen=True)
class DigitSet:
    """Images in [-1, 1], shape (N, 3, 32, 32), with labels and their indices into ``load_digits``."""

    images: torch.Tensor
    labels: np.ndarray
    indices: np.ndarray


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified half/half split of ``load_digits`` (sorted indices)."""
    from sklearn.model_selection import train_test_split

    _, labels = _raw()
    base, heldout = train_test_split(
        np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=SPLIT_SEED % (2**32)
    )
    return {"base": np.sort(base), "heldout": np.sort(heldout)}


def to_pixels(grid: np.ndarray) -> torch.Tensor:
    """8×8 digits (0..16, ink high) -> 32×32 RGB in [-1, 1], dark ink on white."""
    ink = torch.from_numpy(grid).float().unsqueeze(1) / 16.0
    ink = F.interpolate(ink, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    paper = 1.0 - ink
    return (paper * 2.0 - 1.0).repeat(1, 3, 1, 1)


def load(split: Split = "base") -> DigitSet:
    images, labels = _raw()
    indices = np.arange(len(labels)) if split == "all" else split_indices()[split]
    return DigitSet(images=to_pixels(images[indices]), labels=labels[indices], indices=indices)


def features(images: torch.Tensor) -> np.ndarray:
    """Classifier features from 32×32 images in [-1, 1] (N, C, H, W): ink at 8×8, 0..16 like ``load_digits``."""
    grey = images.float().mean(dim=1, keepdim=True)
    ink = (1.0 - (grey.clamp(-1, 1) + 1.0) / 2.0) * 16.0
    return F.adaptive_avg_pool2d(ink, 8).flatten(1).numpy()


def pil_to_tensor(images: list) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1], resized to 32×32 when needed."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE))
        arrays.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=1)
def judge():
    """An SVM trained on the held-out real digits (through the same 32×32 round trip) that reads digits."""
    from sklearn.svm import SVC

    heldout = load("heldout")
    classifier = SVC(C=10.0, gamma="scale")
    classifier.fit(features(heldout.images), heldout.labels)
    return classifier


def judge_accuracy_on_base() -> float:
    """How well the judge reads real digits it never saw (the base split): its own error bar."""
    base = load("base")
    return float((judge().predict(features(base.images)) == base.labels).mean())


def _unit_ink(images: torch.Tensor) -> np.ndarray:
    """32×32 images in [-1, 1] -> ink maps, centred and scaled to unit length (for correlations)."""
    ink = (1.0 - (images.float().mean(dim=1).clamp(-1, 1) + 1.0) / 2.0).flatten(1).numpy()
    ink = ink - ink.mean(axis=1, keepdims=True)
    return ink / (np.linalg.norm(ink, axis=1, keepdims=True) + 1e-8)


@dataclass(frozen=True)
class GlyphVerdict:
    """How many samples read as the new glyph: their ink correlates with the glyph's drawings more
    than any of the 1,797 real digits does (``bar``), so a blob or a digit does not count."""

    scores: list[float]
    bar: float

    @property
    def recognised(self) -> int:
        return sum(score > self.bar for score in self.scores)


def glyph_verdict(samples: torch.Tensor, drawings: torch.Tensor) -> GlyphVerdict:
    """Judge generated ``samples`` against the instance ``drawings`` (both (N, 3, 32, 32) in [-1, 1]).

    A judge that is not the training loss: each sample's correlation with the drawings' mean ink
    map, against the highest correlation any real digit reaches with it.
    """
    template = _unit_ink(drawings).mean(axis=0)
    template /= np.linalg.norm(template) + 1e-8
    bar = float((_unit_ink(load("all").images) @ template).max())
    return GlyphVerdict(scores=[round(float(v), 4) for v in _unit_ink(samples) @ template], bar=round(bar, 4))
