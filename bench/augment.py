"""Benchmark: does synthetic data from the demo model help a few-shot digit classifier?

On scikit-learn's digits, using only the **held-out** half (images the demo model never saw,
``pipelines.demo.digits``): a fixed, stratified test set of 600 images, and from the rest a few-shot
training set of k images per class (k = 1, 2, 5, 10), drawn again for each of 5 seeds. A small
CNN (two conv layers) is trained for a fixed number of steps on

(a) the k real images per class, with standard augmentation (random affine: rotation, shift, scale);
(b) the same plus M synthetic images per class from a dataset job (``services.datasets.run``, the
    governed path) with the demo model and the prompt "a handwritten digit N";
(c) as (b), but the synthetic images come from the demo model with a per-class LoRA fine-tuned on
    that trial's k real images of the class first (the DA-Fusion idea: adapt the generator to the
    few real examples so the synthetic images look like them).

It prints test accuracy mean ± std over the seeds per k and arm, and the gain of (b) and (c) over
(a). Target: (b) or (c) beats (a) by at least 5 points at k <= 5.

The run is sized for two shared CPU cores: ``nice -n 10 .venv/bin/python bench/augment.py``
(defaults M=50, 300 CNN steps, 60 LoRA steps). ``--quick`` runs k in {1, 5}, 2 seeds, M=20.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentops.core.settings import Settings, get_settings
from latentops.governance import policy
from latentops.pipelines.datasets import spec as spec_module
from latentops.pipelines.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME, digits
from latentops.pipelines.engine import Engine
from latentops.platform import migrate
from latentops.platform.database import session_scope
from latentops.platform.services import datasets
from latentops.platform.services import models as models_service

TEST_PER_CLASS = 60  # 600 test images, all from the held-out half


# --- data ------------------------------------------------------------------------------------------


def held_out_split() -> tuple[digits.DigitSet, np.ndarray, np.ndarray]:
    """The held-out digits, indices of the fixed test set, and the pool few-shot sets are drawn from."""
    heldout = digits.load("heldout")
    rng = np.random.default_rng(digits.SPLIT_SEED)
    test, pool = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(heldout.labels == label))
        test += list(members[:TEST_PER_CLASS])
        pool += list(members[TEST_PER_CLASS:])
    return heldout, np.array(sorted(test)), np.array(sorted(pool))


def few_shot(heldout: digits.DigitSet, pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(pool[heldout.labels[pool] == label], size=k, replace=False) for label in range(10)])


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) in [-1, 1] -> (N, 1, 32, 32) in [0, 1], ink high."""
    return 1.0 - (images.mean(dim=1, keepdim=True) + 1.0) / 2.0


def load_synthetic(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
    """A dataset job's ImageFolder output (every split) as grey tensors and labels."""
    images, labels = [], []
    for split in ("train", "validation"):
        metadata = folder / split / "metadata.jsonl"
        if not metadata.exists():
            continue
        for line in metadata.read_text().splitlines():
            row = json.loads(line)
            images.append(Image.open(folder / split / row["file_name"]))
            labels.append(int(row["label"]))
    return to_grey(digits.pil_to_tensor(images)), np.array(labels)


# --- the classifier ----------------------------------------------------------------------------------


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.head = torch.nn.Linear(32 * 8 * 8, 10)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(self.drop(x.flatten(1)))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard augmentation for digits: small random rotation, shift and scale."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * 2 * np.deg2rad(12)
    scale = 1.0 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, align_corners=False, padding_mode="zeros")


def train_and_test(x: torch.Tensor, y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, *, seed: int,
                   steps: int) -> float:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    labels = torch.from_numpy(y).long()
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (min(64, max(len(x), 16)),), generator=generator)
        loss = F.cross_entropy(model(augment(x[pick], generator)), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(test_x).argmax(1).numpy()
    return float((predicted == test_y).mean())


# --- synthetic data through the platform -----------------------------------------------------------


def setup_platform() -> Settings:
    home = Path(tempfile.mkdtemp(prefix="latentops-bench-augment-"))
    os.environ.update({"LATENTOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    settings = get_settings()
    settings.ensure_home()
    migrate.upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        models_service.bootstrap_demo(db, actor="cli:bench", store_root=settings.model_store)
        # No detector weights on this machine: let unscreened images be released (audited policy edit).
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:bench")
    with session_scope(settings.database_url) as db:
        policy.reload(db)
    return settings


def synthetic_set(settings: Settings, *, name: str, per_class: int, seed: int, loras: dict[int, str] | None,
                  engine: Engine, steps: int, guidance: float) -> tuple[torch.Tensor, np.ndarray]:
    classes: list[dict[str, Any]] = [{"name": str(d), "prompts": [digits.prompt_for(d)]} for d in range(10)]
    for d, lora in (loras or {}).items():
        classes[d]["lora"] = lora
    spec = spec_module.parse({"name": name, "model": DEMO_MODEL_NAME, "per_class": per_class, "seed": seed,
                              "steps": steps, "guidance": guidance, "batch_size": 16, "classes": classes,
                              "filters": {"dedupe_distance": 2}})
    out = settings.home / "synthetic" / name
    datasets.run(settings, spec=spec, out=out, actor="cli:bench", engine=engine)
    return load_synthetic(out)


def class_loras(settings: Settings, heldout: digits.DigitSet, chosen: np.ndarray, *, tag: str, steps: int) -> dict[int, str]:
    """One LoRA per class on that class's few-shot images, registered so a dataset spec can name it."""
    from latentops.pipelines.finetune import lora
    from latentops.pipelines.finetune.config import build_config
    from latentops.pipelines.finetune.data import MIN_SIDE
    from latentops.platform.services import finetune, generation

    names = {}
    with session_scope(settings.database_url) as db:
        target = generation.resolve(db, model=DEMO_MODEL_NAME)
        weights, version_id = target.weights, target.version.id
    for label in range(10):
        folder = settings.home / "fewshot" / tag / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        members = chosen[heldout.labels[chosen] == label]
        for index in members:
            picture = ((heldout.images[index] + 1) * 127.5).clamp(0, 255)
            # Upscaled to the smallest side training accepts; the recipe resizes to its resolution.
            Image.fromarray(picture.permute(1, 2, 0).byte().numpy()).resize(
                (MIN_SIDE, MIN_SIDE), Image.Resampling.BICUBIC).save(folder / f"{index}.png")
        config = build_config({"instance_prompt": digits.prompt_for(label), "rank": 4, "resolution": 32, "steps": steps,
                               "lr": 1e-3, "batch_size": min(4, len(members)), "checkpoint_every": steps,
                               "validation_steps": 4, "flip": False, "seed": label})
        result = lora.train(config, weights=weights, instance_dir=folder, out_dir=settings.home / "loras" / tag / str(label),
                            renderer=generation.render_for_training)
        name = f"fewshot-{tag}-{label}"
        with session_scope(settings.database_url) as db:
            finetune.register_adapter(db, name=name, version_id=version_id, job_id=None, team=None, result=result,
                                      model_uri=None, actor="cli:bench")
        names[label] = name
    return names


# --- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,5,10")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=50, help="M synthetic images per class")
    parser.add_argument("--cnn-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument("--gen-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--no-lora", action="store_true", help="skip arm (c)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.ks, args.seeds, args.synthetic = "1,5", 2, 20
    if not (DEMO_MODEL_DIR / "model_index.json").exists():
        raise SystemExit(f"the demo model's weights are not in {DEMO_MODEL_DIR} yet; this benchmark needs them")
    torch.set_num_threads(2)
    started = time.perf_counter()
    settings = setup_platform()
    engine = Engine(device="cpu")
    heldout, test, pool = held_out_split()
    test_x, test_y = to_grey(heldout.images[test]), heldout.labels[test]
    results: dict[tuple[int, str], list[float]] = {}
    # (b)'s synthetic images do not depend on the few-shot draw: one dataset job serves every trial.
    synth_x, synth_y = synthetic_set(settings, name="plain", per_class=args.synthetic, seed=0, loras=None, engine=engine,
                                     steps=args.gen_steps, guidance=args.guidance)
    for k in [int(v) for v in args.ks.split(",")]:
        for seed in range(args.seeds):
            chosen = few_shot(heldout, pool, k, seed)
            real_x, real_y = to_grey(heldout.images[chosen]), heldout.labels[chosen]
            arms = {"a": (real_x, real_y),
                    "b": (torch.cat([real_x, synth_x]), np.concatenate([real_y, synth_y]))}
            if not args.no_lora:
                tag = f"k{k}-s{seed}"
                loras = class_loras(settings, heldout, chosen, tag=tag, steps=args.lora_steps)
                lx, ly = synthetic_set(settings, name=f"lora-{tag}", per_class=args.synthetic, seed=seed, loras=loras,
                                       engine=engine, steps=args.gen_steps, guidance=args.guidance)
                arms["c"] = (torch.cat([real_x, lx]), np.concatenate([real_y, ly]))
            for arm, (x, y) in arms.items():
                accuracy = train_and_test(x, y, test_x, test_y, seed=seed, steps=args.cnn_steps)
                results.setdefault((k, arm), []).append(accuracy)
            print(f"k={k} seed={seed}: " + ", ".join(f"{a}={results[(k, a)][-1]:.3f}" for a in arms), flush=True)
    print(f"\ntest set: {len(test)} held-out digits; M={args.synthetic} synthetic/class; {args.seeds} seeds; "
          f"CNN {args.cnn_steps} steps; {time.perf_counter() - started:.0f} s in all")
    print("| k | (a) real + aug | (b) + synthetic | (c) + per-class LoRA synthetic | (b)-(a) | (c)-(a) |")
    print("|---|---|---|---|---|---|")
    for k in sorted({k for k, _ in results}):
        cell = {a: results.get((k, a), []) for a in "abc"}
        print(f"| {k} | {_fmt(cell['a'])} | {_fmt(cell['b'])} | {_fmt(cell['c'])} | {_gain(cell, 'b')} | "
              f"{_gain(cell, 'c')} |")


def _fmt(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}" if values else "-"


def _gain(cell: dict[str, list[float]], arm: str) -> str:
    return f"{100 * (statistics.mean(cell[arm]) - statistics.mean(cell['a'])):+.1f}" if cell[arm] else "-"

if __name__ == "__main__":
    main()
