"""Images a training run renders: validation prompts every N steps, the final grid, class images.

Every image the platform produces must take the governed path (policy, screening, provenance,
audit). That path belongs to the generation service; training reaches it through one seam,
:func:`render`, which calls ``GOVERNED_RENDERER`` (``"module:function"``) when that function
exists and otherwise falls back to the bare generation engine, logging that it did. The governed
function receives a :class:`RenderRequest` and returns PIL images in prompt order.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentops.pipelines.engine import AdapterRef, Engine, GenerationRequest, PipelineCache, WeightsRef
from PIL import Image

logger = logging.getLogger(__name__)

# Implemented by the generation service; until it exists, rendering uses the engine directly.
GOVERNED_RENDERER = "latentops.platform.services.generation:render_for_training"


@dataclass
class RenderRequest:
    """What a training run asks to render, and on whose behalf (for the governed path's records)."""

    weights: WeightsRef
    prompts: list[str]
    seed: int
    steps: int
    images_per_prompt: int = 1
    adapter: AdapterRef | None = None
    purpose: str = "validation"  # validation | class_images | samples
    job_id: int | None = None
    actor: str = "system"
    extra: dict[str, Any] = field(default_factory=dict)


def _governed() -> Callable[[RenderRequest], list[Image.Image]] | None:
    module_name, function = GOVERNED_RENDERER.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, function, None)


_engines: dict[str, Engine] = {}


def _engine(device: str) -> Engine:
    # One small engine per device: it holds only the pipeline it rendered last.
    if device not in _engines:
        _engines[device] = Engine(device=device, cache=PipelineCache(0))
    return _engines[device]


def render(request: RenderRequest, *, device: str = "cpu") -> list[Image.Image]:
    """Images for ``request`` through the governed path when available, else the engine."""
    governed = _governed()
    if governed is not None:
        return governed(request)
    logger.info("rendering %d %s image(s) with the engine directly (governed renderer not installed)",
                len(request.prompts) * request.images_per_prompt, request.purpose)
    engine = _engine(device)
    generation = GenerationRequest(prompts=list(request.prompts), images_per_prompt=request.images_per_prompt,
                                   steps=request.steps, seed=request.seed, **request.extra)
    adapters = [request.adapter] if request.adapter is not None else []
    images = engine.generate(request.weights, generation, adapters)
    engine.cache.clear()
    return images


def grid(images: list[Image.Image], *, columns: int | None = None) -> Image.Image:
    """One image with ``images`` laid out in rows (the sample grid logged with a run)."""
    if not images:
        raise ValueError("images: nothing to lay out")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((width, height)), ((index % columns) * width, (index // columns) * height))
    return sheet


def save_images(images: list[Image.Image], folder: Path, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{prefix}-{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths
