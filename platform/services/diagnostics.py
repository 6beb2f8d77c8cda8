"""The ``diagnostics`` job: proves a worker can run model code end to end, and survive a crash.

It reports the worker's accelerator and library versions and runs a small seeded denoising loop
with torch, reporting progress per step like any long job. It checkpoints after every step
(write, then rename), so a job whose worker died resumes from its last step and ends with exactly
the numbers an uninterrupted run produces.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from latentops.core.errors import InvalidInput
from latentops.platform.services.jobs import JobContext

MAX_STEPS = 10_000
MAX_STEP_DELAY_S = 10.0


def validate(params: dict[str, Any]) -> None:
    """Checked at submit time, so a bad job is refused before anything is queued."""
    unknown = sorted(set(params) - {"steps", "seed", "step_delay_s"})
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown parameter for a diagnostics job")
    _validated(params)


def _validated(params: dict[str, Any]) -> tuple[int, int, float]:
    steps, seed, delay = params.get("steps", 20), params.get("seed", 0), params.get("step_delay_s", 0.0)
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInput(f"steps: must be an integer between 1 and {MAX_STEPS}, got {steps!r}")
    if not isinstance(seed, int):
        raise InvalidInput(f"seed: must be an integer, got {seed!r}")
    if not isinstance(delay, int | float) or not 0 <= delay <= MAX_STEP_DELAY_S:
        raise InvalidInput(f"step_delay_s: must be between 0 and {MAX_STEP_DELAY_S}, got {delay!r}")
    return steps, seed, float(delay)


def _save(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)  # atomic: a crash leaves the previous checkpoint or the new one


def run(ctx: JobContext) -> dict[str, Any]:
    import torch

    steps, seed, delay = _validated(ctx.params)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(seed)
    clean = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)
    sample = torch.randn(256, generator=generator, dtype=torch.float64)
    initial_error = float(torch.mean((sample - clean) ** 2))
    checkpoint = ctx.workdir / "checkpoint.json"
    start = 0
    if checkpoint.exists():
        try:
            state = json.loads(checkpoint.read_text())
            start, sample = int(state["step"]), torch.tensor(state["sample"], dtype=torch.float64)
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInput(f"checkpoint {checkpoint}: unreadable ({error}); retry after removing it") from None
        ctx.log(f"resuming from checkpoint at step {start}")
    mse = float(torch.mean((sample - clean) ** 2))
    # Move a noisy signal 20% of the way toward the clean one per step: a stand-in for a denoising
    # loop whose squared error must shrink by exactly 0.8**2 per step on any healthy device.
    for step in range(start + 1, steps + 1):
        ctx.check_cancelled()
        sample = (sample.to(device) + (clean.to(device) - sample.to(device)) * 0.2).cpu()
        mse = float(torch.mean((sample - clean) ** 2))
        _save(checkpoint, {"step": step, "sample": sample.tolist()})
        ctx.progress(step, steps, loss=mse)
        if delay:
            time.sleep(delay)
    ctx.log(f"diagnostics finished on {device}")
    return {
        "device": device,
        "cuda_devices": torch.cuda.device_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "initial_error": initial_error,
        "final_error": mse,
        "steps": steps,
        "resumed_from": start,
        "worker": ctx.worker,
    }
