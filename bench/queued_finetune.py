"""A queued fine-tune against the same run in process: seconds per step and time to the first step.

Both paths run the same command line on the same model, images and arguments: ``latentops
finetune run`` (in process) and ``latentops finetune submit`` handled by a real ``latentops
worker`` (Celery prefork child) on a real Redis, interleaved round by round (the order alternates),
so a machine whose speed drifts slows both alike.

    .venv/bin/python bench/queued_finetune.py [--rounds 4] [--steps 60] [--resolution 64]
                                              [--redis redis://127.0.0.1:6379/9]

Reported per path, median over rounds:

* ``s/step``: the training loop's own mean step time (``seconds_per_step`` of the result, the same
  measure for both paths);
* ``wall s/step``: the loop's wall time over its steps (``loop_seconds``: everything the path does
  per step, cancellation checks, progress writes and tracking included);
* ``to first step``: from the command's start (``finetune run``, or ``finetune submit`` for the
  queued path: submit, dispatch, the worker's start of the job, loading) to the first step.

The ratio queued / in process is the number that counts (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

POLL_S = 0.5
"""How often the benchmark reads a queued job's state. The reads run on the cores the job trains on,
where the in-process path has no such neighbour, so they are kept rare (it was every 50 ms). The
measures come from the job's result, so the poll's pace changes none of them."""


def _latentops(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "latentops.platform.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        sys.exit(f"latentops {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def _images(folder: Path, count: int = 4) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        picture = Image.new("RGB", (96, 96), (240, 240, 230))
        ImageDraw.Draw(picture).ellipse((10 + 4 * index, 12, 80, 86 - 3 * index), outline=(30, 30, 160), width=5)
        picture.save(folder / f"img-{index}.png")
    return folder


def _wait(database_url: str, job_id: int, deadline: float) -> dict[str, Any]:
    """Poll the job until it ends; its result."""
    from latentops.platform.tables import Job

    engine = sa.create_engine(database_url)
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                row = connection.execute(sa.select(Job.state, Job.result, Job.error).where(Job.id == job_id)).one()
            state = getattr(row.state, "value", row.state)
            if state in ("succeeded", "failed", "cancelled"):
                if state != "succeeded":
                    sys.exit(f"job {job_id} {state}: {row.error}")
                return dict(row.result)
            time.sleep(POLL_S)
    finally:
        engine.dispose()
    sys.exit(f"job {job_id} did not finish in time")


def _measures(result: dict[str, Any], started: float) -> dict[str, float]:
    return {"s_per_step": result["seconds_per_step"], "wall_s_per_step": result["loop_seconds"] / result["steps"],
            "first_step_s": result["first_step_at"] - started}


def run_in_process(env: dict[str, str], args: list[str], out: Path) -> dict[str, float]:
    started = time.time()
    done = _latentops(env, "finetune", "run", *args, "--out", str(out), "--json")
    return _measures(json.loads(done.stdout.strip().splitlines()[-1]), started)


def run_queued(env: dict[str, str], args: list[str], database_url: str) -> dict[str, float]:
    started = time.time()
    done = _latentops(env, "finetune", "submit", *args, "--json")
    job_id = int(json.loads(done.stdout.strip().splitlines()[-1])["job_id"])
    return _measures(_wait(database_url, job_id, time.monotonic() + 900), started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    # Not 14/15: `make test` gives its parallel workers those, and a bench worker there would take their jobs.
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    options = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="latentops-bench-queued-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_")}
    env.update(LATENTOPS_HOME=str(home), LATENTOPS_BROKER_URL=options.redis, COLUMNS="200")
    database_url = f"sqlite:///{home / 'latentops.db'}"
    import redis

    redis.Redis.from_url(options.redis).flushdb()
    _latentops(env, "db", "upgrade")
    _latentops(env, "models", "create-tiny", "--out", str(home / "tiny"), "--family", "sd1")
    _latentops(env, "models", "import", str(home / "tiny"), "--name", "tiny", "--sensitivity", "public")
    _latentops(env, "policy", "set-data", "screening.release_without_detector", "true", "--note", "benchmark")
    images = _images(home / "images")
    args = ["--model", "tiny", "--instance-dir", str(images), "--instance-prompt", "a sks ring", "--steps", str(options.steps),
            "--resolution", str(options.resolution), "--attest-licence", "--attest-consent"]
    log = (home / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "latentops.platform.cli.main", "worker", "--queues", "gpu"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"ready." not in (home / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"worker did not start:\n{(home / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.1)
        results: dict[str, list[dict[str, float]]] = {"in process": [], "queued": []}
        for round_index in range(options.rounds):
            order = ("in process", "queued") if round_index % 2 == 0 else ("queued", "in process")
            for path in order:
                if path == "queued":
                    results[path].append(run_queued(env, args, database_url))
                else:
                    results[path].append(run_in_process(env, args, home / f"run-{round_index}"))
                print(f"round {round_index + 1} {path:<10} " + "  ".join(f"{k} {v:.4f}" for k, v in results[path][-1].items()),
                      flush=True)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
    print(f"\n{options.rounds} rounds, {options.steps} steps at {options.resolution} px, tiny SD1, CPU; medians:")
    print(f"{'':<12}{'s/step':>10}{'wall s/step':>14}{'to first step s':>18}")
    medians = {path: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for path, rows in results.items()}
    for path, m in medians.items():
        print(f"{path:<12}{m['s_per_step']:>10.4f}{m['wall_s_per_step']:>14.4f}{m['first_step_s']:>18.2f}")
    ratios = [q["s_per_step"] / p["s_per_step"] for q, p in zip(results["queued"], results["in process"], strict=True)]
    walls = [q["wall_s_per_step"] / p["wall_s_per_step"] for q, p in zip(results["queued"], results["in process"], strict=True)]
    print(f"ratio queued / in process: s/step {statistics.median(ratios):.3f}, wall s/step {statistics.median(walls):.3f} "
          f"(target <= 1.05)")


if __name__ == "__main__":
    main()
