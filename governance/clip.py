"""The CLIP model that screening and the copyright index share, loaded from the home.

``screening.import_clip`` stores the weights and their manifest under
``LATENTOPS_HOME/screening/clip``; ``load_clip`` builds the model from them once per process and
weights hash. Both ``screening`` (content concepts) and ``copyright`` (reference embeddings) use it.

``fetch_pretrained`` resolves one of open_clip's published checkpoints (``ARCH/TAG``, e.g.
``ViT-B-32/laion2b_s34b_b79k``) through open_clip's own registry and loader, which downloads it from
the Hugging Face Hub (or the checkpoint's URL) into a cache and returns the local file; the import
itself then goes through ``screening.import_clip`` like any local file. ``HF_HUB_OFFLINE=1`` with a
pre-filled cache (``HF_HUB_CACHE``) fetches without the network.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentops.core.errors import InvalidInput, ServiceUnavailable
from latentops.core.settings import Settings
from latentops.governance import detectors
from latentops.governance.detectors import ClipModel


def screening_dir(settings: Settings) -> Path:
    return settings.home / "screening"


def clip_dir(settings: Settings) -> Path:
    return screening_dir(settings) / "clip"


def clip_manifest(settings: Settings) -> dict[str, Any] | None:
    return detectors.read_config(clip_dir(settings) / "clip.json") or None


_clip_cache: dict[str, ClipModel] = {}
_clip_lock = threading.Lock()


def load_clip(settings: Settings) -> ClipModel | None:
    """The imported CLIP model (cached per process and weights hash), or ``None`` when none is imported."""
    manifest = clip_manifest(settings)
    if manifest is None:
        return None
    key = f"{clip_dir(settings)}:{manifest['sha256']}"
    with _clip_lock:
        if key not in _clip_cache:
            model, preprocess, tokenizer = detectors.build_clip(
                manifest["arch"], clip_dir(settings) / manifest["weights"], manifest.get("config"))
            _clip_cache[key] = ClipModel(manifest["arch"], manifest["sha256"], model, preprocess, tokenizer)
        return _clip_cache[key]


# --- open_clip's published checkpoints ------------------------------------------------------------

LIST_HINT = "latentops screening import-clip --list-pretrained"


@dataclass(frozen=True)
class Fetched:
    """A published checkpoint resolved to a local file; ``source`` says where it came from."""

    arch: str
    tag: str
    path: Path
    source: str


def _usable(model_config: dict[str, Any] | None) -> bool:
    """Screening builds the model offline: the architecture must use CLIP's bundled BPE tokenizer."""
    return model_config is not None and not model_config.get("text_cfg", {}).get("hf_tokenizer_name")


def pretrained_names() -> list[str]:
    """``ARCH/TAG`` of every checkpoint in open_clip's registry that screening can use."""
    import open_clip

    return [f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained() if _usable(open_clip.get_model_config(arch))]


def _split(name: str) -> tuple[str, str]:
    arch, _, tag = name.strip().partition("/")
    if not arch or not tag or "/" in tag:
        raise InvalidInput(f"pretrained: {name!r} is not ARCH/TAG (e.g. ViT-B-32/laion2b_s34b_b79k); "
                           f"list the names with {LIST_HINT}")
    return arch, tag


def pretrained_source(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's registry entry for ``arch``/``tag``; ``InvalidInput`` naming how to list valid names."""
    import open_clip
    from open_clip import pretrained

    tags = pretrained.list_pretrained_tags_by_model(arch)
    if not tags:
        raise InvalidInput(f"pretrained: open_clip publishes no weights for architecture {arch!r}; "
                           f"list the names with {LIST_HINT}")
    if not pretrained.is_pretrained_cfg(arch, tag):
        shown = ", ".join(tags[:8]) + (f" and {len(tags) - 8} more" if len(tags) > 8 else "")
        raise InvalidInput(f"pretrained: {arch} has no published weights tagged {tag!r} (it has {shown}); "
                           f"list every name with {LIST_HINT}")
    if not _usable(open_clip.get_model_config(arch)):
        raise InvalidInput(f"pretrained: {arch} needs a Hugging Face tokenizer download; choose an architecture with "
                           f"the CLIP BPE tokenizer ({LIST_HINT})")
    return dict(pretrained.get_pretrained_cfg(arch, tag))


def _where(entry: dict[str, Any]) -> str:
    from open_clip import pretrained

    if entry.get("file"):
        return str(entry["file"])
    if entry.get("hf_hub") and pretrained.has_hf_hub():
        return f"the Hugging Face Hub ({str(entry['hf_hub']).rstrip('/')})"
    return str(entry.get("url") or "nowhere")


def _cause(error: Exception) -> str:
    """The first sentence of the underlying error (open_clip wraps the Hub's as ``... Last error: ...``)."""
    text = str(error).strip().partition("Last error:")[2].strip() or str(error).strip() or type(error).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")[:300]


def fetch_pretrained(name: str, *, cache_dir: Path | None = None) -> Fetched:
    """Resolve ``ARCH/TAG`` in open_clip's registry and fetch its weights with open_clip's loader.

    ``cache_dir``: where the download is kept; ``None`` is Hugging Face's own cache (``HF_HUB_CACHE``,
    honouring ``HF_HUB_OFFLINE``) for Hub checkpoints and ``~/.cache/clip`` for URL ones. A fetch that
    fails (no network, not in the offline cache) raises ``ServiceUnavailable`` naming the source.
    """
    from open_clip import pretrained

    arch, tag = _split(name)
    entry = pretrained_source(arch, tag)
    source = _where(entry)
    try:
        target = pretrained.download_pretrained(entry, cache_dir=str(cache_dir) if cache_dir is not None else None)
    except (OSError, RuntimeError, ValueError) as error:
        raise ServiceUnavailable(
            f"pretrained: could not fetch {arch}/{tag} from {source} ({_cause(error)}); on a machine without network "
            f"access copy the weights file over and import it with --weights FILE --arch {arch}") from None
    if not target or not Path(target).is_file():
        raise ServiceUnavailable(f"pretrained: {arch}/{tag} gave no weights file from {source}; "
                                 f"import a local copy with --weights FILE --arch {arch}")
    return Fetched(arch=arch, tag=tag, path=Path(target), source=source)
