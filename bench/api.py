"""REST API latency under load: p50/p99 of job submit and job list at 50 concurrent clients.

    .venv/bin/python bench/api.py [--redis redis://127.0.0.1:6379/7] [--database-url URL] [--requests 20]
                                  [--workers 2] [--interval-ms 1000] [--modes paced,saturation]

A real uvicorn server (the app factory; ``--workers`` processes, as ``latentops serve --workers``
runs it in production: the API is stateless, about one process per core) on loopback, a real
broker for submits, and 50 concurrent keep-alive clients each authenticated with a personal API token.
Baseline in the same run: ``GET /api/v1/auth/me`` (authentication and the access policy, no domain
work). Targets: job submit p99 <= 100 ms, job list p99 <= 50 ms.

Two load models, each reported in its own table:

* ``paced``: 50 users, each sending one request every ``--interval-ms`` (their start times spread
  over the first interval), as people and scripts using a portal do. Latency is measured from
  the moment a request was due, so a request held back by a slow predecessor counts its wait
  (no coordinated omission).
* ``saturation``: 50 clients in a closed loop with no pause, the server's capacity. Latency here is
  queueing: by Little's law the mean latency is at least clients x CPU per request / cores, which the
  table prints as the bound that the machine's core count sets.

Besides latency the tables show the server's CPU time per request (all its processes, from
/proc), which does not depend on how loaded the machine is, the load generator's own CPU time per
request (it shares the machine), and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

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


class Connection:
    """One keep-alive HTTP/1.1 connection: the load generator's client.

    A load generator that shares the server's cores must cost little per request: httpx spends about
    7 ms of CPU per request here (measured: 50 clients at 50 requests/s took a third of a core),
    which would be taken from the server it measures. This writes the request bytes and reads
    the status line, headers and a ``Content-Length`` body, which is all the API sends; anything
    else (a closed connection, a chunked body) is an error of the run, not a case to handle.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, token: str) -> None:
        self.reader, self.writer = reader, writer
        self.head = f"Host: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n"

    @classmethod
    async def open(cls, base: str, token: str) -> Connection:
        url = urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer, url.netloc, token)

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        lines = f"{method} {path} HTTP/1.1\r\n{self.head}"
        if body is not None:
            lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((lines + "\r\n").encode() + (body or b""))
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise SystemExit(f"{method} {path}: the response has no Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def hammer(base: str, token: str, method: str, path: str, body: dict | None, per_client: int,
                 interval: float | None = None) -> list[float]:
    """Each client sends ``per_client`` requests: back to back, or one per ``interval`` seconds.

    Every client is connected and has sent one unmeasured request before the clock starts. Paced
    latency counts from when a request was due, not when it could be sent.
    """
    timings: list[float] = []
    payload = None if body is None else json.dumps(body).encode()
    connections = [await Connection.open(base, token) for _ in range(CLIENTS)]
    try:
        async def send(connection: Connection) -> None:
            status, answer = await connection.request(method, path, payload)
            if status >= 400:
                raise SystemExit(f"{method} {path}: {status} {answer[:200]!r}")

        await asyncio.gather(*(send(connection) for connection in connections))
        start = time.perf_counter()

        async def client(index: int, connection: Connection) -> None:
            due = start + (interval * index / CLIENTS if interval else 0.0)
            for _ in range(per_client):
                if interval:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    began, due = due, due + interval
                else:
                    began = time.perf_counter()
                await send(connection)
                timings.append(time.perf_counter() - began)

        await asyncio.gather(*(client(index, connection) for index, connection in enumerate(connections)))
    finally:
        for connection in connections:
            connection.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--requests", type=int, default=20, help="requests per client per operation")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (about one per core)")
    parser.add_argument("--interval-ms", type=float, default=1000.0, help="paced mode: each client's time between requests")
    parser.add_argument("--modes", default="paced,saturation", help="comma-separated: paced, saturation")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - {"paced", "saturation"}:
        raise SystemExit(f"--modes: {args.modes!r}: give paced, saturation or both, comma-separated")
    if args.interval_ms <= 0:
        raise SystemExit(f"--interval-ms: must be above 0, got {args.interval_ms}")
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
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        operations = [
            ("baseline GET /auth/me", "GET", "/api/v1/auth/me", None, None),
            ("POST /jobs (submit)", "POST", "/api/v1/jobs", {"kind": "diagnostics", "params": {}}, 0.100),
            ("GET /jobs (list 50)", "GET", "/api/v1/jobs?limit=50", None, 0.050),
        ]
        # The load generator's own heap (it imported latentops for the setup) is frozen like the
        # server's, so that its full collections do not show up as server latency.
        gc.collect()
        gc.freeze()
        for mode in modes:
            interval = args.interval_ms / 1000 if mode == "paced" else None
            load_before = os.getloadavg()
            rows = []
            for label, method, path, body, target in operations:
                cpu_before, began, own_before = cpu_seconds(server.pid), time.perf_counter(), time.process_time()
                timings = asyncio.run(hammer(base, token, method, path, body, args.requests, interval))
                seconds = time.perf_counter() - began
                cpu = (cpu_seconds(server.pid) - cpu_before) / len(timings)
                own = (time.process_time() - own_before) / len(timings)
                rows.append((label, percentile(timings, 0.5), percentile(timings, 0.99), target, len(timings), cpu,
                             len(timings) / seconds, own))
            _report(mode, rows, args, load_before)
    finally:
        server.terminate()
        server.wait(10)


def _report(mode: str, rows: list[tuple], args: argparse.Namespace, load_before: tuple[float, float, float]) -> None:
    baseline = rows[0][1]
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    what = (f"paced: {CLIENTS} clients, one request each every {args.interval_ms:.0f} ms "
            f"({CLIENTS / (args.interval_ms / 1000):.0f} requests/s offered)" if mode == "paced"
            else f"saturation: {CLIENTS} clients in a closed loop, no pause")
    print(f"\n{what}; uvicorn workers: {args.workers}; CPUs: {cores}; load average before {load_before[0]:.1f}, "
          f"after {load[0]:.1f} (1 min)")
    header = (f"{'operation':<26}{'n':>6}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p50/base':>10}{'server CPU ms':>15}"
              f"{'client CPU ms':>15}")
    if mode == "saturation":
        header += f"{'bound ms':>10}"
    print(header + f"{'target p99':>12}  met")
    for label, p50, p99, target, n, cpu, rate, own in rows:
        met = "" if target is None else ("yes" if p99 <= target else "NO")
        line = (f"{label:<26}{n:>6}{rate:>8.0f}{p50 * 1000:>9.1f}{p99 * 1000:>9.1f}{p50 / baseline:>10.2f}"
                f"{cpu * 1000:>15.2f}{own * 1000:>15.2f}")
        if mode == "saturation":
            # Little's law: the mean latency of N closed-loop clients is at least N x the server's CPU
            # per request / the cores it can use (the clients' own CPU comes on top).
            line += f"{CLIENTS * cpu * 1000 / min(cores, args.workers):>10.0f}"
        print(line + f"{'' if target is None else f'{target * 1000:.0f} ms':>12}  {met}")


if __name__ == "__main__":
    main()
