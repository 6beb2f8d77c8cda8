"""The raster image formats the platform accepts, by file suffix (lowercase, with the dot).

One set for every reader that filters by name: the fine-tuning upload route and the remote CLI's
instance folder. The images are decoded with Pillow, which reads every format listed; the local
instance-folder check (``pipelines.finetune.data``) decodes by content and accepts the same ones.
This module imports nothing of ours, so the pipelines and the platform may use it as well as
governance.
"""

from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
