"""On-disk cache of VAE latents and text conditioning, shared by every job on the same base model.

Keys are contents, never positions: a latent is stored under (base model version, the image's
pixel hash, the transform that cut it) and a text embedding under (base model version, prompt
text). Keying by step or batch index would pair an image with another image's caption the moment
the data order changes (shuffling, resuming, a second job); content keys make that impossible
and let a second job on the same base model reuse the first one's work.

Entries are safetensors files written to a temporary name and renamed, so a crash leaves either
the whole entry or none. Latents are stored as the VAE posterior's mean and std; each step draws
its own sample from them, exactly as encoding the image every step would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)
CACHE_FORMAT = "1"


class FeatureCache:
    """Latents and prompt conditioning for one base model version under ``root``."""

    def __init__(self, root: Path, model_version: str) -> None:
        self.root = Path(root) / f"v{CACHE_FORMAT}" / model_version[:32]
        self.hits = 0
        self.misses = 0

    def latent_path(self, image_sha256: str, transform_key: str) -> Path:
        return self.root / "latents" / image_sha256[:2] / f"{image_sha256}-{transform_key}.safetensors"

    def text_path(self, prompt: str) -> Path:
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return self.root / "text" / digest[:2] / f"{digest}.safetensors"

    def get(self, path: Path) -> dict[str, torch.Tensor] | None:
        if not path.exists():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
            logger.warning("cache entry %s unreadable; recomputing it", path)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(handle)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
