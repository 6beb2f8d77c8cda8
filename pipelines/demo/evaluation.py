"""How good the demo model is: do images for "a handwritten digit N" read as N?

For each digit we generate ``per_digit`` images through the generation engine, in groups that each
start from a different seed, and let the judge (an SVM trained only on the held-out real digits,
see :func:`digits.judge`) read them. The share read as the prompted digit is the headline metric;
the judge's own accuracy on real digits it never saw is reported next to it as its error bar.

:func:`write_card` renders the model card (``README.md``) from ``training.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latentops.pipelines.demo import digits
from latentops.pipelines.engine import Engine, GenerationRequest, WeightsRef

SEED_GROUPS = (0, 10_000, 20_000, 30_000)
STEPS = 20
GUIDANCE = 4.0


@dataclass
class Report:
    accuracy: float
    per_digit: list[float]
    images: int
    seeds: list[int]
    steps: int
    guidance_scale: float
    scheduler: str
    judge_accuracy_on_real: float
    seconds: float


def evaluate(model_dir: Path, *, per_digit: int = 100, engine: Engine | None = None) -> Report:
    """Generate ``per_digit`` images per digit and measure how many the judge reads correctly."""
    engine = engine or Engine(device="cpu")
    weights = WeightsRef(content_hash=f"dir:{Path(model_dir).resolve()}", path=Path(model_dir), family="sd1")
    group = max(1, per_digit // len(SEED_GROUPS))
    started = time.perf_counter()
    judge = digits.judge()
    per_digit_accuracy = []
    seeds_used: list[int] = []
    for digit in range(10):
        correct = total = 0
        for index, base_seed in enumerate(SEED_GROUPS):
            count = group if index < len(SEED_GROUPS) - 1 else per_digit - group * (len(SEED_GROUPS) - 1)
            if count <= 0:
                continue
            seed = base_seed + digit * 1000
            seeds_used.append(seed)
            images = engine.generate(
                weights,
                GenerationRequest(prompts=[digits.prompt_for(digit)], images_per_prompt=count, steps=STEPS,
                                  guidance_scale=GUIDANCE, seed=seed),
            )
            predicted = judge.predict(digits.features(digits.pil_to_tensor(images)))
            correct += int((predicted == digit).sum())
            total += len(images)
        per_digit_accuracy.append(correct / total)
    pipeline = engine.load(weights)
    return Report(
        accuracy=float(np.mean(per_digit_accuracy)), per_digit=[round(a, 4) for a in per_digit_accuracy],
        images=per_digit * 10, seeds=seeds_used, steps=STEPS, guidance_scale=GUIDANCE,
        scheduler=type(pipeline.scheduler).__name__, judge_accuracy_on_real=digits.judge_accuracy_on_base(),
        seconds=round(time.perf_counter() - started, 1),
    )


def write_report(model_dir: Path, report: Report) -> None:
    (Path(model_dir) / "metrics.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    write_card(Path(model_dir))


def _size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.rglob("*.safetensors")) / 1e6


def write_card(model_dir: Path) -> Path:
    """Render README.md (the model card) from the run's own records."""
    training = json.loads((model_dir / "training.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text()) if (model_dir / "metrics.json").exists() else None
    config, timings = training["config"], training["timings"]
    split = digits.split_indices()
    lines = [
        "# digits-demo",
        "",
        "A small text-to-image latent diffusion model of handwritten digits, trained from scratch by",
        "latentops (`latentops models train-demo`) so the platform has a real base model that runs on a CPU.",
        "",
        "## Architecture",
        "- `AutoencoderKL`: 32×32×3 pixels ↔ 8×8×4 latents (block channels 16/32/32).",
        (f"- `CLIPTextModel`: {config['text_layers']} layers, width {config['text_hidden']}, with the real CLIP BPE "
         "tokenizer (built offline from open-clip-torch's vocabulary)."),
        (f"- `UNet2DConditionModel`: channels {config['unet_channels'][0]}/{config['unet_channels'][1]}, "
         "cross-attention at both resolutions."),
        "- Scheduler: DPM-Solver++ (trained with a 1000-step cosine DDPM schedule, v-prediction).",
        f"- Weights: safetensors, {_size_mb(model_dir):.1f} MB in total.",
        "",
        "## Data and split",
        "- scikit-learn `load_digits` (1,797 8×8 grey-level images; BSD-3-Clause), upsampled bicubically to",
        "  32×32 and drawn as dark ink on white.",
        f"- Stratified, seeded split (`random_state={digits.SPLIT_SEED}`): **base** = {len(split['base'])} images",
        f"  (trains this model), **held-out** = {len(split['heldout'])} images (never seen by it; used by the judge",
        "  below and by the augmentation benchmark). Indices: `latentops.pipelines.demo.digits.split_indices()`.",
        "- Prompts: `\"a handwritten digit zero\"` … `\"a handwritten digit nine\"`; 10% are dropped to `\"\"` during",
        "  training so classifier-free guidance works.",
        "",
        "## Training",
        f"- Seed {config['seed']}; autoencoder {config['vae_steps']} steps (batch {config['vae_batch']}), then text",
        f"  encoder + UNet {config['unet_steps']} steps (batch {config['unet_batch']}, AdamW lr {config['unet_lr']},",
        f"  EMA {config['ema_decay']}), {config['threads']} CPU thread(s), while other work kept the machine loaded.",
        (f"- Time on the project's shared 2-core build machine: {timings['total_seconds'] / 60:.1f} min "
         f"(autoencoder {timings['vae_seconds'] / 60:.1f} min, denoiser {timings['denoiser_seconds'] / 60:.1f} min)."),
        "- Reproduce: `latentops models train-demo --out DIR` (same torch version and thread count give the",
        "  same weights).",
        "",
        "## Metrics",
    ]
    if metrics:
        per_digit = ", ".join(f"{d}: {a:.0%}" for d, a in enumerate(metrics["per_digit"]))
        lines += [
            (f"- **Digit accuracy: {metrics['accuracy']:.1%}** of {metrics['images']} generated images "
             f"({metrics['images'] // 10} per digit, {len(SEED_GROUPS)} seed groups, {metrics['steps']} steps, "
             f"guidance {metrics['guidance_scale']}, {metrics['scheduler']}) are read as the prompted digit."),
            f"- Per digit: {per_digit}.",
            "- Judge: an RBF SVM trained on the held-out real digits only (8×8 ink features after the same",
            f"  32×32 round trip); it reads {metrics['judge_accuracy_on_real']:.1%} of the real base-split digits",
            "  correctly, which bounds what the metric can resolve.",
            "- Measured by `latentops.pipelines.demo.evaluation.evaluate` (also run by `train-demo` and by",
            "  `tests/test_demo_model.py` on the committed weights).",
        ]
    else:
        lines.append("- Not measured yet.")
    lines += [
        "",
        "## Intended use and limits",
        "A demonstration and test fixture: 32×32 digit images only. It knows nothing but the ten prompts",
        "above; other prompts give digit-like noise.",
        "",
    ]
    card = model_dir / "README.md"
    card.write_text("\n".join(lines))
    return card
