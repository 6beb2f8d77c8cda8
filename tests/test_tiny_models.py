"""Tiny offline pipelines for every family, and the offline CLIP / T5 tokenizers they use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer, T5TokenizerFast

from latentops.pipelines import tiny, tokenizers

TEXTS = [
    "a handwritten digit zero",
    "Café — naïve, 日本語!? émoji 🎉 \"quotes\" don't",
    "HELLO,world...  spaced\ttab",
    "Ünïcödé ß ﬁ ligature Ⅻ ½ x²",
    "a &amp; b &lt;tag&gt; ¿qué? ¡sí! 1234567 &#39;x&#39;",
    "“curly” ‘quotes’ – dash … ellipsis",
    "ＡＢＣ　１２３！ full width",
    "Ελληνικά Русский עברית العربية 한국어",
    "a!b!!c ?!. ,;:()[]{}<>/\\|@#$%^&*_+=~`",
    "Cafe\u0301 decomposed accents",
]


def _open_clip_ids(text: str) -> list[int]:
    ids = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    # open_clip pads with 0; the text itself runs from <|startoftext|> to the first <|endoftext|>.
    return ids[: ids.index(49407) + 1]


@pytest.fixture(scope="module")
def clip_tokenizer() -> CLIPTokenizer:
    return tokenizers.build_clip_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_clip_tokenizer_gives_open_clip_ids(clip_tokenizer: CLIPTokenizer, text: str) -> None:
    assert clip_tokenizer(text).input_ids == _open_clip_ids(text)


def test_clip_tokenizer_truncates_to_77_like_open_clip(clip_tokenizer: CLIPTokenizer) -> None:
    text = "digit " * 200
    ids = clip_tokenizer(text, truncation=True, max_length=77).input_ids
    assert len(ids) == 77
    assert ids == open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()


@pytest.mark.parametrize("text", [*TEXTS, "mojibake cafÃ© and &amp;amp; double escaped"])
def test_saved_tokenizer_with_cleaned_prompt_gives_open_clip_ids(tmp_path: Path, text: str) -> None:
    tokenizers.save_clip_tokenizer(tmp_path / "tok")
    loaded = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded(tokenizers.clean_prompt(text)).input_ids == _open_clip_ids(text)


def test_t5_tokenizer_is_built_offline_and_round_trips(tmp_path: Path) -> None:
    tokenizers.save_t5_tokenizer(tmp_path / "t5")
    loaded = T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))
    ids = loaded("a handwritten digit seven, in the rain!").input_ids
    assert ids[-1] == loaded.eos_token_id == 1
    assert loaded.pad_token_id == 0
    assert all(0 <= i < len(loaded) for i in ids)
    assert loaded.decode(ids, skip_special_tokens=True) == "a handwritten digit seven, in the rain!"


@pytest.mark.parametrize("family", tiny.TINY_FAMILIES)
def test_tiny_pipeline_loads_with_plain_from_pretrained_and_generates(tmp_path: Path, family: str) -> None:
    out = tiny.create(family, tmp_path / family)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 20_000_000
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert pipeline.__class__.__name__ == {
        "sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
        "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
    }[family]
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a red cube", num_inference_steps=2, height=32, width=32,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0


def test_tiny_weights_are_seeded(tmp_path: Path) -> None:
    from latentops.pipelines.store import ModelStore

    store = ModelStore(tmp_path / "store")
    first = store.inspect(tiny.create("sd1", tmp_path / "a", seed=3)).content_hash
    again = store.inspect(tiny.create("sd1", tmp_path / "b", seed=3)).content_hash
    other = store.inspect(tiny.create("sd1", tmp_path / "c", seed=4)).content_hash
    assert first == again != other


@pytest.mark.one_backend
def test_create_tiny_command_writes_a_loadable_pipeline(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("models", "create-tiny", "--family", "flux", "--out", str(tmp_path / "flux"))
    assert result.returncode == 0, result.stderr
    assert DiffusionPipeline.from_pretrained(str(tmp_path / "flux")).__class__.__name__ == "FluxPipeline"
    refused = cli("models", "create-tiny", "--family", "sd9", "--out", str(tmp_path / "x"))
    assert refused.returncode == 1
    assert "family" in refused.stderr and "sd9" in refused.stderr
