"""Shared set-up for the recipe tests that train the tiny SD1 model directly (no catalogue, no jobs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from latentops.pipelines import tiny
from latentops.pipelines.engine import WeightsRef

# A short recipe the tiny model trains in seconds: rank 4 at 32 px, batch 2, one validation step, no samples.
TINY_RECIPE = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 2, "lr": 1e-3,
               "validation_steps": 1, "seed": 7, "samples": False}


def tiny_sd1_weights(tmp_path_factory: pytest.TempPathFactory) -> WeightsRef:
    """A freshly built tiny SD1 pipeline (seed 0) as the recipe receives a stored model."""
    path = tiny.create("sd1", tmp_path_factory.mktemp("models") / "sd1")
    return WeightsRef(content_hash="tiny-sd1-seed0", path=path, family="sd1")


def draw_glyphs(folder: Path, widths: Sequence[int] = (64, 72, 80, 88, 96), letters: str = "AB") -> Path:
    """Instance images of drawn letters, ``glyph-<i>.png``, one per width (64 px high)."""
    for index, width in enumerate(widths):
        image = Image.new("RGB", (width, 64), "white")
        ImageDraw.Draw(image).text((20 + index, 24), letters[index % len(letters)], fill=(20, 20, 120))
        image.save(folder / f"glyph-{index}.png")
    return folder
