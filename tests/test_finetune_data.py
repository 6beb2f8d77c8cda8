"""Fine-tuning inputs: image validation per file, captions, buckets for small sets, config errors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.pipelines.finetune import config as ft_config
from latentops.pipelines.finetune import data


def _rgb(width: int = 80, height: int = 72, colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", (width, height), colour)
    image.putpixel((1, 1), (0, 0, 0))
    return image


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width`` x ``height`` pixels, with almost no data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    _rgb().save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are my notes, not a picture\n" * 10)
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (folder / "sneaky.png").write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / "bomb.png").write_bytes(_bomb_png(10_000, 5_000))
    buffer = io.BytesIO()
    _rgb(200, 200).save(buffer, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _rgb(40, 100).save(folder / "tiny.png")
    # Accepted and normalised:
    Image.new("L", (70, 70), 128).save(folder / "gray.png")
    Image.new("RGBA", (70, 70), (255, 0, 0, 0)).save(folder / "transparent.png")
    _rgb().convert("P").save(folder / "palette.png")
    Image.new("CMYK", (70, 70), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((70, 70), 65535 // 2, dtype=np.uint16)).save(folder / "sixteen.png")
    _rgb().save(folder / "photo.webp", format="WEBP", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _rgb(120, 64).save(folder / "rotated.jpg", exif=exif.tobytes())
    (folder / "good.txt").write_text("a caption")
    return folder


def test_every_file_gets_a_verdict_with_its_reason(mixed_folder: Path) -> None:
    reports = {r.file: r for r in data.inspect_folder(mixed_folder)}
    assert "good.txt" not in reports  # a caption sidecar, not a candidate
    refused = {name: r.reason for name, r in reports.items() if not r.ok}
    assert set(refused) == {"empty.png", "notes.jpg", "logo.svg", "sneaky.png", "bomb.png", "truncated.jpg", "tiny.png"}
    assert "empty" in refused["empty.png"]
    assert "not an image" in refused["notes.jpg"]
    assert "vector" in refused["logo.svg"]
    assert "markup" in refused["sneaky.png"]
    assert "decompression bomb" in refused["bomb.png"] and reports["bomb.png"].width == 10_000
    assert "truncated" in refused["truncated.jpg"]
    assert "under 64 px" in refused["tiny.png"]
    accepted = {name for name, r in reports.items() if r.ok}
    assert accepted == {"good.png", "gray.png", "transparent.png", "palette.png", "cmyk.jpg", "sixteen.png", "photo.webp",
                        "rotated.jpg"}


def test_accepted_images_are_normalised_to_upright_rgb(mixed_folder: Path) -> None:
    for name in ("gray.png", "transparent.png", "palette.png", "cmyk.jpg", "sixteen.png", "photo.webp", "rotated.jpg"):
        assert data.decode(mixed_folder / name).mode == "RGB"
    assert data.decode(mixed_folder / "rotated.jpg").size == (64, 120)  # EXIF rotation applied
    assert data.decode(mixed_folder / "transparent.png").getpixel((5, 5)) == (255, 255, 255)  # composited on white
    assert abs(data.decode(mixed_folder / "sixteen.png").getpixel((5, 5))[0] - 128) <= 1  # scaled, not clipped
    assert data.decode(mixed_folder / "cmyk.jpg").getpixel((5, 5))[0] > 200  # CMYK red stays red


def test_validate_images_cli_prints_one_json_record_per_file(mixed_folder: Path, cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("finetune", "validate-images", str(mixed_folder), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {tuple(sorted(r)) for r in rows} == {("file", "height", "ok", "reason", "width")}
    by_file = {r["file"]: r for r in rows}
    assert by_file["good.png"] == {"file": "good.png", "ok": True, "reason": "", "width": 80, "height": 72}
    assert by_file["empty.png"]["ok"] is False


def test_a_folder_without_a_valid_image_is_refused_naming_each_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.svg").write_text("<svg/>")
    with pytest.raises(InvalidInput) as refused:
        data.require_instances(tmp_path / "bad", instance_prompt="x")
    assert "no valid training image" in refused.value.detail
    assert any(r.startswith("a.png:") for r in refused.value.reasons)
    assert cli("finetune", "validate-images", str(tmp_path / "bad")).returncode == 1


def test_captions_come_from_sidecars_then_metadata_then_the_instance_prompt(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _rgb().save(tmp_path / name)
    (tmp_path / "a.txt").write_text("sidecar caption\n")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "metadata caption"}) + "\n")
    images, refused = data.load_instances(tmp_path, instance_prompt="a sks thing")
    assert not refused
    assert [(i.file, i.caption) for i in images] == [("a.png", "sidecar caption"), ("b.png", "metadata caption"),
                                                     ("c.png", "a sks thing")]


def test_five_images_of_mixed_shapes_fill_every_batch_within_one_bucket(tmp_path: Path) -> None:
    sizes = [(512, 512), (768, 512), (512, 768), (700, 500), (500, 500)]
    images = [data.InstanceImage(f"{i}.png", f"{i:064x}", "p", w, h) for i, (w, h) in enumerate(sizes)]
    plan = data.batch_plan(images, steps=30, batch_size=2, resolution=256, crop="random", flip=True, seed=3)
    assert len(plan) == 30
    used = {s.index for batch in plan for s in batch}
    assert used == set(range(5))
    for batch in plan:
        assert len(batch) == 2 and len({s.transform.bucket for s in batch}) == 1
        for sample in batch:
            w, h = sample.transform.bucket
            assert w % 64 == 0 and h % 64 == 0 and 0.5 <= w / h <= 2
            assert sample.transform.crop_x % 8 == 0 and sample.transform.crop_y % 8 == 0
    assert data.bucket_of(768, 512, 256)[0] > data.bucket_of(768, 512, 256)[1]  # landscape stays landscape
    assert data.plan_from_json(data.plan_to_json(plan)) == plan
    assert data.batch_plan(images, steps=30, batch_size=2, resolution=256, crop="random", flip=True, seed=3) == plan


def test_transforms_crop_and_flip_to_the_bucket() -> None:
    image = _rgb(100, 60)
    transform = data.Transform((64, 64), 8, 0, True)
    out = data.apply_transform(image, transform)
    assert out.size == (64, 64)
    assert data.apply_transform(image, data.Transform((64, 64), 8, 0, False)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes() == out.tobytes()


@pytest.mark.parametrize(("values", "field"), [
    ({"lr": 0.5}, "lr"), ({"rank": 0}, "rank"), ({"steps": 0}, "steps"), ({"resolution": 100}, "resolution"),
    ({"batch_size": 1000}, "batch_size"), ({"noise_offset": 2.0}, "noise_offset"), ({"colour": "red"}, "colour"),
    ({"method": "dreambooth"}, "class_prompt"), ({"method": "dreambooth", "class_prompt": "a dog",
                                                  "prior_loss_weight": -1}, "prior_loss_weight"),
    ({"method": "full"}, "method"), ({"class_prompt": "a dog"}, "class_prompt"),
])
def test_out_of_range_settings_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ft_config.build_config({"instance_prompt": "a sks dog", **values})
    assert refused.value.detail.startswith(f"{field}:"), refused.value.detail


def test_the_seed_defaults_to_a_recorded_value_and_toml_uses_the_cli_keys(tmp_path: Path) -> None:
    config = ft_config.build_config({"instance_prompt": "a sks dog", "seed": None})
    assert config.seed == ft_config.DEFAULT_SEED and config.params()["seed"] == ft_config.DEFAULT_SEED
    (tmp_path / "job.toml").write_text('[finetune]\nmodel = "m"\ninstance-prompt = "a sks dog"\nbatch-size = 2\n')
    assert ft_config.load_toml(tmp_path / "job.toml") == {"model": "m", "instance_prompt": "a sks dog", "batch_size": 2}
    (tmp_path / "bad.toml").write_text("steps = = 3")
    with pytest.raises(InvalidInput, match="config:"):
        ft_config.load_toml(tmp_path / "bad.toml")
