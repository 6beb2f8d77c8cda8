"""Does fine-tuning learn? DreamBooth-LoRA on the digits demo model with a glyph it never saw.

Five drawings of the letter R (the base model knows only digits) under "a sks letter",
with prior preservation on "a handwritten digit". Afterwards the instance prompt's images must be
measurably closer to the instance drawings than before, and the digit prompts must still be read
as their digits by the demo judge at >= 80% of the base model's accuracy. The numbers are printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from latentops.pipelines.demo import DEMO_MODEL_DIR, digits
from latentops.pipelines.engine import AdapterRef, Engine, GenerationRequest, PipelineCache, WeightsRef
from latentops.pipelines.finetune import dreambooth, interop
from latentops.pipelines.finetune.config import build_config

pytestmark = pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").exists(),
                                reason="the digits demo weights are not in the repository yet")
INSTANCE_PROMPT = "a sks letter"
PER_PROMPT = 8


def _glyphs(folder: Path) -> list[np.ndarray]:
    folder.mkdir()
    font = ImageFont.load_default(size=44)
    arrays = []
    for index in range(5):
        image = Image.new("L", (64, 64), 255)
        ImageDraw.Draw(image).text((14 + index % 3, 4 + index % 2), "R", fill=0, font=font)
        image = image.rotate((index - 2) * 4, fillcolor=255).convert("RGB")
        image.save(folder / f"r{index}.png")
        arrays.append(np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC).convert("L"), dtype=np.float32) / 255)
    return arrays


def _distance(images: list[Image.Image], glyphs: list[np.ndarray]) -> float:
    """Mean over images of the RMS pixel distance to the nearest instance drawing."""
    gray = [np.asarray(i.convert("L").resize((32, 32)), dtype=np.float32) / 255 for i in images]
    return float(np.mean([min(np.sqrt(np.mean((g - r) ** 2)) for r in glyphs) for g in gray]))


def _digit_accuracy(engine: Engine, weights: WeightsRef, adapters: list[AdapterRef]) -> float:
    judge = digits.judge()
    correct = 0
    for digit in range(10):
        images = engine.generate(weights, GenerationRequest(prompts=[digits.prompt_for(digit)], images_per_prompt=PER_PROMPT,
                                                            steps=20, guidance_scale=4.0, seed=500 + digit), adapters)
        correct += int((judge.predict(digits.features(digits.pil_to_tensor(images))) == digit).sum())
    return correct / (10 * PER_PROMPT)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a real 200-step DreamBooth run on the CPU: minutes, more on a loaded machine
def test_dreambooth_learns_a_new_glyph_and_keeps_the_digits(tmp_path: Path, sqlite_url: str, home: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from test_finetune_recipe import _release_unscreened

    from latentops.core.settings import get_settings
    from latentops.platform.services.generation import render_for_training

    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    _release_unscreened(get_settings())
    glyphs = _glyphs(tmp_path / "instances")
    weights = WeightsRef(content_hash="digits-demo", path=DEMO_MODEL_DIR, family="sd1")
    engine = Engine(device="cpu", cache=PipelineCache(0))
    probe = GenerationRequest(prompts=[INSTANCE_PROMPT], images_per_prompt=PER_PROMPT, steps=20, guidance_scale=4.0, seed=99)
    before_distance = _distance(engine.generate(weights, probe), glyphs)
    before_accuracy = _digit_accuracy(engine, weights, [])

    config = build_config({"method": "dreambooth", "instance_prompt": INSTANCE_PROMPT, "class_prompt": "a handwritten digit",
                           "num_class_images": 40, "class_generation_steps": 20, "prior_loss_weight": 1.0,
                           "resolution": 32, "batch_size": 4, "steps": 200, "rank": 8, "lr": 5e-4, "checkpoint_every": 250,
                           "flip": False, "samples": False})
    result = dreambooth.run(config, weights=weights, instance_dir=tmp_path / "instances", out_dir=tmp_path / "run",
                            cache_dir=tmp_path / "cache", renderer=render_for_training)
    adapter = [AdapterRef(content_hash=interop.file_sha256(result.weights_path), path=result.weights_path.parent)]
    after_distance = _distance(engine.generate(weights, probe, adapter), glyphs)
    after_accuracy = _digit_accuracy(engine, weights, adapter)
    print(f"\ninstance distance (RMS to nearest R): before {before_distance:.4f}, after {after_distance:.4f}; "
          f"digit accuracy: before {before_accuracy:.1%}, after {after_accuracy:.1%} "
          f"({after_accuracy / max(before_accuracy, 1e-9):.0%} of before); final loss {result.final_loss:.4f}")
    assert after_distance < before_distance * 0.9
    assert after_accuracy >= 0.8 * before_accuracy
