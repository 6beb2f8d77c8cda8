"""The launcher of a multi-process fine-tune: it starts the training processes, relays and watches them.

:func:`launch` runs in the process that called :func:`lora.train` with ``processes = N``: the job
handler on a worker, or ``latentops finetune run``, once :func:`distributed.require_gpus` found N
GPUs there. It picks a free loopback port and starts N fresh Python processes, each with the
environment ``torchrun`` would give it (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) and one end of a socket pair to the launcher. (Plain
subprocesses, not ``multiprocessing`` ones: a Celery pool process may not have children of its
own, and spawn would re-import the caller's main module.) What each of them runs is
:mod:`distributed`. The launcher stays the one process that talks to the job: rank 0 sends its
log lines, progress and tracker calls over its connection, and the launcher hands them to the
caller's hooks and MLflow tracker, so the database and MLflow are written exactly as for one
process. It polls the caller's cancellation about once a second and at every step.

**Failure**: a rank that raises reports the error and exits; one that dies (killed, out of memory)
is seen by its exit code. The launcher then stops the others (stop flag, then SIGTERM, SIGKILL),
joins every process, and raises the cause: the recipe's own error as it is (an ``InvalidInput``,
a ``TrainingFailed`` for a NaN loss), or ``TrainingFailed`` naming the rank that died or failed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, cast

from latentops.pipelines.finetune.checkpoint import TrainingFailed
from latentops.pipelines.finetune.distributed import LaunchSpec, RankFailure, backend

if TYPE_CHECKING:
    from latentops.pipelines.finetune.run import Hooks, Tracker, TrainingResult

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
POLL_S = 0.2  # how often the launcher looks at its connections and its processes
CANCEL_CHECK_S = 1.0  # the caller's cancellation is polled at least this often (and at every step)
REPORT_WAIT_S = 3.0  # after a failure, how long the other ranks get to report theirs and exit
STOP_GRACE_S = 60.0  # a stop request: finish the step, else SIGTERM; 10 s later, SIGKILL


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# What each training process runs (:mod:`distributed`).
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK",
               "ROLE_RANK", "TORCHELASTIC_RUN_ID")
_CHILD = "from latentops.pipelines.finetune.distributed import _process_main; _process_main()"


def launch(train: Callable[..., TrainingResult], *, processes: int, device_type: str, hooks: Hooks,
           tracker: Tracker | None, train_kwargs: dict[str, Any]) -> TrainingResult:
    """Run ``train(**train_kwargs)`` (``lora.train``) in ``processes`` processes; rank 0's result.

    ``hooks`` and ``tracker`` are the caller's: they are called here, in this process, with what
    rank 0 reports. Whatever they raise (a cancellation, a lost lease) stops every rank first. The
    caller has checked the GPUs (:func:`distributed.require_gpus`).
    """
    spec = LaunchSpec(world_size=processes, device_type=device_type, parent_pid=os.getpid(),
                      tracked=tracker is not None, train=train, train_kwargs=train_kwargs)
    # A single process gets no rendezvous at all (none inherited either): accelerate reads LOCAL_RANK
    # as a distributed launch, and would start a process group (gloo, or NCCL on a GPU) and wrap the
    # model in DistributedDataParallel for a world of one: gradient hooks and threads for nothing.
    environment = {key: value for key, value in os.environ.items() if key not in _RENDEZVOUS}
    ranks: list[dict[str, str]] = [{}]
    if processes > 1:
        # The CPU's threads are shared among the processes. A single one keeps the thread settings it
        # was given, none included: with OMP_NUM_THREADS=2 written out, a step on two cores measured 3%
        # slower than with torch's own default of the same two threads (docs/finetune.md).
        environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
        port = free_port()
        environment.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port), WORLD_SIZE=str(processes),
                           LOCAL_WORLD_SIZE=str(processes))
        if device_type == "cpu" and sys.platform.startswith("linux"):
            environment.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every rank is on this machine
        ranks = [{"RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(processes)]
        hooks.log(f"starting {processes} training processes ({backend(device_type)}, rendezvous at {LOOPBACK}:{port})")
    else:
        hooks.log("starting the training process")
    supervisor = _Supervisor(hooks, tracker)
    try:
        for variables in ranks:
            ours, theirs = Pipe(duplex=True)
            worker = subprocess.Popen([sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                      env={**environment, **variables})
            theirs.close()
            supervisor.add(worker, ours)
            ours.send(spec)
        return supervisor.run()
    finally:
        supervisor.shut_down()


class _Supervisor:
    """Relays rank 0's reports to the caller and watches every training process."""

    def __init__(self, hooks: Hooks, tracker: Tracker | None) -> None:
        self.hooks, self.tracker = hooks, tracker
        self.workers: list[subprocess.Popen[bytes]] = []
        self.connections: list[Connection] = []
        self.open: dict[Connection, int] = {}  # connections still open -> rank
        self.ended: dict[int, str] = {}  # rank -> "done" | "stopped"
        self.failures: dict[int, RankFailure] = {}
        self.result: TrainingResult | None = None
        self.relaying = True

    def add(self, worker: subprocess.Popen[bytes], connection: Connection) -> None:
        self.open[connection] = len(self.workers)
        self.workers.append(worker)
        self.connections.append(connection)

    @property
    def world(self) -> int:
        return len(self.workers)

    def run(self) -> TrainingResult:
        next_check = 0.0
        while True:
            if self._receive(POLL_S):
                next_check = 0.0  # rank 0 reported: check at every step, so a cancelled job stops within one
            if time.monotonic() >= next_check:
                self.hooks.check_cancelled()
                next_check = time.monotonic() + CANCEL_CHECK_S
            if self.failures or self._silent():
                raise self._cause()
            if len(self.ended) == self.world:
                for worker in self.workers:
                    worker.wait()
                if self.result is None:
                    raise TrainingFailed("the training processes stopped before the end of the run")
                return self.result

    def _receive(self, timeout: float) -> bool:
        """Handle what arrived within ``timeout``; whether rank 0 reported progress."""
        progressed = False
        for ready in wait(list(self.open), timeout):
            connection = cast(Connection, ready)
            rank = self.open[connection]
            try:
                message: tuple[Any, ...] = connection.recv()
            except (EOFError, OSError):
                del self.open[connection]
                continue
            kind = message[0]
            if kind == "error":
                self.failures[rank] = message[2]
            elif kind in ("done", "stopped"):
                self.ended[rank] = kind
                if kind == "done" and rank == 0:
                    self.result = message[2]
            elif not self.relaying:
                pass  # stopping: rank 0's last reports are of no use any more
            elif kind == "progress":
                self.hooks.progress(message[1], message[2], **message[3])
                progressed = True
            elif kind == "log":
                self.hooks.log(message[1])
            elif kind == "tracker" and self.tracker is not None:
                getattr(self.tracker, message[1])(**message[2])
                if message[1] in ("start", "metrics_batch"):  # rank 0 waits for these (distributed._RelayTracker)
                    self._answer(connection)
        return progressed

    @staticmethod
    def _answer(connection: Connection) -> None:
        """Tell a rank that waits (distributed._Channel.call) that its report was handled."""
        try:
            connection.send(("done",))
        except OSError:
            pass  # it is gone: its exit code tells the rest

    def _silent(self) -> list[int]:
        """Ranks whose process ended without a word (killed, out of memory, a crash in C). A process
        counts once its connection is read to the end, so a last word still in the pipe is not missed."""
        return [rank for rank, worker in enumerate(self.workers)
                if worker.poll() is not None and rank not in self.ended and rank not in self.failures
                and self.connections[rank] not in self.open]

    def _exiting(self) -> bool:
        """A process that closed its connection but has not finished exiting yet."""
        return any(worker.poll() is None for worker, connection in zip(self.workers, self.connections, strict=True)
                   if connection not in self.open)

    def _cause(self) -> BaseException:
        """Wait briefly for every rank to report or exit, then name the first cause."""
        self.relaying = False
        deadline = time.monotonic() + REPORT_WAIT_S
        while time.monotonic() < deadline and (self.open or self._exiting()):
            if self.open:
                self._receive(POLL_S)
            else:
                time.sleep(0.05)
        for rank, failure in sorted(self.failures.items()):
            logger.error("training process %d of %d failed:\n%s", rank, self.world, failure.traceback)
        ours = [f.error for _, f in sorted(self.failures.items()) if f.error is not None]
        if ours:
            return ours[0]  # the recipe's own error, as one process would have raised it
        silent = self._silent()
        if silent:
            rank = silent[0]
            return TrainingFailed(f"training process {rank} of {self.world} died "
                                  f"({_exit_reason(self.workers[rank].returncode)}); the other processes were stopped")
        rank, failure = min(self.failures.items())
        return TrainingFailed(f"training process {rank} of {self.world} failed: {failure.summary}; "
                              "the other processes were stopped")

    def shut_down(self) -> None:
        """Every training process ends here: asked to stop at its next step, else terminated."""
        self.relaying = False
        for connection in list(self.open):
            try:
                connection.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(w.poll() is None for w in self.workers):
            self._receive(POLL_S)  # keep reading, so that no process blocks on a full pipe
        for action, wait_s in (("terminate", 10.0), ("kill", 5.0)):
            alive = [w for w in self.workers if w.poll() is None]
            for worker in alive:
                logger.warning("training process %d did not stop; sending %s", worker.pid, action)
                getattr(worker, action)()
            for worker in alive:
                try:
                    worker.wait(wait_s)
                except subprocess.TimeoutExpired:
                    pass
        for connection in self.connections:
            connection.close()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (", perhaps out of memory" if -code == signal.SIGKILL else "")
    return f"exit code {code}"
