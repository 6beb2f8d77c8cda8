"""Prompt-policy latency and throughput on the embedded engine, with a 10,000-entry protected-names list.

Each decision includes input normalisation and n-gram set lookups (``analyse_prompt``), building
the policy input and the regopy evaluation, exactly as ``policy.evaluate("prompt", ...)`` does,
with the semantic signal turned off in both configurations (its embedding per prompt is measured
by ``bench/prompt_screening.py``).
The 10,000 names are the shipped list (``governance/policies/prompt/protected_names.json``) and
made-up names after it. Baseline, measured in the same run: the same engine with the shipped list
alone, so the ratio shows what the extra names cost. Targets: p99 <= 1 ms, >= 1,000 decisions/s on one core.

    .venv/bin/python bench/policy.py [--decisions 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from latentops.governance import policy
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR, load_bundle
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.governance.policy_names import NAMES_FILE, NAMES_KEY, name_key

SYLLABLES = ["ka", "lo", "mi", "ren", "sa", "to", "vel", "dra", "quin", "bo", "zel", "mar", "tin", "ash", "or", "el", "yu", "fen"]
PROMPTS = [
    "a watercolour painting of a lighthouse at dusk, soft light, by the sea",
    "portrait of an astronaut in a sunflower field, 35mm photo, golden hour",
    "isometric illustration of a tiny city on a floating island, pastel colours",
    "a bowl of grapes on a wooden table in Essex, cocktail glasses, still life",
    "M1CKEY-MOUSE riding a bicycle through Scunthorpe",
    "concept art of a dragon over a medieval town, in the style of greg rutkowski",
    "product photo of a ceramic mug, white background, studio lighting, email me at a@b.co",
    "a cyberpunk street at night with neon signs and rain reflections, highly detailed, 8k",
]


def synthetic_names(count: int, seed: int = 7, taken: Iterable[str] = ()) -> list[dict[str, str]]:
    """``count`` made-up two-word names, none the same as another or as ``taken`` after normalisation."""
    rng = random.Random(seed)
    keys = set(taken)
    names: list[dict[str, str]] = []
    while len(names) < count:
        first = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        last = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        name = f"{first.title()} {last.title()}"
        if name_key(name) not in keys:
            keys.add(name_key(name))
            names.append({"name": name, "category": "celebrity"})
    return names


def policy_dir_with_names(total: int, root: Path) -> Path:
    """A copy of the policy folder whose protected-names file is the shipped list plus made-up names, ``total`` in all."""
    target = root / f"policies-{total}"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    path = target / "prompt" / NAMES_FILE
    shipped = json.loads(path.read_text())
    path.write_text(json.dumps(shipped + synthetic_names(total - len(shipped), taken=(name_key(e["name"]) for e in shipped))))
    # The rules engine and the lookups alone: the semantic signal (an embedding per prompt) is
    # measured by bench/prompt_screening.py.
    data_path = target / "prompt" / "data.json"
    data = json.loads(data_path.read_text())
    data["semantic"]["enabled"] = False
    data_path.write_text(json.dumps(data))
    return target


def measure(directory: Path, decisions: int) -> dict[str, float]:
    service = policy.PolicyService(engine=EmbeddedEngine(), directory=directory)
    result = service.reload()
    if not result.ok:
        sys.exit(f"bundle did not load: {result.error}")
    for prompt in PROMPTS * 20:  # warm-up
        service.evaluate("prompt", {"prompt": prompt})
    wall, cpu = [], []
    started, cpu_started = time.perf_counter(), time.thread_time()
    for i in range(decisions):
        t0, c0 = time.perf_counter(), time.thread_time()
        service.evaluate("prompt", {"prompt": PROMPTS[i % len(PROMPTS)]})
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    elapsed, cpu_elapsed = time.perf_counter() - started, time.thread_time() - cpu_started
    wall.sort()
    cpu.sort()
    return {
        "names": len(service.bundle.host_data["prompt"]["protected_names"]),  # type: ignore[union-attr]
        "p50_ms": statistics.median(wall) * 1e3,
        "p99_ms": wall[int(len(wall) * 0.99) - 1] * 1e3,
        "per_s": decisions / elapsed,
        "cpu_p50_ms": statistics.median(cpu) * 1e3,
        "cpu_p99_ms": cpu[int(len(cpu) * 0.99) - 1] * 1e3,
        "per_cpu_s": decisions / cpu_elapsed,
    }


def _ms(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1e3


def edit_cost(directory: Path) -> dict[str, float]:
    """What an edit of the list costs the server, in ms: the bundle with the edits replayed (one
    stored edit, and 1,000) and the compile check of the edited bundle (``policy.set_policy_data``)."""
    stored = [(NAMES_KEY, {"add": [{"name": f"Bench Person{i}", "category": "celebrity"}]}) for i in range(1000)]
    load_bundle(directory)  # warm: the file read and checked once, as a running process has
    return {"load_1_ms": _ms(lambda: load_bundle(directory, stored[:1])),
            "load_1000_ms": _ms(lambda: load_bundle(directory, stored)),
            "compile_ms": _ms(lambda: EmbeddedEngine().load(load_bundle(directory, stored[:1])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=5000)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        shipped = len(json.loads((DEFAULT_POLICY_DIR / "prompt" / NAMES_FILE).read_text()))
        baseline = measure(policy_dir_with_names(shipped, Path(tmp)), args.decisions)
        large_dir = policy_dir_with_names(10_000, Path(tmp))
        large = measure(large_dir, args.decisions)
        edits = edit_cost(large_dir)
    load = (load_before + os.getloadavg()[0]) / 2
    rows = [("shipped list (baseline)", baseline), ("10,000 protected names", large)]
    print(f"load average {load:.1f} on {os.cpu_count()} cores during the run")
    print("wall clock (includes waiting for a CPU on a shared machine) and CPU time of this thread (one core)")
    print(f"{'configuration':<26}{'names':>7}{'p50 ms':>9}{'p99 ms':>9}{'dec/s':>8}{'cpu p50':>9}{'cpu p99':>9}"
          f"{'dec/cpu-s':>11}{'cpu p99 vs base':>17}")
    for label, row in rows:
        print(f"{label:<26}{row['names']:>7.0f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['per_s']:>8.0f}"
              f"{row['cpu_p50_ms']:>9.3f}{row['cpu_p99_ms']:>9.3f}{row['per_cpu_s']:>11.0f}"
              f"{row['cpu_p99_ms'] / baseline['cpu_p99_ms']:>16.2f}x")
    wall_ok = large["p99_ms"] <= 1.0 and large["per_s"] >= 1000
    cpu_ok = large["cpu_p99_ms"] <= 1.0 and large["per_cpu_s"] >= 1000
    print(f"targets (p99 <= 1 ms, >= 1,000 decisions/s): wall clock {'met' if wall_ok else 'NOT met'}, "
          f"one core of CPU time {'met' if cpu_ok else 'NOT met'}")
    print(f"an edit of the 10,000 names: bundle with 1 stored edit {edits['load_1_ms']:.0f} ms, with 1,000 stored edits "
          f"{edits['load_1000_ms']:.0f} ms; compile check {edits['compile_ms']:.0f} ms")


if __name__ == "__main__":
    main()
