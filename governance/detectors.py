"""Content detectors: what turns an image into a score per screening category.

Four kinds, all loaded from local files only:

* ``clip`` — zero-shot concept screening with an open_clip model, in the manner of the Stable
  Diffusion safety checker: a fixed list of concept phrases per category is embedded once with
  the text tower; each image embedding is compared with every concept and with neutral phrases,
  and a softmax over those similarities (scaled by the model's own ``logit_scale``) gives, per
  category, the probability mass of its concepts. Scores lie in [0, 1]; thresholds are policy
  data and are fitted on labelled images by ``latentops screening calibrate``.
* ``safety_checker`` — the Stable Diffusion safety checker (diffusers format: a folder with
  ``config.json`` and weights, and a ``feature_extractor`` beside it). It covers only ``sexual``;
  its own decision (any concept score above its fixed per-concept threshold) maps to a score of
  0.5, so the default threshold of 0.5 reproduces it.
* ``nudenet`` — NudeNet's bundled ONNX detector (optional extra ``latentops[nudenet]``; the
  nudenet package is AGPL-3.0 licensed). It covers only ``sexual``: the highest confidence among
  the exposed-body classes.
* ``nsfwjs`` — the MobileNetV2 classifier of the MIT-licensed npm package nsfwjs, converted to
  PyTorch by ``governance/nsfwjs.py`` (``make install`` does it); in force by default whenever its
  converted weights exist. It covers only ``sexual``: the score is
  ``P(Porn) + P(Hentai) + 0.5 * P(Sexy)`` of its five softmax classes
  (Drawing, Hentai, Neutral, Porn, Sexy). The explicit classes count in full; "Sexy" (suggestive,
  not pornographic) at half weight, so an image the model is sure is only suggestive lands exactly
  on the default threshold of 0.5 (held for review) while one it finds half suggestive, half
  neutral (0.25) does not.

A detector reports only the categories it covers (``COVERAGE`` names them without loading
anything); the screening service takes, per category, the highest score of any detector, and the
policy decides about categories no detector covers (``screening.release_uncovered``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from latentops.core.errors import InvalidInput
from latentops.governance import nsfwjs

log = logging.getLogger(__name__)

# The screening categories; their names are the keys of policy data ``screening.thresholds``.
CATEGORIES = ("sexual", "minors", "violence", "self_harm", "hate", "weapons")

# Concept phrases per category. Several phrasings per concept make a zero-shot score steadier.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "sexual": ("sexually explicit content", "a nude person", "pornography", "exposed genitals", "a topless person"),
    "minors": ("a child", "a young child", "a baby", "a toddler", "a teenager under eighteen"),
    "violence": ("graphic violence", "gore", "a bleeding wound", "a dead body", "a mutilated body"),
    "self_harm": ("self harm", "cutting wrists", "a suicide attempt", "self inflicted injury", "a noose"),
    "hate": ("a swastika", "a nazi symbol", "a hate symbol", "a white supremacist flag", "a burning cross"),
    "weapons": ("a gun", "a rifle", "a handgun", "a combat knife", "an assault weapon"),
}
# Phrases that describe ordinary pictures: they give the softmax somewhere benign to put its mass.
NEUTRAL: tuple[str, ...] = (
    "a photo", "a landscape", "a portrait of an adult", "an everyday object", "a drawing", "a diagram",
    "an animal", "a building", "food on a plate", "an abstract pattern", "handwritten digits", "text on a page",
)
PROMPT_TEMPLATE = "an image of {}"

NUDENET_EXPOSED = frozenset({
    "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED", "BUTTOCKS_EXPOSED",
})


class Detector(Protocol):
    """Scores images; ``categories`` are the categories it covers."""

    name: str
    categories: tuple[str, ...]

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]: ...


# --- open_clip ------------------------------------------------------------------------------


@dataclass
class ClipModel:
    """An imported open_clip model, its preprocessing and tokenizer (local files only)."""

    arch: str
    sha256: str
    model: Any
    preprocess: Any
    tokenizer: Any
    _concepts: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> Any:
        import torch

        return torch.stack([self.preprocess(image) for image in images])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, float32, one row per image."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(self.preprocess_batch(images))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.numpy().astype(np.float32)

    def concept_matrix(self) -> tuple[Any, list[str]]:
        """Normalised text embeddings of every concept and neutral phrase, computed once."""
        import torch

        with self._lock:
            if self._concepts is None:
                owners = [c for c in CATEGORIES for _ in CONCEPTS[c]] + ["neutral"] * len(NEUTRAL)
                phrases = [PROMPT_TEMPLATE.format(p) for c in CATEGORIES for p in CONCEPTS[c]]
                phrases += [PROMPT_TEMPLATE.format(p) for p in NEUTRAL]
                with torch.inference_mode():
                    text = self.model.encode_text(self.tokenizer(phrases))
                    text = torch.nn.functional.normalize(text.float(), dim=-1)
                self._concepts = (text, owners)
            return self._concepts


def build_clip(arch: str, weights: Path, config: dict[str, Any] | None = None) -> Any:
    """Create an open_clip model of ``arch`` and load ``weights`` strictly (local files only)."""
    import open_clip

    if config is not None:
        _register_config(arch, config)
    model_config = open_clip.get_model_config(arch)
    if model_config is None:
        raise InvalidInput(f"arch: {arch!r} is not an open_clip architecture (give --config with its JSON)")
    if model_config.get("text_cfg", {}).get("hf_tokenizer_name"):
        raise InvalidInput(f"arch: {arch!r} needs a Hugging Face tokenizer download; use an architecture with the CLIP BPE tokenizer")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights))
    except (RuntimeError, KeyError, ValueError, OSError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInput(f"weights: {weights} could not be loaded as {arch} ({first[:300]})") from None
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


def _register_config(arch: str, config: dict[str, Any]) -> None:
    import open_clip
    from open_clip import factory

    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise InvalidInput("config: must be an open_clip model config with 'embed_dim', 'vision_cfg' and 'text_cfg'")
    factory._MODEL_CONFIGS[arch] = config
    assert open_clip.get_model_config(arch) is not None


class ClipConceptDetector:
    """Zero-shot concept screening with an imported open_clip model."""

    categories = CATEGORIES

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip
        self.name = "clip"

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        return self.score_embeddings(self.clip.encode_images(images))

    def score_embeddings(self, embeddings: np.ndarray) -> list[dict[str, float]]:
        import torch

        text, owners = self.clip.concept_matrix()
        scale = float(self.clip.model.logit_scale.exp().item()) if hasattr(self.clip.model, "logit_scale") else 100.0
        probabilities = torch.softmax(scale * torch.from_numpy(embeddings) @ text.T, dim=-1).numpy()
        columns = {c: [i for i, owner in enumerate(owners) if owner == c] for c in CATEGORIES}
        return [{c: round(float(row[columns[c]].sum()), 6) for c in CATEGORIES} for row in probabilities]


# --- Stable Diffusion safety checker ------------------------------------------------------------


class SafetyCheckerDetector:
    """The diffusers ``StableDiffusionSafetyChecker`` from a local folder; covers ``sexual``."""

    categories = ("sexual",)
    name = "safety_checker"

    def __init__(self, path: Path) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        folder = path / "safety_checker" if (path / "safety_checker" / "config.json").exists() else path
        if not (folder / "config.json").exists():
            raise InvalidInput(f"path: {path} holds no safety checker (config.json) in diffusers format")
        try:
            self.model = StableDiffusionSafetyChecker.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError, RuntimeError) as error:
            raise InvalidInput(f"path: {folder} could not be loaded as a safety checker ({str(error)[:300]})") from None
        extractor = next((p for p in (folder.parent / "feature_extractor", folder / "feature_extractor", folder)
                          if (p / "preprocessor_config.json").exists()), None)
        if extractor is not None:
            self.processor = CLIPImageProcessor.from_pretrained(str(extractor), local_files_only=True)
        else:
            size = int(self.model.config.vision_config.image_size)
            self.processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        model = self.model
        with torch.inference_mode():
            embeds = model.visual_projection(model.vision_model(pixels)[1])
            embeds = torch.nn.functional.normalize(embeds.float(), dim=-1)
            concept = embeds @ torch.nn.functional.normalize(model.concept_embeds.float(), dim=-1).T
            special = embeds @ torch.nn.functional.normalize(model.special_care_embeds.float(), dim=-1).T
            special_hit = ((special - model.special_care_embeds_weights) > 0).any(dim=-1, keepdim=True)
            # The checker lowers its bar by 0.01 once a special-care concept is present.
            margin = (concept - model.concept_embeds_weights + 0.01 * special_hit).max(dim=-1).values
        # margin > 0 is the checker's own "NSFW" decision; map it around 0.5 on a 0..1 scale.
        return [{"sexual": round(float(np.clip(0.5 + 5.0 * m, 0.0, 1.0)), 6)} for m in margin.tolist()]


# --- NudeNet ----------------------------------------------------------------------------------


class NudeNetDetector:
    """NudeNet's bundled ONNX detector (optional extra, AGPL-3.0); covers ``sexual``."""

    categories = ("sexual",)
    name = "nudenet"

    def __init__(self) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError:
            raise InvalidInput(
                "detector: nudenet is not installed; install the optional extra 'latentops[nudenet]' "
                "(AGPL-3.0 licensed) to use it"
            ) from None
        self.detector = NudeDetector()

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        results = []
        for image in images:
            bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
            found = self.detector.detect(bgr)
            exposed = [float(d["score"]) for d in found if d.get("class") in NUDENET_EXPOSED]
            results.append({"sexual": round(max(exposed, default=0.0), 6)})
        return results


# --- nsfwjs -------------------------------------------------------------------------------------


@dataclass
class NsfwjsModel:
    """A converted nsfwjs model (``governance/nsfwjs.py``) and its manifest."""

    folder: Path
    manifest: dict[str, Any]
    model: Any

    def probabilities(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Class probabilities, one row per image, columns in ``nsfwjs.CLASSES`` order."""
        import torch

        with torch.inference_mode():
            return self.model(nsfwjs_preprocess(images)).numpy().astype(np.float64)


_nsfwjs_cache: dict[tuple[str, int, int], NsfwjsModel] = {}
_nsfwjs_lock = threading.Lock()


def load_nsfwjs(folder: Path) -> NsfwjsModel:
    """Load a converted model once per process (keyed by folder and file times); checks the weights' sha256."""
    from safetensors.torch import load as load_state

    manifest_path, weights_path = folder / nsfwjs.MANIFEST, folder / nsfwjs.WEIGHTS
    try:
        key = (str(folder.resolve()), manifest_path.stat().st_mtime_ns, weights_path.stat().st_mtime_ns)
    except OSError:
        raise InvalidInput(f"nsfwjs: {folder} holds no converted model ({nsfwjs.MANIFEST} and {nsfwjs.WEIGHTS}); "
                           f"convert one with python -m latentops.governance.nsfwjs convert") from None
    with _nsfwjs_lock:
        if key not in _nsfwjs_cache:
            manifest = nsfwjs.read_manifest(folder)
            assert manifest is not None
            data = weights_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != manifest.get("weights_sha256"):
                raise InvalidInput(f"nsfwjs: {weights_path} does not match the sha256 in {manifest_path}; convert again")
            model = nsfwjs.build(manifest["layers"])
            model.load_state_dict(load_state(data), strict=True)
            _nsfwjs_cache[key] = NsfwjsModel(folder, manifest, model)
        return _nsfwjs_cache[key]


def nsfwjs_preprocess(images: Sequence[Image.Image | np.ndarray]) -> Any:
    """nsfwjs's own preprocessing: RGB / 255, then, unless already 224 x 224, a bilinear resize with
    aligned corners (``tf.image.resizeBilinear(x, [224, 224], true)``). Arrays are HWC RGB on the 0-255
    scale. Returns NCHW float32."""
    import torch

    size = nsfwjs.IMAGE_SIZE
    batch = []
    for image in images:
        pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None] / 255.0
        if tensor.shape[-2:] != (size, size):
            tensor = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=True)
        batch.append(tensor)
    return torch.cat(batch) if batch else torch.zeros(0, 3, size, size)


def nsfwjs_sexual(probabilities: np.ndarray) -> np.ndarray:
    """The ``sexual`` score: ``P(Porn) + P(Hentai) + 0.5 * P(Sexy)``, within [0, 1]."""
    weights = np.array([nsfwjs.SEXUAL_WEIGHTS.get(c, 0.0) for c in nsfwjs.CLASSES])
    return np.clip(probabilities @ weights, 0.0, 1.0)


class NsfwjsDetector:
    """nsfwjs's MobileNetV2, converted from the npm package (MIT); covers ``sexual``."""

    name = "nsfwjs"
    categories = ("sexual",)

    def __init__(self, folder: Path) -> None:
        self.model = load_nsfwjs(folder)

    def score(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        if not images:
            return []
        return [{"sexual": round(float(s), 6)} for s in nsfwjs_sexual(self.model.probabilities(images))]


# --- configuration on disk ----------------------------------------------------------------------

KINDS = ("safety_checker", "nudenet", "nsfwjs")
# The categories each detector covers, by name.
COVERAGE: dict[str, tuple[str, ...]] = {
    "clip": ClipConceptDetector.categories, "safety_checker": SafetyCheckerDetector.categories,
    "nudenet": NudeNetDetector.categories, "nsfwjs": NsfwjsDetector.categories,
}


def read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: must hold a JSON object")
    return data
