"""The model store: content-addressed weights on local disk, imported from local files only.

A source is either a diffusers folder (``model_index.json`` plus component folders) or a single-file
checkpoint (``.safetensors``; pickle-based ``.ckpt``/``.pt`` only when the caller allows pickle,
because unpickling runs arbitrary code). Nothing is ever downloaded: hub ids and URLs are refused.

Identity is the SHA-256 over the tensors (name, dtype, shape and bytes of every tensor, files in
path order), so the same weights have the same identity whatever their container. Each identity is
stored once, under ``<root>/<hash>/``; importing it again, under any name, reuses that copy.

Reading every tensor to hash it is also the integrity check: a corrupt or truncated file fails
here, with its name, before anything is copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from latentops.core.errors import Conflict, InvalidInput

if TYPE_CHECKING:  # torch loads lazily: importing this module must stay cheap
    import torch

logger = logging.getLogger(__name__)

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
WeightsFormat = Literal["diffusers", "safetensors", "ckpt"]
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Files of a diffusers folder that say how tensors are used; hashed separately from the weights.
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


@dataclass(frozen=True)
class Inspection:
    """What a source holds, learnt without copying it."""

    source: Path
    format: WeightsFormat
    family: str
    content_hash: str
    config_hash: str
    size_bytes: int
    details: dict[str, Any] = field(default_factory=dict)


# --- source checks ----------------------------------------------------------------------------


def resolve_source(source: str | Path) -> Path:
    """A local path, or a clear refusal for URLs, hub ids and missing files."""
    text = str(source).strip()
    if _URL_RE.match(text):
        raise InvalidInput(
            f"source: {text!r} is a URL; latentops never downloads weights at run time. "
            "Download the files yourself, check them, and import the local path."
        )
    path = Path(text).expanduser()
    if not path.exists():
        if _HUB_ID_RE.match(text):
            raise InvalidInput(
                f"source: {text!r} looks like a Hugging Face hub id, and no such local path exists; "
                "latentops never downloads weights at run time. Download the model folder yourself and "
                "import its local path."
            )
        raise InvalidInput(f"source: {text!r} does not exist")
    return path.resolve()


# --- hashing ----------------------------------------------------------------------------------


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode()
    digest.update(header)
    digest.update(_tensor_bytes(tensor))


def _safetensors_keys_and_hash(path: Path, digest: Any, prefix: str) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = sorted(handle.keys())
            for key in keys:
                _update(digest, f"{prefix}{key}", handle.get_tensor(key))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors for bad or short files
        raise InvalidInput(f"{path}: corrupt or truncated safetensors file ({error})") from None
    return keys


def _load_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    logger.warning("unpickling %s: pickle checkpoints can run code; allowed explicitly by the caller", path)
    try:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - checkpoints with non-tensor objects need full unpickling (allowed)
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling can fail in any way; report it against the file
        raise InvalidInput(f"{path}: corrupt or truncated checkpoint ({type(error).__name__}: {error})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise InvalidInput(f"{path}: holds no state dict (found {type(loaded).__name__})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidInput(f"{path}: holds no tensors")
    return tensors


def _config_hash(folder: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- family detection -------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a JSON object")
    return data


def family_of_diffusers(folder: Path) -> str:
    """sd1/sd2/sdxl/sd3/flux from ``model_index.json`` and the denoiser's config."""
    index = _read_json(folder / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    unet = _read_json(folder / "unet" / "config.json") if (folder / "unet" / "config.json").exists() else {}
    transformer = (
        _read_json(folder / "transformer" / "config.json") if (folder / "transformer" / "config.json").exists() else {}
    )
    denoiser = str(transformer.get("_class_name") or unet.get("_class_name") or "")
    if pipeline.startswith("Flux") or denoiser == "FluxTransformer2DModel":
        return "flux"
    if pipeline.startswith("StableDiffusion3") or denoiser == "SD3Transformer2DModel":
        return "sd3"
    if pipeline.startswith("StableDiffusionXL") or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    if pipeline.startswith("StableDiffusion") and denoiser == "UNet2DConditionModel":
        # SD 2.x conditions on OpenCLIP ViT-H (1024 wide); SD 1.x on CLIP ViT-L (768) or narrower. SD 2.x
        # UNets (base and 768-v) also project into attention with linear layers, SD 1.x with 1x1 convolutions:
        # that tells them apart at any width (the tiny models, pruned or distilled variants).
        sd2 = unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection") is True
        return "sd2" if sd2 else "sd1"
    raise InvalidInput(
        f"{folder}: unknown architecture: pipeline {pipeline or '<none>'!r} with denoiser {denoiser or '<none>'!r}; "
        f"supported families are {', '.join(FAMILIES)}"
    )


def family_of_checkpoint(path: Path, keys: list[str], shapes: dict[str, tuple[int, ...]]) -> str:
    """sd1/sd2/sdxl/sd3/flux from the tensor names of an original (non-diffusers) checkpoint."""
    if any("double_blocks." in key for key in keys) and any("single_blocks." in key for key in keys):
        return "flux"
    if any("joint_blocks." in key for key in keys):
        return "sd3"
    if any(key.startswith("conditioner.embedders.") for key in keys) or "model.diffusion_model.label_emb.0.0.weight" in keys:
        return "sdxl"
    if any(key.startswith("model.diffusion_model.input_blocks.") for key in keys):
        if any(key.startswith("cond_stage_model.model.") for key in keys):
            return "sd2"
        context = [shape for key, shape in shapes.items() if key.endswith("attn2.to_k.weight") and len(shape) == 2]
        return "sd2" if context and context[0][1] == 1024 else "sd1"
    sample = ", ".join(keys[:5]) or "no tensors"
    raise InvalidInput(
        f"{path}: unknown architecture: tensor names match no supported family ({', '.join(FAMILIES)}); "
        f"found {len(keys)} tensors, e.g. {sample}"
    )


# --- the store --------------------------------------------------------------------------------


class ModelStore:
    """Content-addressed weights under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, content_hash: str) -> Path:
        return self.root / content_hash

    def inspect(self, source: str | Path, *, allow_pickle: bool = False) -> Inspection:
        """Validate a local source, detect its family and hash its tensors; copies nothing."""
        path = resolve_source(source)
        if path.is_dir():
            return self._inspect_folder(path, allow_pickle=allow_pickle)
        return self._inspect_file(path, allow_pickle=allow_pickle)

    def _inspect_folder(self, folder: Path, *, allow_pickle: bool) -> Inspection:
        if not (folder / "model_index.json").exists():
            raise InvalidInput(f"{folder}: not a diffusers folder (no model_index.json) and not a checkpoint file")
        family = family_of_diffusers(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise InvalidInput(
                f"{pickles[0]}: pickle weights can run arbitrary code when loaded; convert them to "
                "safetensors, or import with --allow-pickle if you trust the source"
            )
        weights = [p for p in files if p.suffix == ".safetensors" or p.suffix in PICKLE_SUFFIXES]
        if not weights:
            raise InvalidInput(f"{folder}: holds no weight files (*.safetensors)")
        digest = hashlib.sha256()
        for weight in weights:
            prefix = f"{weight.parent.relative_to(folder)}/"
            if weight.suffix == ".safetensors":
                _safetensors_keys_and_hash(weight, digest, prefix)
            else:
                for key, tensor in sorted(_load_pickle_state(weight).items()):
                    _update(digest, f"{prefix}{key}", tensor)
        configs = [p for p in files if p.suffix in _CONFIG_SUFFIXES]
        for component in _read_json(folder / "model_index.json"):
            if not component.startswith("_") and not (folder / component).exists():
                value = _read_json(folder / "model_index.json")[component]
                if isinstance(value, list) and value and value[0] is not None:
                    raise InvalidInput(f"{folder / component}: component listed in model_index.json is missing")
        return Inspection(
            source=folder, format="diffusers", family=family, content_hash=digest.hexdigest(),
            config_hash=_config_hash(folder, configs), size_bytes=sum(p.stat().st_size for p in files),
            details={"pipeline": _read_json(folder / "model_index.json").get("_class_name"), "pickle": bool(pickles)},
        )

    def _inspect_file(self, path: Path, *, allow_pickle: bool) -> Inspection:
        digest = hashlib.sha256()
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            keys = _safetensors_keys_and_hash(path, digest, "")
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in keys if key.endswith("to_k.weight")}
            fmt: WeightsFormat = "safetensors"
        elif path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise InvalidInput(
                    f"{path}: {path.suffix} checkpoints are Python pickles, and unpickling can run arbitrary code; "
                    "convert to .safetensors, or import with --allow-pickle if you trust the source"
                )
            tensors = _load_pickle_state(path)
            keys = sorted(tensors)
            for key in keys:
                _update(digest, key, tensors[key])
            shapes = {key: tuple(tensors[key].shape) for key in keys}
            fmt = "ckpt"
        else:
            raise InvalidInput(
                f"{path}: unsupported file type {path.suffix or '<none>'!r}; import a diffusers folder, "
                "a .safetensors file, or a .ckpt with --allow-pickle"
            )
        family = family_of_checkpoint(path, keys, shapes)
        return Inspection(
            source=path, format=fmt, family=family, content_hash=digest.hexdigest(), config_hash="",
            size_bytes=path.stat().st_size, details={"tensors": len(keys)},
        )

    def put(self, inspection: Inspection) -> tuple[Path, bool]:
        """Store the inspected source under its hash; returns (path, copied). Never stores twice."""
        target = self.path_for(inspection.content_hash)
        if target.exists():
            existing = self._existing_config_hash(target)
            if inspection.format == "diffusers" and existing and existing != inspection.config_hash:
                raise Conflict(
                    f"{inspection.source}: these weights are already stored (sha256 {inspection.content_hash[:12]}) "
                    "with different configuration files; import a folder whose configs match the stored copy"
                )
            return target, False
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root))
        try:
            if inspection.format == "diffusers":
                shutil.copytree(inspection.source, staging / "weights", ignore=shutil.ignore_patterns(".*"))
                (staging / "weights" / ".latentops-config-sha256").write_text(inspection.config_hash + "\n")
                moved = staging / "weights"
            else:
                name = "model.safetensors" if inspection.format == "safetensors" else "model.ckpt"
                (staging / "weights").mkdir()
                shutil.copyfile(inspection.source, staging / "weights" / name)
                moved = staging / "weights"
            # A rename is atomic: a crash leaves a staging folder, never a half-written store entry.
            os.replace(moved, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("stored %s weights %s at %s", inspection.family, inspection.content_hash[:12], target)
        return target, True

    @staticmethod
    def _existing_config_hash(target: Path) -> str:
        marker = target / ".latentops-config-sha256"
        return marker.read_text().strip() if marker.exists() else ""

    def weights_file(self, content_hash: str) -> Path | None:
        """The single checkpoint file of a single-file entry, or None for a diffusers folder."""
        for name in ("model.safetensors", "model.ckpt"):
            candidate = self.path_for(content_hash) / name
            if candidate.exists():
                return candidate
        return None

    def entries(self) -> Iterator[Path]:
        if self.root.exists():
            yield from (p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith("."))
