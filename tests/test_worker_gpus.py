"""A worker started with ``--gpus`` on a machine without those GPUs refuses to start, clearly.

This machine has no CUDA device, so every ``--gpus`` request is for a GPU that is not there. The
check runs before the worker touches the database or the broker: the unreachable ones given
here must not be what the worker complains about.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start_worker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATENTOPS_")}
    env.update(LATENTOPS_HOME=str(tmp_path), LATENTOPS_DATABASE_URL="postgresql://postgres@127.0.0.1:9/none",
               LATENTOPS_BROKER_URL="redis://127.0.0.1:9/0", COLUMNS="200")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, "-m", "latentops.platform.cli.main", "worker", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize(("gpus", "named"), [("0", "GPU 0"), ("0,3", "GPU 0, 3")])
def test_worker_asking_for_missing_gpus_refuses_with_a_clear_message(tmp_path: Path, gpus: str, named: str) -> None:
    done = start_worker(tmp_path, "--queues", "gpu", "--gpus", gpus)
    assert done.returncode != 0
    message = done.stderr + done.stdout
    assert f"gpus: this worker asked for {named} but the machine has 0 CUDA device(s)" in message
    assert "start it without --gpus to run on the CPU" in message
    assert "Traceback" not in message
    # It stopped before looking for the database or the broker.
    assert "127.0.0.1:9" not in message


def test_malformed_gpu_list_is_refused_naming_the_option(tmp_path: Path) -> None:
    done = start_worker(tmp_path, "--gpus", "first")
    assert done.returncode != 0
    assert "gpus: expected comma-separated GPU indices such as 0 or 0,1, got 'first'" in done.stderr + done.stdout
