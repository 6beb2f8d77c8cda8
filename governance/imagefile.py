"""Image files from outside: decoding untrusted images safely, one clear error per file.

Every image that screening, the copyright index, provenance or quarantine reads comes through
``load_image``. It refuses, with an ``InvalidInput`` naming the file and the reason:

* files that are not images or are truncated/corrupt (Pillow cannot identify or fully decode them);
* decompression bombs: images whose header declares more than ``MAX_PIXELS`` pixels are refused
  before any pixel is decoded (a 100 KB PNG can declare 50,000 x 50,000 pixels);
* files larger than ``MAX_BYTES``;
* pixel modes that have no faithful RGB rendering (32-bit integer and float images, ``I;16``
  variants): converting them would silently clip values, so they are refused instead.

Accepted images are returned in RGB; transparency is composited on white so that the same
picture always screens and hashes the same way.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from latentops.core.errors import InvalidInput

# About 40 megapixels (e.g. 8000 x 5000): far above anything the platform generates or ingests.
MAX_PIXELS = 40_000_000
MAX_BYTES = 64 * 1024 * 1024
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"})


def read_bytes(path: Path) -> bytes:
    """The file's bytes, refusing missing, non-regular and oversized files by name."""
    if not path.exists():
        raise InvalidInput(f"{path}: no such file")
    if not path.is_file():
        raise InvalidInput(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InvalidInput(f"{path}: file is {size} bytes, more than the {MAX_BYTES} bytes accepted")
    return path.read_bytes()


def load_image(source: Path | bytes, *, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an RGB image, or raise ``InvalidInput``."""
    label = name or (str(source) if isinstance(source, Path) else "image")
    data = read_bytes(source) if isinstance(source, Path) else source
    if len(data) > MAX_BYTES:
        raise InvalidInput(f"{label}: {len(data)} bytes, more than the {MAX_BYTES} bytes accepted")
    if not data:
        raise InvalidInput(f"{label}: empty file, not an image")
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse on our own limit.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidInput(
                    f"{label}: declares {width}x{height} pixels, more than the {MAX_PIXELS} accepted "
                    "(possible decompression bomb)"
                )
            if width < 1 or height < 1:
                raise InvalidInput(f"{label}: has no pixels ({width}x{height})")
            if image.mode not in SUPPORTED_MODES:
                raise InvalidInput(f"{label}: unsupported pixel mode {image.mode!r} (use 8-bit RGB, RGBA, L or P)")
            image.load()
        except InvalidInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise InvalidInput(f"{label}: refused as a possible decompression bomb ({error})") from None
        except UnidentifiedImageError:
            raise InvalidInput(f"{label}: not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InvalidInput(f"{label}: corrupt or truncated image ({error})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (the same picture always gives the same pixels)."""
    if image.mode == "RGB":
        return image
    if image.mode in {"RGBA", "LA", "La", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
