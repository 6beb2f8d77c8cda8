"""The demo's fine-tune learns its glyph: the recipe ``make demo`` queues, judged by what it draws.

The same drawings, prompt, steps and settings as ``latentops demo`` (``cli.demo.RECIPE``), trained
on the bundled digits model; then 8 samples of the letter's prompt, with the adapter and (the
baseline, same seeds) without. The judge is not the training loss: a sample counts as the letter
when its ink correlates with the drawings more than any of the 1,797 real digits does
(``digits.glyph_verdict``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from latentops.pipelines.demo import DEMO_MODEL_DIR, digits
from latentops.pipelines.engine import AdapterRef, Engine, GenerationRequest, PipelineCache, WeightsRef
from latentops.pipelines.finetune import dreambooth, interop
from latentops.pipelines.finetune.config import build_config
from latentops.platform.cli import demo

SAMPLES = 8


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_recipe_makes_its_letter_recognisable(tmp_path: Path) -> None:
    folder = tmp_path / "drawings"
    folder.mkdir()
    drawings = []
    for name, data in demo._glyph_images():
        (folder / name).write_bytes(data)
        drawings.append(Image.open(io.BytesIO(data)))
    config = build_config({**demo.RECIPE, "instance_prompt": demo.GLYPH_PROMPT, "steps": demo.STEPS,
                           "checkpoint_every": demo.STEPS})
    weights = WeightsRef(content_hash="digits-demo", path=DEMO_MODEL_DIR, family="sd1")
    result = dreambooth.run(config, weights=weights, instance_dir=folder, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    adapter = AdapterRef(content_hash=interop.file_sha256(result.weights_path), path=result.weights_path.parent)
    engine = Engine(device="cpu", cache=PipelineCache(0))
    probe = GenerationRequest(prompts=[demo.GLYPH_PROMPT], images_per_prompt=SAMPLES, steps=20, guidance_scale=4.0, seed=0)
    reference = digits.pil_to_tensor(drawings)
    before = digits.glyph_verdict(digits.pil_to_tensor(engine.generate(weights, probe)), reference)
    after = digits.glyph_verdict(digits.pil_to_tensor(engine.generate(weights, probe, [adapter])), reference)
    print(f"\nread as the letter {demo.GLYPH}: base model {before.recognised}/{SAMPLES}, with the demo's adapter "
          f"{after.recognised}/{SAMPLES} (bar {after.bar}: the best real digit); scores {after.scores}")
    assert before.recognised <= 1
    assert after.recognised >= 6
