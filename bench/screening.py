"""Screening benchmarks, each against a baseline measured in the same run.

1. Content screening throughput at batch 16: ``ClipConceptDetector.score`` (preprocess, image
   encoding, concept similarities, softmax) against raw open_clip encoding of the same batch
   (preprocess + ``encode_image``). Target: overhead <= 15%.
2. Copyright lookup latency per image with 100,000 references on the embedding path (FAISS
   retrieval + pHash scan + verification of the candidates): p50/p99 against the bare FAISS
   search of the same queries. Target: p99 <= 20 ms on CPU.

Runs offline with a random-init model of the architecture given by ``--arch`` (default
ViT-B-32 layout: the cost does not depend on the weights' values). Usage::

    .venv/bin/python bench/screening.py [--arch ViT-B-32] [--rounds 5] [--references 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from latentops.governance import copyright
from latentops.governance.detectors import ClipConceptDetector, ClipModel
from PIL import Image, ImageDraw


def picture(seed: int, size: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(size // 12, size // 4, 2)
        draw.rectangle((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def bench_content(arch: str, rounds: int) -> tuple[float, float]:
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    model.eval()
    clip = ClipModel(arch, "bench", model, preprocess, open_clip.get_tokenizer(arch))
    detector = ClipConceptDetector(clip)
    batch = [picture(i) for i in range(16)]
    detector.score(batch)  # warm-up; the concept embeddings are computed once here

    def raw() -> None:
        with torch.inference_mode():
            model.encode_image(torch.stack([preprocess(image) for image in batch]))

    timings: dict[str, list[float]] = {"raw": [], "screen": []}
    for _ in range(rounds):  # interleaved, so drift affects both alike
        for name, run in (("raw", raw), ("screen", lambda: detector.score(batch))):
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    return 16 / float(np.median(timings["raw"])), 16 / float(np.median(timings["screen"]))


def bench_lookup(references: int, queries: int, dim: int = 512) -> dict[str, np.ndarray]:
    """Per-query milliseconds: bare FAISS search, and full lookups of unrelated and of copied images."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((references, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, (references, 2 * len(copyright.CROPS)), dtype=np.int64).astype(np.uint64)
    ids = np.arange(1, references + 1)
    index = copyright.ReferenceIndex.build(ids, ["owner"] * references, hashes, dict(zip(ids.tolist(), embeddings, strict=True)))
    orb = {int(i): copyright.orb_features(picture(int(i))) for i in range(1, 33)}
    images = [picture(10_000 + q) for q in range(queries)]
    unrelated = rng.standard_normal((queries, dim)).astype(np.float32)
    unrelated /= np.linalg.norm(unrelated, axis=1, keepdims=True)
    copied = embeddings[rng.integers(0, references, queries)] + 0.01 * rng.standard_normal((queries, dim)).astype(np.float32)
    timings: dict[str, list[float]] = {"bare FAISS search": [], "lookup, unrelated image": [], "lookup, copied image": []}
    for image, plain, copy in zip(images, unrelated, copied, strict=True):
        start = time.perf_counter()
        index.nearest_by_embedding(plain)
        timings["bare FAISS search"].append(time.perf_counter() - start)
        for name, embedding in (("lookup, unrelated image", plain), ("lookup, copied image", copy)):
            start = time.perf_counter()
            copyright.match_in_index(index, image, embedding=embedding,
                                     orb_loader=lambda wanted: {i: orb[1 + i % 32] for i in wanted})
            timings[name].append(time.perf_counter() - start)
    return {name: np.array(values) * 1000 for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw, screen = bench_content(args.arch, args.rounds)
    overhead = raw / screen - 1
    print(f"content screening, {args.arch}, batch 16, {args.threads} threads")
    print(f"{'path':<28}{'images/s':>12}{'ratio':>10}")
    print(f"{'raw open_clip encode':<28}{raw:>12.2f}{1.0:>10.3f}")
    print(f"{'screening (concept scores)':<28}{screen:>12.2f}{screen / raw:>10.3f}")
    print(f"overhead {overhead * 100:.1f}% (target <= 15%): {'ok' if overhead <= 0.15 else 'OVER'}\n")

    results = bench_lookup(args.references, args.queries)
    print(f"copyright lookup, {args.references} references, {args.queries} queries, embedding path")
    print(f"{'path':<28}{'p50 ms':>10}{'p99 ms':>10}{'ratio p99':>12}")
    base = float(np.percentile(results["bare FAISS search"], 99))
    for name, values in results.items():
        p99 = float(np.percentile(values, 99))
        print(f"{name:<28}{np.percentile(values, 50):>10.2f}{p99:>10.2f}{p99 / base:>12.2f}")
    p99 = float(np.percentile(results["lookup, unrelated image"], 99))
    print(f"unrelated-image p99 {p99:.2f} ms (target <= 20 ms): {'ok' if p99 <= 20 else 'OVER'}; a copied image "
          "adds ORB verification of its candidates")


if __name__ == "__main__":
    main()
