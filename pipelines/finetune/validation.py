"""Images a training run renders: validation prompts every N steps, the final grid, class images.

Every image the platform produces must take the governed path (policy, screening, provenance,
audit). That path belongs to the service that starts the run, which hands it to the recipe as a
:class:`Renderer`; training reaches it through one seam, :func:`render`. The renderer receives a
:class:`RenderRequest` and the device, and returns the released PIL images in prompt order (a
quarantined image is left out). There is no fallback to the bare engine: a run given no renderer
cannot render, and says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from latentops.core.errors import ServiceUnavailable
from latentops.pipelines.engine import AdapterRef, Engine, PipelineCache, WeightsRef

logger = logging.getLogger(__name__)


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


class Renderer(Protocol):
    """The governed path as a training run calls it: the released images for ``request`` in prompt
    order, a quarantined image left out. The service that starts a run passes one in."""

    def __call__(self, request: RenderRequest, *, device: str) -> list[Image.Image]: ...


_engines: dict[str, Engine] = {}


def training_engine(device: str) -> Engine:
    """The engine the governed renderer uses for training runs: one small one per device, holding
    only the pipeline it rendered last (the run itself keeps the model in memory)."""
    if device not in _engines:
        _engines[device] = Engine(device=device, cache=PipelineCache(0))
    return _engines[device]


def render(request: RenderRequest, *, renderer: Renderer | None, device: str = "cpu") -> list[Image.Image]:
    """The released images for ``request``, through the governed ``renderer`` the run was given."""
    if renderer is None:
        raise ServiceUnavailable("rendering: no governed renderer was given to this run; training images are "
                                 "never rendered without one")
    logger.info("rendering %d %s image(s) through the governed path",
                len(request.prompts) * request.images_per_prompt, request.purpose)
    return renderer(request, device=device)


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
    """``images`` as ``folder/PREFIX-NNN.png``. Files of an earlier render there (an attempt that died
    after rendering) are removed first, so the folder holds exactly this render's released images:
    the run logs the folder to MLflow, and a quarantined image must never reach it."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{prefix}-*.png"):
        stale.unlink()
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{prefix}-{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths
