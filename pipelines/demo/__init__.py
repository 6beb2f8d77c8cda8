"""The demo base model: a small text-to-image latent diffusion model of handwritten digits.

It is trained from scratch by :mod:`latentops.pipelines.demo.training` on scikit-learn's bundled
``load_digits`` images (the fixed "base" split in :mod:`latentops.pipelines.demo.digits`), and its
weights live in the repository under ``model/`` as a diffusers folder with a model card.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).with_name("model")
DEMO_MODEL_NAME = "digits-demo"
