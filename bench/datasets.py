"""Benchmark: dataset generation through the governed path against the bare diffusers pipeline.

Same model, batch, steps, guidance, prompts and seeds in the same process; runs alternate (bare,
governed, bare, ...) so load drifts on a shared machine hit both alike. The governed side is the
real dataset job (``services.datasets.run``: policy decisions, engine, screening, provenance,
assets, audit, batch records, ImageFolder, manifest, card, MLflow), timed end to end into a fresh
folder each run. Target: governed overhead <= 15% at batch 16 on CPU with the demo model.

    nice -n 10 .venv/bin/python bench/datasets.py                       # demo model (committed weights)
    nice -n 10 .venv/bin/python bench/datasets.py --model tiny --steps 4  # tiny sd1 when the demo is absent
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from latentops.core.settings import get_settings
from latentops.governance import policy
from latentops.pipelines import tiny
from latentops.pipelines.datasets import spec as spec_module
from latentops.pipelines.demo import DEMO_MODEL_DIR, digits
from latentops.pipelines.engine import Engine, dtype_argument
from latentops.platform import migrate
from latentops.platform.database import session_scope
from latentops.platform.services import datasets
from latentops.platform.services import models as models_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo (committed weights) or tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2, help="batches per run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    home = Path(tempfile.mkdtemp(prefix="latentops-bench-datasets-"))
    os.environ.update({"LATENTOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    settings = get_settings()
    settings.ensure_home()
    migrate.upgrade(settings.database_url)
    if args.model == "demo":
        if not (DEMO_MODEL_DIR / "model_index.json").exists():
            raise SystemExit(f"no demo weights in {DEMO_MODEL_DIR}; run with --model tiny")
        source, name, prompt = DEMO_MODEL_DIR, "digits-demo", digits.prompt_for(7)
    else:
        source, name, prompt = tiny.create("sd1", home / "tiny"), "tiny", "a photo of a square"
    with session_scope(settings.database_url) as db:
        models_service.import_model(db, source=source, name=name, actor="cli:bench", store_root=settings.model_store,
                                    sensitivity="public")
        # The machine has no detector weights: release unscreened images so both sides make the same images.
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:bench")
    with session_scope(settings.database_url) as db:
        policy.reload(db)

    images = args.batch * args.batches
    spec = spec_module.parse({"name": "bench", "model": name, "per_class": images, "seed": 0, "steps": args.steps,
                              "guidance": args.guidance, "batch_size": args.batch,
                              "filters": {"dedupe_distance": None},
                              "classes": [{"name": "seven", "prompts": [prompt]}]})
    from diffusers import DiffusionPipeline

    bare = DiffusionPipeline.from_pretrained(str(source), **{dtype_argument(): torch.float32}, local_files_only=True)
    bare.set_progress_bar_config(disable=True)
    engine = Engine(device="cpu")

    def run_bare() -> float:
        started = time.perf_counter()
        for b in range(args.batches):
            generators = [torch.Generator("cpu").manual_seed(b * args.batch + i) for i in range(args.batch)]
            with torch.inference_mode():
                out = bare(prompt=[prompt] * args.batch, num_inference_steps=args.steps, guidance_scale=args.guidance,
                           generator=generators).images
            for i, image in enumerate(out):  # the bare side saves its images too
                image.save(home / f"bare-{i}.png")
        return time.perf_counter() - started

    def run_governed(index: int) -> float:
        started = time.perf_counter()
        datasets.run(settings, spec=spec, out=home / f"governed-{index}", actor="cli:bench", engine=engine)
        return time.perf_counter() - started

    run_bare(), run_governed(-1)  # warm-up: loads, first-use costs
    bare_times, governed_times = [], []
    for index in range(args.runs):
        bare_times.append(run_bare())
        governed_times.append(run_governed(index))
    rate = lambda t: images / t
    rows = [("bare diffusers", bare_times), ("governed dataset job", governed_times)]
    print(f"model {name}, batch {args.batch}, {args.batches} batches ({images} images), {args.steps} steps, "
          f"{torch.get_num_threads()} threads, {args.runs} runs")
    print(f"{'side':<24}{'median img/s':>14}{'best img/s':>12}{'ratio (best)':>14}")
    best_bare = min(bare_times)
    for label, times in rows:
        print(f"{label:<24}{rate(statistics.median(times)):>14.2f}{rate(min(times)):>12.2f}"
              f"{best_bare / min(times):>14.2f}")
    overhead = min(governed_times) / best_bare - 1
    print(f"governed overhead (best runs): {overhead:+.1%}  target <= +15%: {'met' if overhead <= 0.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
