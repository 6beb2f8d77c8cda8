"""The generation engine: weights from the model store (+ LoRA adapters) into a diffusers pipeline.

This is internal machinery. Users reach it only through the governed generation path, which asks
the policy engine, screens the output and records provenance; that path calls :meth:`Engine.generate`.

* Loading: a stored diffusers folder loads with ``DiffusionPipeline.from_pretrained`` from local
  files only. On CUDA the weights run in bf16 (fp16 where the card has no bf16); on CPU in fp32.
* Cache: loaded pipelines stay in a process-level LRU cache keyed by weights hash, adapters, device
  and dtype. When the estimated size of the cached pipelines exceeds the memory budget, the least
  recently used ones are dropped (the one just used always stays).
* Seeds: image ``i`` of a request uses its own generator seeded ``seed + i``, so an image depends on
  its seed, not on its position in a batch; on CPU the same request gives the same pixels.
* Schedulers are chosen by name per request; the pipeline's own scheduler is restored otherwise.
"""

from __future__ import annotations

import collections
import functools
import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from latentops.core.errors import InvalidInput

if TYPE_CHECKING:  # torch loads lazily: importing this module must stay cheap
    import torch

logger = logging.getLogger(__name__)

# Names accepted in GenerationRequest.scheduler -> (diffusers class, extra config).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
FLOW_FAMILIES = frozenset({"sd3", "flux"})
FLOW_SCHEDULERS = frozenset({"flow_euler"})
MAX_BATCH = 64


@dataclass(frozen=True)
class WeightsRef:
    """Where a model version's weights are and what they are; built from a ``ModelVersion`` row."""

    content_hash: str
    path: Path
    family: str
    format: str = "diffusers"


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter (a folder or file readable by ``load_lora_weights``) and its strength."""

    content_hash: str
    path: Path
    scale: float = 1.0


@dataclass
class GenerationRequest:
    prompts: list[str]
    negative_prompt: str | None = None
    images_per_prompt: int = 1
    steps: int = 20
    guidance_scale: float = 5.0
    scheduler: str | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, family: str) -> None:
        if not self.prompts or any(not isinstance(p, str) for p in self.prompts):
            raise InvalidInput("prompts: give at least one prompt (text)")
        if not 1 <= self.images_per_prompt <= MAX_BATCH or len(self.prompts) * self.images_per_prompt > MAX_BATCH:
            raise InvalidInput(f"images_per_prompt: a request may produce 1..{MAX_BATCH} images")
        if not 1 <= self.steps <= 500:
            raise InvalidInput(f"steps: must be 1..500, got {self.steps}")
        if not 0.0 <= self.guidance_scale <= 50.0:
            raise InvalidInput(f"guidance_scale: must be 0..50, got {self.guidance_scale}")
        if not 0 <= self.seed < 2**63 - MAX_BATCH:
            raise InvalidInput(f"seed: must be a non-negative 63-bit integer, got {self.seed}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value > 4096 or value % 8):
                raise InvalidInput(f"{name}: must be a multiple of 8 between 8 and 4096, got {value}")
        if self.scheduler is not None:
            if self.scheduler not in SCHEDULERS:
                raise InvalidInput(f"scheduler: unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
            if (family in FLOW_FAMILIES) != (self.scheduler in FLOW_SCHEDULERS):
                kind = "flow-matching" if family in FLOW_FAMILIES else "noise-prediction"
                raise InvalidInput(f"scheduler: {self.scheduler!r} does not fit {family}, a {kind} model")


def default_device() -> torch.device:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    import torch

    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def pipeline_bytes(pipeline: Any) -> int:
    """Bytes held by a pipeline's parameters and buffers (the cache's size estimate)."""
    import torch

    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


def default_budget(device: torch.device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


@dataclass
class _Entry:
    pipeline: Any
    size: int
    scheduler_config: Any
    scheduler_class: Any  # a diffusers scheduler class


CacheKey = tuple[str, tuple[str, ...], str, str]


class PipelineCache:
    """LRU of loaded pipelines bounded by a memory budget in bytes. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: collections.OrderedDict[CacheKey, _Entry] = collections.OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: CacheKey, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.used_bytes > self.budget_bytes:
                evicted, _ = self._entries.popitem(last=False)
                logger.info("evicted pipeline %s from the cache (budget %d bytes)", evicted[0][:12], self.budget_bytes)
            gc.collect()

    def keys_in_order(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    @property
    def used_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            gc.collect()


class Engine:
    """Loads and runs pipelines on one device, sharing a cache."""

    def __init__(
        self,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache: PipelineCache | None = None,
    ) -> None:
        import torch

        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.cache = cache or PipelineCache(default_budget(self.device))
        self._lock = threading.Lock()

    # 1. loading ---------------------------------------------------------------------------------
    def _key(self, weights: WeightsRef, adapters: Sequence[AdapterRef]) -> CacheKey:
        return (weights.content_hash, tuple(a.content_hash for a in adapters), str(self.device), str(self.dtype))

    def load(self, weights: WeightsRef, adapters: Sequence[AdapterRef] = ()) -> Any:
        """The pipeline for ``weights`` + ``adapters``, from the cache or loaded from disk."""
        return self._entry(weights, adapters).pipeline

    def _entry(self, weights: WeightsRef, adapters: Sequence[AdapterRef]) -> _Entry:
        key = self._key(weights, adapters)
        entry = self.cache.get(key)
        if entry is None:
            entry = self._load(weights, adapters)
            self.cache.put(key, entry)
        return entry

    def _load(self, weights: WeightsRef, adapters: Sequence[AdapterRef]) -> _Entry:
        import diffusers
        import transformers
        from diffusers import DiffusionPipeline

        # Loading local weights takes about a second; the libraries' own loading bars only clutter
        # the CLI and worker logs (callers show progress of the work itself).
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        if weights.format != "diffusers":
            raise InvalidInput(
                f"weights: {weights.content_hash[:12]} is a single-file {weights.format} checkpoint; the engine "
                "runs diffusers folders (convert the checkpoint to a diffusers folder and import that)"
            )
        if not (weights.path / "model_index.json").exists():
            raise InvalidInput(f"{weights.path}: stored weights are missing (no model_index.json)")
        started = time.perf_counter()
        pipeline = DiffusionPipeline.from_pretrained(
            str(weights.path), **{dtype_argument(): self.dtype}, local_files_only=True
        )
        for adapter in adapters:
            pipeline.load_lora_weights(str(adapter.path), adapter_name=_adapter_name(adapter))
        pipeline.to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        logger.info("loaded %s pipeline %s in %.2fs", weights.family, weights.content_hash[:12], time.perf_counter() - started)
        return _Entry(pipeline, pipeline_bytes(pipeline), pipeline.scheduler.config, type(pipeline.scheduler))

    # 2. generation ------------------------------------------------------------------------------
    def generate(
        self, weights: WeightsRef, request: GenerationRequest, adapters: Sequence[AdapterRef] = ()
    ) -> list[Image.Image]:
        """Images for ``request``: ``images_per_prompt`` per prompt, in prompt order."""
        request.validate(weights.family)
        entry = self._entry(weights, adapters)
        pipeline = entry.pipeline
        # The pipeline object is shared: one request at a time may set its scheduler and adapters.
        with self._lock:
            self._set_scheduler(pipeline, entry, request.scheduler)
            if adapters:
                pipeline.set_adapters([_adapter_name(a) for a in adapters], adapter_weights=[a.scale for a in adapters])
            return self._run(pipeline, weights.family, request)

    def _set_scheduler(self, pipeline: Any, entry: _Entry, name: str | None) -> None:
        import diffusers

        if name is None:
            if type(pipeline.scheduler) is not entry.scheduler_class or pipeline.scheduler.config != entry.scheduler_config:
                pipeline.scheduler = entry.scheduler_class.from_config(entry.scheduler_config)
            return
        class_name, extra = SCHEDULERS[name]
        pipeline.scheduler = getattr(diffusers, class_name).from_config(entry.scheduler_config, **extra)

    def _run(self, pipeline: Any, family: str, request: GenerationRequest) -> list[Image.Image]:
        import torch

        from latentops.pipelines.tokenizers import clean_prompt

        count = len(request.prompts) * request.images_per_prompt
        generator_device = "cpu" if self.device.type == "cpu" else self.device
        generators = [torch.Generator(generator_device).manual_seed(request.seed + i) for i in range(count)]
        kwargs: dict[str, Any] = {
            "prompt": [clean_prompt(p) for p in request.prompts],
            "num_images_per_prompt": request.images_per_prompt,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "generator": generators,
            "height": request.height,
            "width": request.width,
            **request.extra,
        }
        if request.negative_prompt is not None:
            kwargs["negative_prompt"] = [clean_prompt(request.negative_prompt)] * len(request.prompts)
            if family == "flux":
                # Flux is guidance-distilled; a negative prompt needs real classifier-free guidance.
                kwargs["true_cfg_scale"] = max(request.guidance_scale, 1.0)
        with torch.inference_mode():
            images: list[Image.Image] = pipeline(**kwargs).images
        return images


@functools.cache
def dtype_argument() -> str:
    """The keyword ``from_pretrained`` takes for the dtype in this diffusers version."""
    # diffusers renamed ``torch_dtype`` to ``dtype`` (0.42 warns on the old name).
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _adapter_name(adapter: AdapterRef) -> str:
    return f"lora_{adapter.content_hash[:16]}"


_default_engine: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine (one cache per process, on the best device available)."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = Engine()
        return _default_engine
