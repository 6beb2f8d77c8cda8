"""Benchmark: dataset generation through the governed path against the bare diffusers pipeline.

Same model, batch, steps, guidance, prompts and seeds in the same process; runs alternate (bare,
governed, bare, ...) so load drifts on a shared machine hit both alike. The governed side is the
real dataset job (``services.datasets.run``: policy decisions, engine, screening, provenance,
assets, audit, batch records, ImageFolder, manifest, card, MLflow), timed end to end into a fresh
folder each run. Target: governed overhead <= 15% at batch 16 on CPU with the demo model and no
content detector.

``--detector`` adds a third side, the same governed job with a content detector screening every
image (the no-detector side stays in the run as the second baseline):

* ``clip-vit-b-32-random``: an open_clip ViT-B-32 (the real layout and size, 151 M parameters)
  with random weights, nothing downloaded; its weights are saved to a file and imported with
  ``screening.import_clip``, the code ``latentops screening import-clip --weights`` runs, so the
  governed side runs real CLIP concept screening (224 px image encode) on every image.
* ``nsfwjs``: the install's converted nsfwjs MobileNetV2 (the detector in force by default).

Each governed side has its own home for its detector configuration (``LATENTOPS_HOME/screening``)
and shares the database, model store, provenance keys and MLflow store; the no-detector side turns
nsfwjs off, the CLIP side too, so each side runs exactly the detector it names.

    nice -n 5 .venv/bin/python bench/datasets.py                       # demo model (committed weights)
    nice -n 5 .venv/bin/python bench/datasets.py --detector clip-vit-b-32-random
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/datasets.py --detector clip-vit-b-32-random --threads 1
    nice -n 5 .venv/bin/python bench/datasets.py --model tiny --steps 4  # tiny sd1 when the demo is absent
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import torch

from latentops.core.settings import Settings, get_settings
from latentops.governance import nsfwjs, policy, screening
from latentops.governance.tables import ScreeningResult
from latentops.pipelines import tiny
from latentops.pipelines.datasets import spec as spec_module
from latentops.pipelines.demo import DEMO_MODEL_DIR, digits
from latentops.pipelines.engine import Engine, dtype_argument
from latentops.platform import migrate
from latentops.platform.database import session_scope
from latentops.platform.services import datasets
from latentops.platform.services import models as models_service

ACTOR = "cli:bench"
CLIP_ARCH = "ViT-B-32"
# The detector modes: what the extra governed side screens with.
DETECTORS = {
    "none": "no content detector (nsfwjs off, no CLIP)",
    "clip-vit-b-32-random": "open_clip ViT-B-32, random weights, imported with screening.import_clip",
    "nsfwjs": "nsfwjs MobileNetV2, the install's converted weights",
}


def random_clip_weights(target: Path) -> int:
    """Save a ViT-B-32 state dict with open_clip's own random initialisation (seeded; no download);
    returns its number of parameters."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_ARCH, pretrained=None)
    torch.save(model.state_dict(), target)
    return sum(p.numel() for p in model.parameters())


def detector_side(base: Settings, detector: str, facts: dict[str, Any]) -> Settings:
    """Settings whose home configures exactly ``detector``; database, models, keys and MLflow are shared.
    What the detector is goes into ``facts``."""
    home = base.home / "sides" / detector
    home.mkdir(parents=True)
    (base.home / "provenance").mkdir(exist_ok=True)
    (home / "provenance").symlink_to(base.home / "provenance")  # one signing identity for every side
    side = base.model_copy(update={"home": home})
    side.ensure_home()
    with session_scope(side.database_url) as db:
        if detector != "nsfwjs":
            screening.configure_detector(db, settings=side, kind="nsfwjs", path=None, actor=ACTOR, enabled=False)
        elif nsfwjs.read_manifest(nsfwjs.default_dir()) is None:
            raise SystemExit(f"detector nsfwjs: no converted weights in {nsfwjs.default_dir()} (make install converts them)")
        if detector == "clip-vit-b-32-random":
            weights = base.home / "clip-vit-b-32-random.pt"
            parameters = random_clip_weights(weights)
            imported = screening.import_clip(db, settings=side, arch=CLIP_ARCH, weights=weights, actor=ACTOR)
            facts.update(arch=imported["arch"], parameters=parameters, sha256=imported["sha256"])
            weights.unlink()  # the import keeps its own copy in the side's home
    wanted = {"none": [], "nsfwjs": ["nsfwjs"], "clip-vit-b-32-random": ["clip"]}[detector]
    found = screening.status(side)["detectors"]
    if found != wanted:
        raise SystemExit(f"detector {detector}: the side screens with {found or 'nothing'}, expected {wanted or 'nothing'}")
    return side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=("demo", "tiny"), help="demo (committed weights) or tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2, help="batches per run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--detector", default="none", choices=tuple(DETECTORS),
                        help="a governed side with this content detector, beside the one without")
    parser.add_argument("--threads", type=int, default=2, choices=(1, 2),
                        help="torch threads (1 on a busy machine: two threads wait on each other when one is "
                             "descheduled)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (printed) instead of removing it")
    args = parser.parse_args()
    for flag in ("batch", "batches", "steps", "runs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")  # schema hints, once per run

    home = Path(tempfile.mkdtemp(prefix="latentops-bench-datasets-"))
    try:
        report = measure(args, home)
    finally:
        if args.keep:
            print(f"home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


def measure(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    os.environ.update({"LATENTOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_home()
    migrate.upgrade(settings.database_url)
    if args.model == "demo":
        if not (DEMO_MODEL_DIR / "model_index.json").exists():
            raise SystemExit(f"model: no demo weights in {DEMO_MODEL_DIR}; run with --model tiny")
        source, name, prompt = DEMO_MODEL_DIR, "digits-demo", digits.prompt_for(7)
    else:
        source, name, prompt = tiny.create("sd1", home / "tiny"), "tiny", "a photo of a square"
    with session_scope(settings.database_url) as db:
        models_service.import_model(db, source=source, name=name, actor=ACTOR, store_root=settings.model_store,
                                    sensitivity="public")
        # The no-detector side releases unscreened images, so every side makes and releases the same images;
        # the detector sides cover what they cover, the rest is released as uncovered.
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor=ACTOR)
        policy.set_policy_data(db, key="screening.release_uncovered", value=True, actor=ACTOR)
    with session_scope(settings.database_url) as db:
        policy.reload(db)
    detector_model: dict[str, Any] = {}
    sides = {"none": detector_side(settings, "none", {})}
    if args.detector != "none":
        sides[args.detector] = detector_side(settings, args.detector, detector_model)

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

    summaries: dict[str, list[dict[str, Any]]] = {detector: [] for detector in sides}

    def governed(detector: str) -> Callable[[int], float]:
        def run(index: int) -> float:
            side = sides[detector]
            started = time.perf_counter()
            summary = datasets.run(side, spec=spec, out=home / f"governed-{detector}-{index}", actor=ACTOR,
                                   engine=engine)
            elapsed = time.perf_counter() - started
            made = summary["released"] + summary["quarantined"]
            if made != images:  # a denied class or prompt would time a job that renders nothing
                raise SystemExit(f"governed side {detector}: the job made {made} of {images} images "
                                 f"(denied: {summary['denied_classes']})")
            summaries[detector].append(summary)
            return elapsed
        return run

    labels = {"bare": "bare diffusers", "none": "governed, no detector"}
    labels.update({d: f"governed, {d}" for d in sides if d != "none"})
    runners: dict[str, Callable[[int], float]] = {"bare": lambda index: run_bare()}
    runners.update({detector: governed(detector) for detector in sides})
    for key, runner in runners.items():  # warm-up: loads, first-use costs (CLIP load, concept embeddings)
        runner(-1)
    # Wall time, and the process's CPU time (every thread): on a shared machine other work stretches
    # the wall time of whichever side it lands on, while the CPU time counts this side's own work.
    times: dict[str, list[float]] = {key: [] for key in runners}
    cpu: dict[str, list[float]] = {key: [] for key in runners}
    for index in range(args.runs):  # alternating: bare, governed without detector, governed with it, ...
        for key, runner in runners.items():
            started_cpu = time.process_time()
            times[key].append(runner(index))
            cpu[key].append(time.process_time() - started_cpu)

    with session_scope(settings.database_url) as db:
        labels_found = [str(row[0]) for row in db.scalars(sa.select(ScreeningResult.detectors))]
    screened = {label: labels_found.count(label) for label in sorted(set(labels_found))}
    rate = lambda t: images / t
    best = {key: min(values) for key, values in times.items()}
    best_cpu = {key: min(values) for key, values in cpu.items()}
    print(f"model {name}, batch {args.batch}, {args.batches} batches ({images} images), {args.steps} steps, "
          f"{torch.get_num_threads()} threads, {args.runs} runs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'side':<34}{'median img/s':>14}{'best img/s':>12}{'ratio (best)':>14}{'ms/img (best)':>15}"
          f"{'CPU ms/img':>12}{'CPU ratio':>11}")
    for key, values in times.items():
        print(f"{labels[key]:<34}{rate(statistics.median(values)):>14.2f}{rate(best[key]):>12.2f}"
              f"{best['bare'] / best[key]:>14.2f}{1000 * best[key] / images:>15.1f}"
              f"{1000 * best_cpu[key] / images:>12.1f}{best_cpu['bare'] / best_cpu[key]:>11.2f}")
    overhead = best["none"] / best["bare"] - 1
    overhead_cpu = best_cpu["none"] / best_cpu["bare"] - 1
    print(f"governed overhead without detector (best runs): {overhead:+.1%} wall, {overhead_cpu:+.1%} CPU  "
          f"target <= +15%: {'met' if overhead <= 0.15 else 'NOT met'} (wall)")
    report: dict[str, Any] = {
        "model": name, "batch": args.batch, "batches": args.batches, "images": images, "steps": args.steps,
        "runs": args.runs, "threads": torch.get_num_threads(), "detector": args.detector,
        "detector_model": detector_model, "load_average": os.getloadavg()[0],
        "times_s": times, "cpu_s": cpu, "overhead_without_detector": overhead,
        "cpu_overhead_without_detector": overhead_cpu, "target_met": overhead <= 0.15,
        "screened": screened,
        "released": {d: [s["released"] for s in found] for d, found in summaries.items()},
        "quarantined": {d: [s["quarantined"] for s in found] for d, found in summaries.items()},
    }
    if args.detector != "none":
        with_detector = best[args.detector]
        added = 1000 * (with_detector - best["none"]) / images
        added_cpu = 1000 * (best_cpu[args.detector] - best_cpu["none"]) / images
        print(f"governed with {args.detector} (best runs): {with_detector / best['bare'] - 1:+.1%} over bare, "
              f"{with_detector / best['none'] - 1:+.1%} over governed without detector, "
              f"{added:+.1f} ms per image ({added_cpu:+.1f} CPU ms; CPU {best_cpu[args.detector] / best_cpu['bare'] - 1:+.1%} "
              f"over bare)")
        report.update(overhead_with_detector=with_detector / best["bare"] - 1,
                      detector_over_governed=with_detector / best["none"] - 1, detector_ms_per_image=added,
                      cpu_overhead_with_detector=best_cpu[args.detector] / best_cpu["bare"] - 1,
                      detector_cpu_ms_per_image=added_cpu)
    if any(q for found in report["quarantined"].values() for q in found):
        print(f"note: images were quarantined: {report['quarantined']}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
