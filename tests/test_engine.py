"""The generation engine on tiny pipelines (CPU): determinism, options, cache, LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.pipelines import tiny
from latentops.pipelines.engine import (
    AdapterRef,
    Engine,
    GenerationRequest,
    PipelineCache,
    WeightsRef,
    pipeline_bytes,
)
from latentops.pipelines.store import ModelStore


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WeightsRef]:
    root = tmp_path_factory.mktemp("engine")
    store = ModelStore(root / "store")
    refs = {}
    for family in tiny.TINY_FAMILIES:
        inspection = store.inspect(tiny.create(family, root / family))
        path, _ = store.put(inspection)
        refs[family] = WeightsRef(inspection.content_hash, path, inspection.family)
    return refs


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in images]


def _request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {"prompts": ["a red cube"], "steps": 2, "seed": 7, "height": 32, "width": 32}
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def test_same_seed_gives_same_pixels_on_cpu(engine: Engine, stored: dict[str, WeightsRef]) -> None:
    request = _request(prompts=["a red cube", "a blue ball"], images_per_prompt=2)
    first, second = _pixels(engine.generate(stored["sd1"], request)), _pixels(engine.generate(stored["sd1"], request))
    assert len(first) == 4
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = _pixels(engine.generate(stored["sd1"], _request(prompts=["a red cube", "a blue ball"], images_per_prompt=2, seed=8)))
    assert not np.array_equal(first[0], other[0])


def test_each_image_follows_its_own_seed(engine: Engine, stored: dict[str, WeightsRef]) -> None:
    batch = _pixels(engine.generate(stored["sd1"], _request(images_per_prompt=3, seed=100)))
    alone = _pixels(engine.generate(stored["sd1"], _request(seed=101)))
    # Image 1 of the batch was seeded 101; batching may change the last bit of a float, not the image.
    assert np.abs(batch[1] - alone[0]).mean() < 1.0
    assert not np.array_equal(batch[0], batch[1])


def test_negative_prompt_guidance_and_scheduler_change_the_image(engine: Engine, stored: dict[str, WeightsRef]) -> None:
    base = _pixels(engine.generate(stored["sd1"], _request()))[0]
    for change in ({"negative_prompt": "blurry"}, {"guidance_scale": 9.0}, {"scheduler": "ddim"}):
        assert not np.array_equal(base, _pixels(engine.generate(stored["sd1"], _request(**change)))[0]), change
    # The default scheduler comes back when a request names none.
    assert np.array_equal(base, _pixels(engine.generate(stored["sd1"], _request()))[0])


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_family_generates(engine: Engine, stored: dict[str, WeightsRef], family: str) -> None:
    scheduler = "flow_euler" if family in ("sd3", "flux") else "euler_a"
    images = engine.generate(stored[family], _request(negative_prompt="text", scheduler=scheduler, images_per_prompt=2))
    assert [image.size for image in images] == [(32, 32), (32, 32)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scheduler": "warp"}, "scheduler: unknown scheduler 'warp'"),
        ({"scheduler": "flow_euler"}, "does not fit sd1"),
        ({"steps": 0}, "steps"),
        ({"height": 30}, "height"),
        ({"prompts": []}, "prompts"),
        ({"images_per_prompt": 65}, "images_per_prompt"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_requests_refused_naming_the_field(engine: Engine, stored: dict[str, WeightsRef], change: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match=message):
        engine.generate(stored["sd1"], _request(**change))


def test_cache_reuses_pipelines_and_evicts_least_recent_over_budget(stored: dict[str, WeightsRef]) -> None:
    probe = Engine(device="cpu")
    size = pipeline_bytes(probe.load(stored["sd1"]))
    assert probe.load(stored["sd1"]) is probe.load(stored["sd1"])
    assert probe.cache.hits == 2 and probe.cache.misses == 1
    small = Engine(device="cpu", cache=PipelineCache(budget_bytes=int(size * 1.5)))
    first = small.load(stored["sd1"])
    small.load(stored["flux"])
    assert [key[0] for key in small.cache.keys_in_order()] == [stored["flux"].content_hash]
    assert small.load(stored["sd1"]) is not first  # it was evicted and loads again


def test_single_file_weights_are_refused_by_the_engine(engine: Engine, tmp_path: Path) -> None:
    ref = WeightsRef("f" * 64, tmp_path, "sd1", format="safetensors")
    with pytest.raises(InvalidInput, match="single-file safetensors checkpoint"):
        engine.generate(ref, _request())


def test_lora_adapter_changes_output_by_its_scale(engine: Engine, stored: dict[str, WeightsRef], tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(str(stored["sd1"].path))
    torch.manual_seed(0)
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    StableDiffusionPipeline.save_lora_weights(
        str(tmp_path / "lora"), unet_lora_layers=get_peft_model_state_dict(pipeline.unet), safe_serialization=True
    )
    base = _pixels(engine.generate(stored["sd1"], _request()))[0]
    full = _pixels(engine.generate(stored["sd1"], _request(), [AdapterRef("a" * 64, tmp_path / "lora", 1.0)]))[0]
    off = _pixels(engine.generate(stored["sd1"], _request(), [AdapterRef("a" * 64, tmp_path / "lora", 0.0)]))[0]
    assert np.abs(full - base).mean() > 0.5
    assert np.array_equal(off, base)
    # The base pipeline in the cache is untouched by the adapter.
    assert np.array_equal(base, _pixels(engine.generate(stored["sd1"], _request()))[0])
