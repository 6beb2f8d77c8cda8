"""Instance images for fine-tuning: validation, captions, aspect-ratio buckets, crops and flips.

Validation (``inspect_folder``) reads every file of an instance folder and says, per file, whether
it can be trained on and why not. Refused, each with its reason: zero-byte files, files that are
not images whatever their extension says, SVG and other vector or script formats (they are
programs, not pixels), decompression bombs (more than ``MAX_PIXELS`` declared, refused before a
pixel is decoded), corrupt or truncated files, and images under ``MIN_SIDE`` px on a side.
Accepted and normalised to 8-bit RGB: grayscale, RGBA/LA (composited on white), palette, CMYK,
16-bit and WebP, with EXIF orientation applied so a phone photo trains upright.

Captions: a ``NAME.txt`` sidecar, else a ``metadata.jsonl`` line ``{"file_name", "text"}``, else
the instance prompt.

Buckets: each image goes to the bucket (a width x height with about ``resolution**2`` pixels, sides
multiple of 64) nearest its aspect ratio. With very few images (5 is common) a bucket may hold
fewer images than the batch size; batches are then filled by repeating that bucket's images, so
no image is dropped and no batch mixes shapes.

Transforms are discrete (resize to cover the bucket, crop offset in multiples of 8 px, flip or
not) so that their VAE latents can be cached (see :mod:`cache`) and replayed exactly on resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from latentops.core.errors import InvalidInput

MAX_PIXELS = 40_000_000
MIN_SIDE = 64
MAX_BYTES = 64 * 1024 * 1024
# Formats that describe drawings as programs or markup; never rasterised for training.
VECTOR_SUFFIXES = frozenset({".svg", ".svgz", ".eps", ".ps", ".pdf", ".ai", ".wmf", ".emf", ".html", ".htm", ".xml"})
RASTER_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
SIDE_FILES = frozenset({"metadata.jsonl"})
BUCKET_STEP = 64


@dataclass(frozen=True)
class FileReport:
    """One file's verdict, as ``finetune validate-images`` prints it."""

    file: str
    ok: bool
    reason: str
    width: int | None
    height: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstanceImage:
    """A validated image: its content hash (of the normalised pixels) and caption."""

    file: str
    sha256: str
    caption: str
    width: int
    height: int


# --- validation ---------------------------------------------------------------------------------


def _looks_like_markup(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html", b"%!ps", b"%pdf"))


def decode(path: Path, *, min_side: int = MIN_SIDE) -> Image.Image:
    """The file as 8-bit RGB, upright; ``InvalidInput`` naming the file and the reason otherwise."""
    name = path.name
    if path.suffix.lower() in VECTOR_SUFFIXES:
        raise InvalidInput(f"{name}: {path.suffix.lower()} is a vector or script format; give raster images (PNG, JPEG, WebP)")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InvalidInput(f"{name}: unreadable ({error.strerror})") from None
    if size == 0:
        raise InvalidInput(f"{name}: empty file (0 bytes)")
    if size > MAX_BYTES:
        raise InvalidInput(f"{name}: {size} bytes, more than the {MAX_BYTES} accepted")
    data = path.read_bytes()
    if _looks_like_markup(data[:256]):
        raise InvalidInput(f"{name}: holds markup or a script (SVG/XML/HTML/PostScript/PDF), not a raster image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in RASTER_FORMATS:
                raise InvalidInput(f"{name}: {image.format} images are not accepted; give PNG, JPEG or WebP")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidInput(f"{name}: declares {width}x{height} pixels, more than {MAX_PIXELS} (possible decompression bomb)")
            image.load()
        except InvalidInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(f"{name}: refused as a possible decompression bomb") from None
        except UnidentifiedImageError:
            raise InvalidInput(f"{name}: not an image (its content matches no image format, whatever its name)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise InvalidInput(f"{name}: corrupt or truncated image ({error})") from None
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError):
        pass  # a damaged EXIF block: keep the stored orientation rather than refuse the pixels
    image = to_rgb(image)
    if min(image.size) < min_side:
        raise InvalidInput(f"{name}: {image.width}x{image.height} is under {min_side} px on a side")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit and float scaled (not clipped), transparency composited on white."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGB":
        return image
    if image.mode in {"RGBA", "LA", "La", "PA", "RGBa"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def pixel_hash(image: Image.Image) -> str:
    """SHA-256 of the normalised pixels and size: the same picture in any container hashes alike."""
    digest = hashlib.sha256(f"{image.width}x{image.height}\0".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def candidate_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInput(f"instance_dir: {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() != ".txt" and p.name not in SIDE_FILES)


def inspect_folder(folder: Path) -> list[FileReport]:
    """A verdict for every candidate file in ``folder`` (sidecar captions are not candidates)."""
    reports = []
    for path in candidate_files(Path(folder)):
        try:
            image = decode(path)
        except InvalidInput as error:
            reports.append(FileReport(path.name, False, error.detail.removeprefix(f"{path.name}: "), *_declared_size(path)))
            continue
        reports.append(FileReport(path.name, True, "", image.width, image.height))
    return reports


def _declared_size(path: Path) -> tuple[int | None, int | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                return image.size
    except Exception:  # noqa: BLE001 - anything unreadable has no size to report
        return None, None


# --- captions and the instance set ---------------------------------------------------------------


def _metadata_captions(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.exists():
        return {}
    captions: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[str(row["file_name"])] = str(row.get("text") or row.get("caption") or "").strip()
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InvalidInput(f"metadata.jsonl: line {number} is not {{\"file_name\", \"text\"}} ({error})") from None
    return captions


def load_instances(folder: Path, *, instance_prompt: str, min_side: int = MIN_SIDE
                   ) -> tuple[list[InstanceImage], list[FileReport]]:
    """The valid images of ``folder`` with captions, and the reports of refused files."""
    folder = Path(folder)
    metadata = _metadata_captions(folder)
    images, refused = [], []
    for path in candidate_files(folder):
        try:
            image = decode(path, min_side=min_side)
        except InvalidInput as error:
            refused.append(FileReport(path.name, False, error.detail.removeprefix(f"{path.name}: "), *_declared_size(path)))
            continue
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else metadata.get(path.name, "")
        images.append(InstanceImage(path.name, pixel_hash(image), caption or instance_prompt, image.width, image.height))
    return images, refused


def require_instances(folder: Path, *, instance_prompt: str, min_side: int = MIN_SIDE) -> list[InstanceImage]:
    """The valid images, or ``InvalidInput`` when there are none (listing why each file was refused)."""
    images, refused = load_instances(folder, instance_prompt=instance_prompt, min_side=min_side)
    if not images:
        raise InvalidInput(
            f"instance_dir: {folder} holds no valid training image ({len(refused)} file(s) refused)",
            reasons=[f"{r.file}: {r.reason}" for r in refused],
        )
    return images


def dataset_hash(images: list[InstanceImage]) -> str:
    """Identity of the training data: pixel hashes with their captions, in file order."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.file}\0{image.sha256}\0{image.caption}\n".encode())
    return digest.hexdigest()


# --- buckets, transforms and the batch plan -----------------------------------------------------


def buckets_for(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution**2`` pixels, sides multiples of 64, ratio <= 2."""
    area = resolution * resolution
    found = {(resolution, resolution)}
    width = BUCKET_STEP
    while width <= resolution * 2:
        height = int(area / width) // BUCKET_STEP * BUCKET_STEP
        if height >= BUCKET_STEP and 0.5 <= width / height <= 2.0:
            found.add((width, height))
        width += BUCKET_STEP
    return sorted(found)


def bucket_of(width: int, height: int, resolution: int) -> tuple[int, int]:
    ratio = width / height
    return min(buckets_for(resolution), key=lambda b: (abs(np.log(b[0] / b[1]) - np.log(ratio)), b))


@dataclass(frozen=True)
class Transform:
    """How one training sample is cut from its image: deterministic, hashable, cache-keyable."""

    bucket: tuple[int, int]
    crop_x: int
    crop_y: int
    flip: bool

    def key(self) -> str:
        return f"{self.bucket[0]}x{self.bucket[1]}+{self.crop_x}+{self.crop_y}{'f' if self.flip else ''}"


def resized_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    scale = max(bucket[0] / width, bucket[1] / height)
    return max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale))


def choose_transform(image: InstanceImage, *, resolution: int, crop: str, flip: bool, rng: random.Random) -> Transform:
    bucket = bucket_of(image.width, image.height, resolution)
    width, height = resized_size(image.width, image.height, bucket)
    spare_x, spare_y = width - bucket[0], height - bucket[1]
    if crop == "random":
        x, y = rng.randint(0, spare_x // 8) * 8, rng.randint(0, spare_y // 8) * 8
    else:
        x, y = spare_x // 2 // 8 * 8, spare_y // 2 // 8 * 8
    return Transform(bucket, x, y, flip and rng.random() < 0.5)


def apply_transform(image: Image.Image, transform: Transform) -> Image.Image:
    width, height = resized_size(image.width, image.height, transform.bucket)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    cropped = resized.crop((transform.crop_x, transform.crop_y,
                            transform.crop_x + transform.bucket[0], transform.crop_y + transform.bucket[1]))
    return ImageOps.mirror(cropped) if transform.flip else cropped


def to_tensor(image: Image.Image) -> Any:
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Sample:
    """One item of a batch: which image (index into the instance list) and how it is cut."""

    index: int
    transform: Transform


def batch_plan(images: list[InstanceImage], *, steps: int, batch_size: int, resolution: int, crop: str, flip: bool,
               seed: int) -> list[list[Sample]]:
    """The batches for every step, fixed by the seed: the data order a checkpoint records.

    Each epoch shuffles the images, groups them by bucket and cuts batches within a bucket; a
    bucket short of a full batch is topped up by repeating its own images.
    """
    rng = random.Random(seed)
    plan: list[list[Sample]] = []
    while len(plan) < steps:
        order = list(range(len(images)))
        rng.shuffle(order)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index in order:
            by_bucket.setdefault(bucket_of(images[index].width, images[index].height, resolution), []).append(index)
        epoch: list[list[int]] = []
        for members in by_bucket.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                while len(chunk) < batch_size:
                    chunk.append(members[(len(chunk) + start) % len(members)])
                epoch.append(chunk)
        rng.shuffle(epoch)
        for chunk in epoch:
            plan.append([Sample(i, choose_transform(images[i], resolution=resolution, crop=crop, flip=flip, rng=rng))
                         for i in chunk])
    return plan[:steps]


def plan_to_json(plan: list[list[Sample]]) -> list[list[list[Any]]]:
    return [[[s.index, *s.transform.bucket, s.transform.crop_x, s.transform.crop_y, int(s.transform.flip)] for s in batch]
            for batch in plan]


def plan_from_json(data: list[list[list[Any]]]) -> list[list[Sample]]:
    return [[Sample(int(i), Transform((int(w), int(h)), int(x), int(y), bool(f))) for i, w, h, x, y, f in batch]
            for batch in data]
