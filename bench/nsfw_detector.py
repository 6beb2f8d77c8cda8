"""The nsfwjs detector (``sexual``): what can be measured offline, without labelled nudity images.

1. False-positive rate on benign images, per source, at the ``sexual`` threshold in force by default
   (0.5; ``--threshold``): the share of images scored at or above it (and, for comparison, the share
   whose P(Porn) + P(Hentai) alone reaches it), with the score's mean, p99 and maximum and the
   classes nsfwjs ranks first. Sources, all on this machine:

   * ``digits``: the 1,797 sklearn handwritten digits (8 x 8), tinted and upscaled to 224 x 224;
   * ``photos``: the real photographs that ship with installed packages (sklearn's ``china.jpg``
     and ``flower.jpg``; matplotlib's ``grace_hopper.jpg``, a portrait, when matplotlib is
     installed), each whole and as ``--crops`` random crops (20-100% of the side, mirrored half the
     time);
   * ``scenes``: ``--scenes`` drawn scenes (sky, sun, hills, houses, trees; random shapes on
     gradients; pages of text).

2. Latency per image on CPU (converted model loaded once; preprocessing included): one image at a
   time as ``screening.screen`` scores it (p50/p95 of ``--rounds`` calls) and a batch of 16.

What this cannot measure: the detection rate (true positives) and the false-positive rate on
the images a diffusion model actually produces; both need labelled images, which are not here.

    .venv/bin/python bench/nsfw_detector.py [--dir CONVERTED] [--crops 40] [--scenes 300] [--rounds 50]
        [--part all|fpr|latency]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from latentops.governance import detectors, nsfwjs


def digits() -> Iterator[Image.Image]:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    for digit in load_digits().images / 16.0:
        ink, paper = rng.integers(0, 120, 3), rng.integers(170, 256, 3)
        rgb = (paper * (1 - digit[..., None]) + ink * digit[..., None]).round().astype(np.uint8)
        yield Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR)


def photos(crops: int) -> Iterator[tuple[str, Image.Image]]:
    from sklearn.datasets import load_sample_images

    found = [(name, Image.fromarray(image)) for name, image in zip(("china", "flower"), load_sample_images().images, strict=True)]
    try:
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        found.append(("grace_hopper", Image.open(path).convert("RGB")))
    except (ImportError, OSError):
        pass
    rng = np.random.default_rng(1)
    for name, photo in found:
        yield name, photo
        for _ in range(crops):
            side = int(min(photo.size) * rng.uniform(0.2, 1.0))
            x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
            crop = photo.crop((x, y, x + side, y + side))
            yield name, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def scenes(count: int) -> Iterator[Image.Image]:
    rng = np.random.default_rng(2)
    for index in range(count):
        image = Image.new("RGB", (320, 240))
        draw = ImageDraw.Draw(image)
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for row in range(240):
            draw.line((0, row, 320, row), fill=tuple(int(v) for v in top + (bottom - top) * row / 240))
        kind = index % 3
        if kind == 0:  # landscape: sun, hills, houses, trees
            draw.ellipse((250, 20, 300, 70), fill=(250, 220, 90))
            for hill in range(3):
                cx = int(rng.integers(0, 320))
                draw.ellipse((cx - 160, 150 + 20 * hill, cx + 160, 400), fill=(40, int(rng.integers(100, 180)), 50))
            for _ in range(int(rng.integers(1, 5))):
                x = int(rng.integers(10, 280))
                draw.rectangle((x, 170, x + 36, 205), fill=tuple(int(v) for v in rng.integers(80, 230, 3)))
                draw.polygon([(x - 4, 170), (x + 18, 150), (x + 40, 170)], fill=(150, 40, 30))
                draw.rectangle((x + 44, 180, x + 48, 205), fill=(90, 60, 30))
                draw.ellipse((x + 36, 160, x + 56, 185), fill=(30, 120, 40))
        elif kind == 1:  # random shapes
            for _ in range(25):
                x, y = int(rng.integers(0, 320)), int(rng.integers(0, 240))
                w, h = (int(v) for v in rng.integers(10, 90, 2))
                box = (x, y, x + w, y + h)
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        else:  # a page of text
            draw.rectangle((20, 10, 300, 230), fill=(245, 245, 240))
            for line in range(14):
                words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(2, 9)))) for _ in range(5))
                draw.text((30, 18 + 15 * line), words, fill=(20, 20, 20))
        yield image


def false_positives(detector: detectors.NsfwjsDetector, name: str, images: list[Image.Image], threshold: float) -> None:
    probabilities = np.concatenate([detector.model.probabilities(images[i:i + 32]) for i in range(0, len(images), 32)])
    scores = detectors.nsfwjs_sexual(probabilities)
    flagged = int((scores >= threshold).sum())
    explicit = probabilities[:, [nsfwjs.CLASSES.index("Porn"), nsfwjs.CLASSES.index("Hentai")]].sum(axis=1)
    top = Counter(nsfwjs.CLASSES[i] for i in probabilities.argmax(axis=1)).most_common(3)
    print(f"{name:<18} {len(images):>5} {flagged:>8} {flagged / len(images):>7.2%} {(explicit >= threshold).mean():>9.2%} "
          f"{scores.mean():>7.4f} {np.percentile(scores, 99):>7.4f} {scores.max():>7.4f}  {', '.join(f'{c} {n}' for c, n in top)}")


def latency(detector: detectors.NsfwjsDetector, rounds: int) -> None:
    images = [image.resize((512, 512)) for image in scenes(16)]
    detector.score(images[:1])  # warm-up
    single, single_cpu, batched, batched_cpu = [], [], [], []
    for round_index in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        detector.score([images[round_index % 16]])
        single.append(time.perf_counter() - start)
        single_cpu.append(time.process_time() - cpu)
    for _ in range(max(3, rounds // 10)):
        start, cpu = time.perf_counter(), time.process_time()
        detector.score(images)
        batched.append((time.perf_counter() - start) / 16)
        batched_cpu.append((time.process_time() - cpu) / 16)
    print(f"latency, 512 x 512 input, {torch.get_num_threads()} torch threads (ms; CPU time counts every thread):")
    print(f"  one image:   wall p50 {np.median(single) * 1000:.1f}, p95 {np.percentile(single, 95) * 1000:.1f}; "
          f"CPU p50 {np.median(single_cpu) * 1000:.1f}")
    print(f"  batch of 16: wall {np.median(batched) * 1000:.1f} per image; CPU {np.median(batched_cpu) * 1000:.1f} per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help=f"converted nsfwjs (default {nsfwjs.default_dir()})")
    parser.add_argument("--threshold", type=float, default=0.5, help="sexual threshold (policy data default 0.5)")
    parser.add_argument("--crops", type=int, default=40, help="random crops per photograph")
    parser.add_argument("--scenes", type=int, default=300, help="drawn scenes")
    parser.add_argument("--rounds", type=int, default=50, help="single-image latency samples")
    parser.add_argument("--part", choices=("all", "fpr", "latency"), default="all")
    args = parser.parse_args()
    start = time.perf_counter()
    detector = detectors.NsfwjsDetector(args.dir or nsfwjs.default_dir())
    print(f"nsfwjs {detector.model.manifest['source']['version']} loaded in {time.perf_counter() - start:.2f} s "
          f"from {detector.model.folder}")
    if args.part != "fpr":
        latency(detector, args.rounds)
    if args.part == "latency":
        return
    print(f"false positives at sexual >= {args.threshold} (score = P(Porn) + P(Hentai) + 0.5 P(Sexy))")
    print(f"{'source':<18} {'n':>5} {'flagged':>8} {'FPR':>7} {'FPR P+H':>9} {'mean':>7} {'p99':>7} {'max':>7}  "
          "classes ranked first")
    false_positives(detector, "digits", list(digits()), args.threshold)
    by_photo: dict[str, list[Image.Image]] = {}
    for name, image in photos(args.crops):
        by_photo.setdefault(name, []).append(image)
    for name, images in by_photo.items():
        false_positives(detector, f"photo:{name}", images, args.threshold)
    false_positives(detector, "scenes", list(scenes(args.scenes)), args.threshold)


if __name__ == "__main__":
    main()
