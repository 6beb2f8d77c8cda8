"""What a training run is given by its caller and gives back.

The caller passes ``Hooks`` (progress, log lines, cancellation) and optionally a ``Tracker``
(MLflow); a run returns a ``TrainingResult``. ``PriorData`` is DreamBooth's class-image set.
These live apart from the recipe (``lora``) so that the process launcher (``launcher``) and the
training processes (``distributed``), which the recipe calls, can name them without importing the
recipe.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from latentops.pipelines.finetune.config import LoraConfig

logger = logging.getLogger(__name__)

VALIDATION_IMAGES = "validation_images"  # the metric that says a step's validation images are on disk
METRICS_FLUSH_S = 1.0  # a tracker's metrics wait at most about this long before they are sent


class Hooks(Protocol):
    """What the caller sees of a run: the CLI shows a progress bar, a job writes the database."""

    def progress(self, step: int, total: int, **metrics: float) -> None: ...
    def log(self, message: str) -> None: ...
    def check_cancelled(self) -> None: ...


class QuietHooks:
    def progress(self, step: int, total: int, **metrics: float) -> None:
        pass

    def log(self, message: str) -> None:
        logger.info("%s", message)

    def check_cancelled(self) -> None:
        pass


class Tracker(Protocol):
    """Where a run's parameters, metrics and outputs go (MLflow). ``metrics`` may hold values back
    (``METRICS_FLUSH_S``), except a step that carries ``VALIDATION_IMAGES``; ``flush`` sends them."""

    def start(self, *, config: LoraConfig, meta: dict[str, Any], resumed_from: int) -> None: ...
    def metrics(self, step: int, values: dict[str, float]) -> None: ...
    def metrics_batch(self, entries: list[tuple[int, dict[str, float]]]) -> None: ...
    def flush(self) -> None: ...
    def finish(self, *, result: TrainingResult) -> None: ...


@dataclass
class PriorData:
    """DreamBooth's class images: prompt and folder (already generated and validated)."""

    class_prompt: str
    folder: Path
    weight: float


@dataclass
class TrainingResult:
    out_dir: Path
    weights_path: Path
    kohya_path: Path | None
    steps: int
    final_loss: float
    losses: list[float]
    resumed_from: int
    stopped_early: bool
    base_model_hash: str
    dataset_hash: str
    samples: list[Path] = field(default_factory=list)
    sample_grid: Path | None = None
    seconds_per_step: float = 0.0
    step_times: list[float] = field(default_factory=list)
    first_step_at: float = 0.0  # epoch seconds when the first step began (time to first step, from outside)
    loop_seconds: float = 0.0  # wall time of the whole loop: steps plus every per-step hook, check and write
    images_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    optimizer: str = "adamw"
    mixed_precision: str = "no"
    processes: int = 1
    effective_batch_size: int = 0  # images per step over all processes, as counted by the ranks
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss); none without a split

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "samples" else v)
                for k, v in asdict(self).items()}
