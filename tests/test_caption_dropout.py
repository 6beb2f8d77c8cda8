"""Caption dropout: which samples train on the empty prompt, what they train on, and exact resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import TINY_RECIPE, draw_glyphs, tiny_sd1_weights
from safetensors.torch import load_file

from latentops.core.errors import InvalidInput
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.finetune import checkpoint, data, heldout, lora
from latentops.pipelines.finetune.cache import FeatureCache
from latentops.pipelines.finetune.config import build_config
from latentops.pipelines.finetune.families import Family

BASE = TINY_RECIPE


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightsRef:
    return tiny_sd1_weights(tmp_path_factory)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = draw_glyphs(tmp_path_factory.mktemp("instances"), widths=(64, 72, 80, 88))
    for index in range(4):
        (folder / f"glyph-{index}.txt").write_text(f"a sks glyph number {index}")
    return folder


def _lora(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


def test_the_drop_is_fixed_by_seed_step_and_slot_and_takes_the_asked_share() -> None:
    slots = [(step, slot) for step in range(1, 1001) for slot in range(4)]
    drops = [heldout.caption_dropped(7, step, slot, 0.3) for step, slot in slots]
    assert 0.28 <= sum(drops) / len(drops) <= 0.32  # 4,000 samples: 0.3 within about 2.5 standard deviations
    assert drops == [heldout.caption_dropped(7, step, slot, 0.3) for step, slot in slots]  # no RNG state involved
    assert drops != [heldout.caption_dropped(8, step, slot, 0.3) for step, slot in slots]  # another seed, other drops
    assert not any(heldout.caption_dropped(7, step, slot, 0.0) for step, slot in slots)
    assert all(heldout.caption_dropped(7, step, slot, 1.0) for step, slot in slots)
    # A rank's share of the global batch asks about its own slots: two ranks of 2 see what one process of 4 sees.
    whole = heldout.dropped_slots(7, 11, 0, 4, 0.5)
    assert whole == heldout.dropped_slots(7, 11, 0, 2, 0.5) | {2 + i for i in heldout.dropped_slots(7, 11, 2, 2, 0.5)}


def test_dropped_samples_use_the_empty_prompts_cached_conditioning(weights: WeightsRef, instances: Path,
                                                                  tmp_path: Path) -> None:
    """The batches the loop builds, step by step: a dropped sample's conditioning is the empty prompt's,
    every other one its own caption's, and the dropped share is near the probability."""
    config = build_config({**BASE, "steps": 60, "caption_dropout": 0.25})
    images = data.require_instances(instances, instance_prompt=config.instance_prompt)
    plan = data.batch_plan(images, steps=config.steps, batch_size=2, resolution=32, crop="center", flip=True, seed=7)
    family = Family("sd1", lora._load_pipeline(weights, torch.float32))
    cache = FeatureCache(tmp_path / "cache", weights.content_hash)
    prompts = sorted({i.caption for i in images} | {heldout.EMPTY_PROMPT})
    text = {p: lora._conditioning(family, cache, p, torch.device("cpu")) for p in prompts}
    assert cache.text_path(heldout.EMPTY_PROMPT).exists()  # cached like any other caption
    stream = lora._Stream(instances, images, plan, 1.0, data.MIN_SIDE)
    used = dropped_count = 0
    for step in range(1, config.steps + 1):
        samples = plan[step - 1]
        dropped = heldout.dropped_slots(config.seed, step, 0, len(samples), config.caption_dropout)
        _, cond, _ = lora._batch(family, cache, stream, samples, torch.device("cpu"), torch.Generator().manual_seed(0),
                                 text, dropped)
        for slot, sample in enumerate(samples):
            expected = heldout.EMPTY_PROMPT if slot in dropped else images[sample.index].caption
            assert torch.equal(cond["prompt_embeds"][slot], text[expected]["prompt_embeds"])
            used += 1
        dropped_count += len(dropped)
    assert not torch.equal(text[heldout.EMPTY_PROMPT]["prompt_embeds"], text[images[0].caption]["prompt_embeds"])
    assert 0.15 <= dropped_count / used <= 0.35  # 120 samples at 0.25


def test_a_run_with_dropout_resumes_bit_identical_and_trains_differently(weights: WeightsRef, instances: Path,
                                                                         tmp_path: Path) -> None:
    config = build_config({**BASE, "steps": 6, "checkpoint_every": 3, "caption_dropout": 0.5})
    cache = tmp_path / "cache"
    straight = lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "a", cache_dir=cache)
    lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "b", cache_dir=cache, stop_after=3)
    assert checkpoint.latest_step(tmp_path / "b" / "checkpoints") == 3
    resumed = lora.train(config, weights=weights, instance_dir=instances, out_dir=tmp_path / "b", cache_dir=cache,
                         resume=True)
    assert resumed.resumed_from == 3 and resumed.losses == straight.losses
    a, b = _lora(tmp_path / "a"), _lora(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["config"]["caption_dropout"] == 0.5  # part of the config a resume must match
    # The loop uses the drops: step 1 drops a caption for this seed, so the same run without dropout
    # has another loss from its first step on.
    assert heldout.dropped_slots(config.seed, 1, 0, 2, 0.5)
    plain = lora.train(build_config({**BASE, "steps": 6, "checkpoint_every": 3}), weights=weights,
                       instance_dir=instances, out_dir=tmp_path / "c", cache_dir=cache, stop_after=1)
    assert plain.losses[0] != straight.losses[0]


def test_defaults_fingerprint_as_before_the_settings_existed() -> None:
    """Checkpoints of runs made before caption_dropout and validation_split still resume."""
    config = build_config({**BASE, "steps": 8})
    values = config.model_dump(mode="json")
    for key in ("processes", "caption_dropout", "validation_split", "base_quantization", "offload_encoders", "compile"):
        del values[key]  # settings that came later, at their defaults
    assert config.fingerprint() == hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    assert build_config({**BASE, "steps": 8, "caption_dropout": 0.1}).fingerprint() != config.fingerprint()


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_dropout_outside_0_1_is_refused_naming_the_field(value: float) -> None:
    bound = "greater than or equal to 0" if value < 0 else "less than or equal to 1"
    with pytest.raises(InvalidInput, match=rf"^caption_dropout: Input should be {bound}, got {value}$"):
        build_config({**BASE, "caption_dropout": value})
