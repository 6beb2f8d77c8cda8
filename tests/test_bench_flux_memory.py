"""bench/flux_memory.py --dry-run: the per-block measurement and the full-model estimate, at tiny widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPT = REPO / ".venv" / "opt"


def _run(tmp_path: Path, *args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bench" / "flux_memory.py"), "--dry-run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": path})


def test_dry_run_measures_every_block_and_adds_up_the_estimate(tmp_path: Path) -> None:
    assert (OPT / "torchao" / "torchao").is_dir(), f"{OPT / 'torchao'} is missing: run make install"
    done = _run(tmp_path, "--out", str(tmp_path / "report.json"), path=str(OPT / "torchao"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["quantization"] == "int8" and report["rank"] == 16
    blocks = {(b["kind"], b["checkpointed"]): b for b in report["blocks"]}
    assert set(blocks) == {("double", False), ("single", False), ("double", True), ("single", True)}
    for (kind, _), block in blocks.items():
        assert block["frozen_bytes"] > 0 and block["lora_bytes"] > 0 and block["kept_bytes"] > 0, kind
    for kind in ("double", "single"):
        # Checkpointing keeps less between forward and backward, and recomputes it in the backward pass.
        assert blocks[(kind, True)]["kept_bytes"] < blocks[(kind, False)]["kept_bytes"], kind
        assert blocks[(kind, True)]["backward_peak_bytes"] > blocks[(kind, False)]["backward_peak_bytes"], kind
        frozen = report["frozen_block_bytes"]
        # int8 keeps 1 byte per bf16 weight of 2, plus a scale per row; the measured block holds it.
        assert frozen["int8"][kind] < 0.75 * frozen["none"][kind]
        assert blocks[(kind, False)]["frozen_bytes"] == frozen["int8"][kind]
    off, on = report["estimates"]
    assert (off["checkpointed"], on["checkpointed"]) == (False, True)
    for found in (off, on):
        assert found["total_bytes"] == sum(found["parts"].values())
    shape = report["shape"]
    assert (shape["double"], shape["single"]) == (19, 38), "the estimate is for FLUX.1's full depth"
    double, single = blocks[("double", False)], blocks[("single", False)]
    kept = next(v for k, v in off["parts"].items() if k.startswith("kept for backward"))
    assert kept == 19 * double["kept_bytes"] + 38 * single["kept_bytes"]
    assert on["total_bytes"] < off["total_bytes"]
    assert "estimate from measured per-block memory" in done.stdout


def test_a_quantisation_whose_backend_is_missing_is_named_without_a_traceback(tmp_path: Path) -> None:
    done = _run(tmp_path, "--quantization", "fp8")  # torchao not on the path
    assert done.returncode == 2
    assert "base_quantization: fp8 needs the torchao package" in done.stderr and "Traceback" not in done.stderr
