"""The ``diagnostics`` job: proves a worker can run model code end to end.

It reports the worker's accelerator and library versions and runs a small seeded denoising
loop with torch, reporting progress per step like any long job.
"""

from __future__ import annotations

import platform
from typing import Any

from latentops.platform.services.jobs import JobContext


def run(ctx: JobContext) -> dict[str, Any]:
    import torch

    steps = int(ctx.params.get("steps", 20))
    if not 1 <= steps <= 10_000:
        raise ValueError(f"steps: must be between 1 and 10000, got {steps}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(int(ctx.params.get("seed", 0)))
    clean = torch.linspace(-1.0, 1.0, 256)
    sample = torch.randn(256, generator=generator)
    initial_error = float(torch.mean((sample - clean) ** 2))
    # Move a noisy signal 20% of the way toward the clean one per step: a stand-in for a denoising
    # loop whose squared error must shrink by exactly 0.8**2 per step on any healthy device.
    for step in range(1, steps + 1):
        ctx.check_cancelled()
        sample = (sample.to(device) + (clean.to(device) - sample.to(device)) * 0.2).cpu()
        error = float(torch.mean((sample - clean) ** 2))
        ctx.progress(step, steps, loss=error)
    ctx.log(f"diagnostics finished on {device}")
    return {
        "device": device,
        "cuda_devices": torch.cuda.device_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "initial_error": initial_error,
        "final_error": error,
        "steps": steps,
    }
