"""Several training processes for one fine-tune: launched, relayed and watched by the caller.

A config with ``processes = N`` (N > 1) trains data-parallel on this machine: N processes, one per
GPU (or N on the CPU), each running :func:`lora.train` on its share of every batch, with DDP
(through ``accelerator.prepare``) averaging the gradients so that all N hold the same LoRA
weights after every step. One step trains on ``batch_size * N`` images.

**The launcher** (:func:`launch`) runs in the process that called :func:`lora.train`: the job
handler on a worker, or ``latentops finetune run``, once :func:`require_gpus` found N GPUs
there. It picks a free loopback port and starts N fresh Python processes, each with the
environment ``torchrun`` would give it (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) and one end of a socket pair to the launcher. (Plain
subprocesses, not ``multiprocessing`` ones: a Celery pool process may not have children of its
own, and spawn would re-import the caller's main module.) The launcher stays the one process that talks to the job:
rank 0 sends its log lines, progress and tracker calls over its connection, and the launcher hands
them to the caller's hooks and MLflow tracker, so the database and MLflow are written exactly as
for one process. It polls the caller's cancellation about once a second and at every step.

**Each training process** (:func:`_process_main`) joins the process group (``gloo`` on the CPU,
``nccl`` on GPUs, with :data:`PROCESS_GROUP_TIMEOUT` so that no collective waits forever) and runs
the recipe with its :class:`Rank`. Rank 0 alone fills the feature cache, writes checkpoints,
validation images, the final LoRA and the manifests; the others wait for it at barriers.

**Stopping**: at the top of every step all ranks vote (an all-reduce of the launcher's stop flag),
so they all leave at the same step, and a cancelled job stops within about one step. A training
process whose launcher died stops at its next step too (and on Linux the kernel kills it).

**Failure**: a rank that raises reports the error and exits; one that dies (killed, out of memory)
is seen by its exit code. The launcher then stops the others (stop flag, then SIGTERM, SIGKILL),
joins every process, and raises the cause: the recipe's own error as it is (an ``InvalidInput``,
a ``TrainingFailed`` for a NaN loss), or ``TrainingFailed`` naming the rank that died or failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.pipelines.finetune.checkpoint import TrainingFailed

if TYPE_CHECKING:
    from latentops.pipelines.finetune.config import LoraConfig
    from latentops.pipelines.finetune.run import Hooks, Tracker, TrainingResult

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Longest a rank waits in one collective, e.g. while rank 0 alone fills the feature cache or renders
# validation images; the launcher notices a dead rank long before (by its exit code).
PROCESS_GROUP_TIMEOUT = dt.timedelta(minutes=30)
POLL_S = 0.2  # how often the launcher looks at its connections and its processes
CANCEL_CHECK_S = 1.0  # the caller's cancellation is polled at least this often (and at every step)
REPORT_WAIT_S = 3.0  # after a failure, how long the other ranks get to report theirs and exit
STOP_GRACE_S = 60.0  # a stop request: finish the step, else SIGTERM; 10 s later, SIGKILL


class StopRequested(Exception):
    """Raised in every training process at the same step when the launcher asked them to stop."""


@dataclass(frozen=True)
class Rank:
    """One training process's place: rank among ``world_size``, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def available_gpus() -> int:
    """GPUs this process may use (``CUDA_VISIBLE_DEVICES`` applied)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_gpus(processes: int, available: int) -> None:
    """Refuse more GPU processes than GPUs: each training process holds one GPU."""
    if processes <= available:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise InvalidInput(
        f"processes: this fine-tune asks for {processes} processes, one per GPU, but this worker was given "
        f"{available} GPU(s)" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
        + f"; ask for at most {available}, or run it on a worker process that sees {processes} GPUs "
        "(a worker started with --gpus gives each of its processes one GPU; start it without --gpus and with "
        f"--concurrency 1 where CUDA_VISIBLE_DEVICES lists {processes} GPUs)")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# --- collectives the recipe uses (no-ops for a single process) -----------------------------------


def barrier(process: Rank | None) -> None:
    """Wait until every rank got here (nothing to wait for in a single process)."""
    if process is None:
        return
    if process.device.type == "cuda":
        dist.barrier(device_ids=[process.device.index or 0])
    else:
        dist.barrier()


def any_rank(flag: bool, process: Rank) -> bool:
    """True on every rank when it is true on one of them."""
    vote = torch.tensor([1.0 if flag else 0.0], device=process.device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def sum_over_ranks(values: list[float], process: Rank) -> list[float]:
    """Element-wise sum of ``values`` over all ranks, in float64."""
    total = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(v) for v in total.tolist()]


# --- inside a training process ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What every training process receives from the launcher, first thing on its connection."""

    world_size: int
    device_type: str
    parent_pid: int
    tracked: bool
    train: Callable[..., TrainingResult]  # lora.train: pickled by name, imported by each process
    train_kwargs: dict[str, Any]


class _Channel:
    """A training process's end of its connection to the launcher."""

    def __init__(self, connection: Connection, parent_pid: int) -> None:
        self.connection, self.parent_pid = connection, parent_pid
        self.stop_asked = False

    def send(self, message: tuple[Any, ...]) -> None:
        self.connection.send(message)

    def stop_requested(self) -> bool:
        """Has the launcher asked to stop (or gone away)? Never blocks."""
        try:
            while not self.stop_asked and self.connection.poll():
                self.stop_asked = self.connection.recv() == ("stop",)
        except (EOFError, OSError):
            self.stop_asked = True  # the launcher is gone
        return self.stop_asked or os.getppid() != self.parent_pid


class _RankHooks:
    """Rank 0 forwards log lines and progress to the launcher; every rank takes part in the stop vote."""

    def __init__(self, process: Rank, channel: _Channel) -> None:
        self.process, self.channel = process, channel

    def progress(self, step: int, total: int, **metrics: float) -> None:
        if self.process.is_main:
            self.channel.send(("progress", step, total, metrics))

    def log(self, message: str) -> None:
        if self.process.is_main:
            self.channel.send(("log", message))

    def check_cancelled(self) -> None:
        # A collective: every rank calls it at the top of the same step, so all of them stop together.
        if any_rank(self.channel.stop_requested(), self.process):
            raise StopRequested(f"rank {self.process.rank}: stop requested")


class _RelayTracker:
    """Rank 0's tracker: each call goes to the launcher, which makes it on the caller's tracker."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel

    def start(self, *, config: LoraConfig, meta: dict[str, Any], resumed_from: int) -> None:
        self.channel.send(("tracker", "start", {"config": config, "meta": meta, "resumed_from": resumed_from}))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.channel.send(("tracker", "metrics", {"step": step, "values": values}))

    def finish(self, *, result: TrainingResult) -> None:
        self.channel.send(("tracker", "finish", {"result": result}))


@dataclass
class _Failure:
    """What a rank that raised reports: the error itself when it is one of ours, else its text."""

    summary: str
    traceback: str
    error: LatentopsError | None = None


def _failure(error: BaseException) -> _Failure:
    ours = None
    if isinstance(error, LatentopsError):
        try:
            ours = pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - an error that does not travel is reported as text
            ours = None
    return _Failure(f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error)), ours)


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this process when the launcher goes (a worker killed mid-job)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the launcher went before the line above took effect
        os._exit(1)


def _process_main() -> None:
    """A training process (started by :func:`launch`): join the group, train with this rank, report, leave."""
    connection = Connection(int(sys.argv[1]))
    spec: _Spec = connection.recv()
    _die_with_parent(spec.parent_pid)
    channel = _Channel(connection, spec.parent_pid)
    rank = int(os.environ["RANK"])
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    device = torch.device("cuda", rank) if spec.device_type == "cuda" else torch.device("cpu")
    process = Rank(rank=rank, world_size=spec.world_size, device=device)
    outcome: tuple[str, int, Any]
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend(spec.device_type), rank=rank, world_size=spec.world_size,
                                timeout=PROCESS_GROUP_TIMEOUT)  # rendezvous at MASTER_ADDR:MASTER_PORT
        result = spec.train(**spec.train_kwargs, device=device, process=process, hooks=_RankHooks(process, channel),
                            tracker=_RelayTracker(channel) if process.is_main and spec.tracked else None)
        outcome = ("done", rank, result if process.is_main else None)
    except StopRequested:
        outcome = ("stopped", rank, None)
    except BaseException as error:  # noqa: BLE001 - everything is reported to the launcher
        _leave(connection, ("error", rank, _failure(error)), code=1)  # peers may be mid-collective: no teardown
    dist.destroy_process_group()
    _leave(connection, outcome, code=0)


def _leave(connection: Connection, message: tuple[str, int, Any], *, code: int) -> None:
    """Send the last word and exit at once: the outputs are written and closed, and tearing down an
    interpreter full of torch takes seconds the run has no use for."""
    try:
        connection.send(message)
        connection.close()
    except OSError:
        pass  # the launcher is gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- the launcher ------------------------------------------------------------------------------------

_CHILD = "from latentops.pipelines.finetune.distributed import _process_main; _process_main()"


def launch(train: Callable[..., TrainingResult], *, processes: int, device_type: str, hooks: Hooks,
           tracker: Tracker | None, train_kwargs: dict[str, Any]) -> TrainingResult:
    """Run ``train(**train_kwargs)`` (``lora.train``) in ``processes`` processes; rank 0's result.

    ``hooks`` and ``tracker`` are the caller's: they are called here, in this process, with what
    rank 0 reports. Whatever they raise (a cancellation, a lost lease) stops every rank first. The
    caller has checked the GPUs (:func:`require_gpus`).
    """
    spec = _Spec(world_size=processes, device_type=device_type, parent_pid=os.getpid(), tracked=tracker is not None,
                 train=train, train_kwargs=train_kwargs)
    port = free_port()
    environment = {**os.environ, "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), "WORLD_SIZE": str(processes),
                   "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    if device_type == "cpu" and sys.platform.startswith("linux"):
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every rank is on this machine
    hooks.log(f"starting {processes} training processes ({backend(device_type)}, rendezvous at {LOOPBACK}:{port})")
    supervisor = _Supervisor(hooks, tracker)
    try:
        for rank in range(processes):
            ours, theirs = Pipe(duplex=True)
            worker = subprocess.Popen([sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                      env={**environment, "RANK": str(rank), "LOCAL_RANK": str(rank)})
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
        self.failures: dict[int, _Failure] = {}
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
        return progressed

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
