"""Filters applied to a class's released images before a dataset is written.

* **CLIP score** (``clip_min_score``): cosine similarity between the image and the class text
  ("a photo of a {name}" and the class prompts; the best of them), with the CLIP weights imported
  for screening. Without real CLIP weights the filter cannot run: the dataset says it was skipped
  instead of pretending (random weights would keep or drop images at random).
* **Near duplicates** (``dedupe_distance``): a 64-bit perceptual hash (DCT of the 32×32 grey image,
  signs of the 8×8 low band against its median); an image within ``dedupe_distance`` bits of an
  image kept earlier in the class is dropped. Earlier = lower index, so the result is deterministic.
* **Classifier confidence** (``classifier``): a user-supplied TorchScript classifier's softmax
  probability for the image's own class must reach ``min_confidence``. A spec names it by its
  store id (the SHA-256 of the file, from :func:`import_classifier`), never by a path: what a
  dataset loads is a registered artefact, and an unknown id says nothing about the disk.

Each filter returns per-image scores so they can be written to ``metadata.jsonl``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from latentops.core.errors import InvalidInput

log = logging.getLogger(__name__)


# --- perceptual hash ---------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of ``image``."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def dedupe(hashes: Sequence[int], distance: int) -> list[bool]:
    """Keep-flags: an image is dropped when within ``distance`` bits of an earlier kept image."""
    kept: list[int] = []
    flags = []
    for value in hashes:
        duplicate = any(hamming(value, other) <= distance for other in kept)
        flags.append(not duplicate)
        if not duplicate:
            kept.append(value)
    return flags


# --- CLIP score --------------------------------------------------------------------------------


def clip_scores(clip: Any, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
    """Best cosine similarity of each image to any of ``texts``, with the imported CLIP model."""
    import torch

    embeddings = torch.from_numpy(clip.encode_images(images))
    with torch.inference_mode():
        text = clip.model.encode_text(clip.tokenizer(list(texts)))
        text = torch.nn.functional.normalize(text.float(), dim=-1)
    return [round(float(v), 5) for v in (embeddings @ text.T).max(dim=1).values]


# --- user classifier ---------------------------------------------------------------------------


CLASSIFIER_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def classifier_file(root: Path, classifier_id: str) -> Path:
    """The stored file of a registered classifier; ``InvalidInput`` naming the id when unknown."""
    path = Path(root) / f"{classifier_id}.pt"
    if not CLASSIFIER_ID_RE.match(classifier_id) or not path.is_file():
        raise InvalidInput(f"filters.classifier.id: no registered classifier {classifier_id[:64]!r}")
    return path


def import_classifier(root: Path, source: Path) -> str:
    """Check that ``source`` is a TorchScript module and store it under its SHA-256; returns the id."""
    import torch

    try:
        torch.jit.load(str(source), map_location="cpu")
    except (OSError, RuntimeError, ValueError) as error:
        raise InvalidInput(f"classifier: {Path(source).name} is not a TorchScript module ({error})") from None
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    target = Path(root) / f"{digest}.pt"
    if not target.is_file():
        Path(root).mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        partial.replace(target)
    return digest


class Classifier:
    """A registered TorchScript classifier (TorchScript, not pickle: no code runs)."""

    def __init__(self, root: Path, classifier_id: str, classes: int) -> None:
        import torch

        path = classifier_file(root, classifier_id)
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as error:
            raise InvalidInput(f"filters.classifier.id: {classifier_id} is not a TorchScript module ({error})") from None
        self.classes = classes

    def confidences(self, images: Sequence[Image.Image], labels: Sequence[int]) -> list[float]:
        import torch

        batch = torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in images]))
        with torch.inference_mode():
            logits = self.module(batch.permute(0, 3, 1, 2).contiguous())
        if logits.ndim != 2 or logits.shape[1] != self.classes:
            raise InvalidInput(f"filters.classifier: the classifier returned shape {tuple(logits.shape)}; "
                               f"expected (N, {self.classes}), one column per class in spec order")
        probabilities = torch.softmax(logits.float(), dim=1)
        return [round(float(probabilities[i, label]), 5) for i, label in enumerate(labels)]
