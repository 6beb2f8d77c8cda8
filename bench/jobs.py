"""Job dispatch latency and throughput on a real broker with real worker processes.

    .venv/bin/python bench/jobs.py [--redis redis://127.0.0.1:6379/14] [--database-url URL] [--jobs 200]

1. Dispatch latency (submit -> running) on an idle queue, one job at a time, p50/p99. Baseline in the
   same run: a bare Redis LPUSH -> BRPOP round trip on the same server (the floor any queue pays).
   Target: p99 <= 500 ms.
2. Throughput of minimal jobs (a one-step diagnostics job) with 4 worker processes.

The database defaults to a SQLite file in a temporary home; pass a PostgreSQL URL to measure that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import sqlalchemy as sa


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_workers(count: int, env: dict[str, str], home: Path) -> list[subprocess.Popen[bytes]]:
    workers = []
    for index in range(count):
        log = home / f"worker-{index}.log"
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "latentops.platform.cli.main", "worker", "--queues", "gpu,cpu"],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        ))
    for index in range(count):
        log = home / f"worker-{index}.log"
        while b"ready." not in log.read_bytes():
            time.sleep(0.1)
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="latentops-bench-jobs-"))
    os.environ.update(LATENTOPS_HOME=str(home), LATENTOPS_BROKER_URL=args.redis)
    if args.database_url:
        os.environ["LATENTOPS_DATABASE_URL"] = args.database_url
    from latentops.core.settings import get_settings
    from latentops.platform import migrate
    from latentops.platform.database import session_scope
    from latentops.platform.services import jobs
    from latentops.platform.tables import Job, JobState

    settings = get_settings()
    settings.ensure_home()
    migrate.upgrade(settings.database_url)
    client = redis.Redis.from_url(args.redis)
    client.flushdb()

    def submit(seed: int) -> int:
        """One job in a transaction of its own; it goes to the broker once that commits."""
        with session_scope(settings.database_url) as db:
            job = jobs.submit(db, settings, kind="diagnostics", params={"steps": 1, "seed": seed}, actor="bench")
        return job.id

    # Baseline: the bare broker round trip.
    bare = []
    for _ in range(args.latency_jobs):
        start = time.perf_counter()
        client.lpush("bench-bare", b"x")
        client.brpop(["bench-bare"], timeout=5)
        bare.append((time.perf_counter() - start) * 1000)

    workers = start_workers(args.workers, dict(os.environ), home)
    try:
        latencies = []
        for n in range(args.latency_jobs):
            job_id = submit(n)
            while True:
                with session_scope(settings.database_url) as db:
                    job = jobs.get(db, job_id)
                    if job.started_at is not None and job.state.finished:
                        created = job.created_at.replace(tzinfo=None)
                        started = job.started_at.replace(tzinfo=None)
                        latencies.append((started - created).total_seconds() * 1000)
                        break
                time.sleep(0.005)

        start = time.perf_counter()
        ids = [submit(n) for n in range(args.jobs)]
        while True:
            with session_scope(settings.database_url) as db:
                done = db.scalar(sa.select(sa.func.count(Job.id)).where(Job.id.in_(ids), Job.state == JobState.SUCCEEDED))
            if done == len(ids):
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
    finally:
        for worker in workers:
            os.killpg(worker.pid, 15)
        for worker in workers:
            worker.wait()

    backend = settings.database_url.split(":")[0]
    print(f"database: {backend}   broker: {args.redis}   workers: {args.workers}   cpus: {os.cpu_count()}")
    print(f"{'measure':<38}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'bare Redis LPUSH->BRPOP (baseline)':<38}{statistics.median(bare):>10.2f}{percentile(bare, 0.99):>10.2f}")
    print(f"{'job submit -> running':<38}{statistics.median(latencies):>10.2f}{percentile(latencies, 0.99):>10.2f}")
    print(f"dispatch p99 / bare p99: {percentile(latencies, 0.99) / max(percentile(bare, 0.99), 1e-9):.1f}x  (target p99 <= 500 ms)")
    print(f"throughput: {args.jobs} jobs in {elapsed:.1f}s = {args.jobs / elapsed:.1f} jobs/s with {args.workers} workers")


if __name__ == "__main__":
    main()
