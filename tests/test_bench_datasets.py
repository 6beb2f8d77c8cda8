"""bench/datasets.py: the governed-overhead benchmark, run end to end at tiny sizes.

The detector mode builds a real-size open_clip ViT-B-32 with random weights, imports it through
``screening.import_clip`` and screens every governed image with it, beside the bare pipeline and the
governed job without a detector; the temporary home (with its 600 MB of CLIP weights) is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "datasets.py"
TINY = ["--model", "tiny", "--steps", "2", "--batch", "2", "--batches", "1", "--runs", "1"]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    env.pop("LATENTOPS_HOME", None)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600, check=False)


def test_clip_detector_mode_screens_every_governed_image_with_a_vit_b_32(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = _bench(tmp_path, *TINY, "--detector", "clip-vit-b-32-random", "--json", str(report_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    times = report["times_s"]
    assert set(times) == {"bare", "none", "clip-vit-b-32-random"}
    assert all(len(values) == 1 and values[0] > 0 for values in times.values())
    assert report["detector_model"]["arch"] == "ViT-B-32" and report["detector_model"]["parameters"] > 150_000_000
    # Warm-up and one run per governed side, two images each: the CLIP side's four images were screened
    # by CLIP, the other side's by no detector, and all were released.
    assert report["screened"] == {"clip": 4, "none": 4}
    assert report["released"] == {"none": [2, 2], "clip-vit-b-32-random": [2, 2]}
    assert report["detector_ms_per_image"] == pytest.approx(1000 * (times["clip-vit-b-32-random"][0] - times["none"][0]) / 2)
    assert report["overhead_without_detector"] == pytest.approx(times["none"][0] / times["bare"][0] - 1)
    cpu = report["cpu_s"]
    assert set(cpu) == set(times) and all(len(values) == 1 and values[0] > 0 for values in cpu.values())
    assert report["detector_cpu_ms_per_image"] == pytest.approx(1000 * (cpu["clip-vit-b-32-random"][0] - cpu["none"][0]) / 2)
    for label in ("bare diffusers", "governed, no detector", "governed, clip-vit-b-32-random"):
        assert label in done.stdout
    assert list((tmp_path / "tmp").glob("latentops-bench-datasets-*")) == []  # the temporary home is gone


def test_a_bad_count_is_refused_naming_the_option(tmp_path: Path) -> None:
    done = _bench(tmp_path, *TINY[:-1], "0")
    assert done.returncode == 2 and "--runs must be at least 1, got 0" in done.stderr
