"""REST API latency under load: p50/p99 of job submit and job list at 50 concurrent clients.

    .venv/bin/python bench/api.py [--redis redis://127.0.0.1:6379/7] [--database-url URL] [--requests 20]
                                  [--workers 2]

A real uvicorn server (the app factory; ``--workers`` processes, as ``latentops serve --workers``
runs it in production: the API is stateless, about one process per core) on loopback, a real
broker for submits, and 50 concurrent httpx clients each authenticated with a personal API token.
Baseline in the same run: ``GET /api/v1/auth/me`` (authentication and the access policy, no domain
work). Besides latency the table shows the server's CPU time per request (all its processes,
from /proc), which does not depend on how loaded the machine is; the load average is printed
before and after, because on a shared machine latency at 50 clients is mostly queueing for a core.
Targets: job submit p99 <= 100 ms, job list p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CLIENTS = 50
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children processes (uvicorn's workers), from /proc."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids += [int(child) for child in children]
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def hammer(base: str, token: str, method: str, path: str, body: dict | None, per_client: int) -> list[float]:
    timings: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            for _ in range(per_client):
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                timings.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:200]}")

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--requests", type=int, default=20, help="requests per client per operation")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="latentops-bench-api-"))
    env = {**os.environ, "LATENTOPS_HOME": str(home), "LATENTOPS_BROKER_URL": args.redis,
           "LATENTOPS_DATABASE_URL": args.database_url or f"sqlite:///{home / 'latentops.db'}", "LATENTOPS_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    import redis
    from latentops.governance import policy
    from latentops.platform import migrate
    from latentops.platform.database import session_scope
    from latentops.platform.services import tokens, users

    redis.Redis.from_url(args.redis).flushdb()
    migrate.upgrade(env["LATENTOPS_DATABASE_URL"])
    with session_scope(env["LATENTOPS_DATABASE_URL"]) as session:
        users.create_user(session, email="bench@example.com", role="submitter", team="bench", password=None, actor="system")
        _row, token = tokens.create_token(session, email="bench@example.com", name="bench", actor="system")
        # Nothing drains the queue here: lift the team's jobs-waiting quota above what the run submits.
        quotas = policy.policy_data("jobs.quotas")
        policy.set_policy_data(session, key="jobs.quotas", actor="system", note="benchmark",
                               value={**quotas, "default": {**quotas["default"], "max_queued_jobs": 1_000_000}})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "latentops.platform.api.app:create_app", "--factory",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                               "--workers", str(args.workers)], env=env)
    base = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = []
        for label, method, path, body, target in [
            ("baseline GET /auth/me", "GET", "/api/v1/auth/me", None, None),
            ("POST /jobs (submit)", "POST", "/api/v1/jobs", {"kind": "diagnostics", "params": {}}, 0.100),
            ("GET /jobs (list 50)", "GET", "/api/v1/jobs?limit=50", None, 0.050),
        ]:
            asyncio.run(hammer(base, token, method, path, body, 2))  # warm up connections and caches
            cpu_before = cpu_seconds(server.pid)
            timings = asyncio.run(hammer(base, token, method, path, body, args.requests))
            cpu = (cpu_seconds(server.pid) - cpu_before) / len(timings)
            rows.append((label, percentile(timings, 0.5), percentile(timings, 0.99), target, len(timings), cpu))
        baseline = rows[0][1]
        load = os.getloadavg()
        print(f"uvicorn workers: {args.workers}; CPUs: {os.cpu_count()}; load average before {load_before[0]:.1f}, "
              f"after {load[0]:.1f} (1 min)")
        print(f"{'operation':<26}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'p50/base':>10}{'server CPU ms':>15}"
              f"{'target p99':>12}  met")
        for label, p50, p99, target, n, cpu in rows:
            met = "" if target is None else ("yes" if p99 <= target else "NO")
            print(f"{label:<26}{n:>6}{p50 * 1000:>10.1f}{p99 * 1000:>10.1f}{p50 / baseline:>10.2f}{cpu * 1000:>15.2f}"
                  f"{'' if target is None else f'{target * 1000:.0f} ms':>12}  {met}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
