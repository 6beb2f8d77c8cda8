"""The CLIP model that screening and the copyright index share, loaded from the home.

``screening.import_clip`` stores the weights and their manifest under
``LATENTOPS_HOME/screening/clip``; ``load_clip`` builds the model from them once per process and
weights hash. Both ``screening`` (content concepts) and ``copyright`` (reference embeddings) use it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from latentops.core.settings import Settings
from latentops.governance import detectors
from latentops.governance.detectors import ClipModel


def screening_dir(settings: Settings) -> Path:
    return settings.home / "screening"


def clip_dir(settings: Settings) -> Path:
    return screening_dir(settings) / "clip"


def clip_manifest(settings: Settings) -> dict[str, Any] | None:
    return detectors.read_config(clip_dir(settings) / "clip.json") or None


_clip_cache: dict[str, ClipModel] = {}
_clip_lock = threading.Lock()


def load_clip(settings: Settings) -> ClipModel | None:
    """The imported CLIP model (cached per process and weights hash), or ``None`` when none is imported."""
    manifest = clip_manifest(settings)
    if manifest is None:
        return None
    key = f"{clip_dir(settings)}:{manifest['sha256']}"
    with _clip_lock:
        if key not in _clip_cache:
            model, preprocess, tokenizer = detectors.build_clip(
                manifest["arch"], clip_dir(settings) / manifest["weights"], manifest.get("config"))
            _clip_cache[key] = ClipModel(manifest["arch"], manifest["sha256"], model, preprocess, tokenizer)
        return _clip_cache[key]
