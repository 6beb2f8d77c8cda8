"""Several training processes for one fine-tune: what each of them runs, and what the recipe uses there.

A config with ``processes = N`` (N > 1) trains data-parallel on this machine: N processes, one per
GPU (or N on the CPU), each running :func:`lora.train` on its share of every batch, with DDP
(through ``accelerator.prepare``) averaging the gradients so that all N hold the same LoRA
weights after every step. One step trains on ``batch_size * N`` images. The process that called
:func:`lora.train` starts them, relays what they report and watches them (:mod:`launcher`), once
:func:`require_gpus` found N GPUs there. The recipe takes its collectives (:func:`barrier`,
:func:`sum_over_ranks`) and its DDP pieces (:func:`share`, :class:`Objective`, :func:`accelerator`)
from here.

**Each training process** (:func:`_process_main`) receives its :class:`LaunchSpec` from the
launcher, joins the process group (``gloo`` on the CPU, ``nccl`` on GPUs, with
:data:`PROCESS_GROUP_TIMEOUT` so that no collective waits forever) and runs the recipe with its
:class:`Rank`. Rank 0 alone fills the feature cache, writes checkpoints, validation images, the
final LoRA and the manifests; the others wait for it at barriers. Rank 0 sends its log lines,
progress and tracker calls to the launcher, which makes them on the caller's hooks and tracker.

**Stopping**: at the top of every step all ranks vote (an all-reduce of the launcher's stop flag),
so they all leave at the same step, and a cancelled job stops within about one step. A training
process whose launcher died stops at its next step too (and on Linux the kernel kills it).

**Failure**: a rank that raises reports the error to the launcher (a :class:`RankFailure`) and
exits at once, without tearing the process group down (its peers may be mid-collective); the
launcher stops the others and raises the cause.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.pipelines.finetune.run import METRICS_FLUSH_S, VALIDATION_IMAGES

if TYPE_CHECKING:
    from latentops.pipelines.finetune.config import LoraConfig
    from latentops.pipelines.finetune.run import TrainingResult

# Longest a rank waits in one collective, e.g. while rank 0 alone fills the feature cache or renders
# validation images; the launcher notices a dead rank long before (by its exit code).
PROCESS_GROUP_TIMEOUT = dt.timedelta(minutes=30)
T = TypeVar("T")  # what a batch holds


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
    if process.world_size == 1:
        return flag
    vote = torch.tensor([1.0 if flag else 0.0], device=process.device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def sum_over_ranks(values: list[float], process: Rank) -> list[float]:
    """Element-wise sum of ``values`` over all ranks, in float64."""
    total = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(v) for v in total.tolist()]


# --- DDP pieces the recipe trains with -----------------------------------------------------------


def share(batch: list[T], rank: int, per_rank: int) -> list[T]:
    """Rank ``rank``'s part of a global batch (a single process: all of it)."""
    return batch[rank * per_rank:(rank + 1) * per_rank]


class Objective(torch.nn.Module):
    """The trained modules and one step's loss as a module: what DDP wraps when there are several processes."""

    def __init__(self, trained: dict[str, torch.nn.Module], loss: Callable[[int], torch.Tensor]) -> None:
        super().__init__()
        self.trained = torch.nn.ModuleDict(trained)
        self.step_loss = loss
        # DDP synchronises the LoRA tensors only: frozen weights and buffers are identical on every rank
        # already, so they are neither broadcast at the start nor before every step.
        frozen = [n for n, p in self.named_parameters() if not p.requires_grad] + [n for n, _ in self.named_buffers()]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, frozen)

    def forward(self, step: int) -> torch.Tensor:
        return self.step_loss(step)


def accelerator(precision: str, device: torch.device) -> Any:
    """accelerate's ``Accelerator`` for a training process of a multi-process run."""
    from accelerate import Accelerator, DataLoaderConfiguration

    # split_batches: a plan batch is the global batch, so the LR schedule advances once per step, not
    # once per rank as accelerate does for per-rank batches.
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu",
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


# --- inside a training process ---------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
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

    def call(self, message: tuple[Any, ...]) -> None:
        """Send ``message`` and wait until the launcher has handled it, or asks to stop (a launcher that
        stops relays nothing more: the step that follows sees the stop)."""
        self.connection.send(message)
        try:
            while not self.stop_asked and (reply := self.connection.recv()) != ("done",):
                self.stop_asked = reply == ("stop",)
        except (EOFError, OSError):
            self.stop_asked = True  # the launcher is gone

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
    """Rank 0's tracker: each call goes to the launcher, which makes it on the caller's tracker.

    Metrics are held here and sent as one batch about once a second (and at once for a step with
    validation images, before ``finish``, and when the process stops or fails), and rank 0 waits
    while the launcher writes them, between two steps, as one process does: written beside the
    training they would stall the next step's threads on the CPU.
    """

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.due = 0.0  # monotonic time of the next batch; the first step's metrics go at once

    def start(self, *, config: LoraConfig, meta: dict[str, Any], resumed_from: int) -> None:
        # Waited for too: opening the MLflow run takes the launcher a good share of a CPU for a moment.
        self.channel.call(("tracker", "start", {"config": config, "meta": meta, "resumed_from": resumed_from}))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.pending.append((step, values))
        if VALIDATION_IMAGES in values or time.monotonic() >= self.due:
            self.flush(wait=True)

    def metrics_batch(self, entries: list[tuple[int, dict[str, float]]]) -> None:
        self.pending.extend(entries)
        self.flush(wait=True)

    def flush(self, *, wait: bool = False) -> None:
        if self.pending:
            message = ("tracker", "metrics_batch", {"entries": self.pending})
            self.pending = []
            (self.channel.call if wait else self.channel.send)(message)
        self.due = time.monotonic() + METRICS_FLUSH_S

    def finish(self, *, result: TrainingResult) -> None:
        self.flush()
        self.channel.send(("tracker", "finish", {"result": result}))


@dataclass
class RankFailure:
    """What a rank that raised reports: the error itself when it is one of ours, else its text."""

    summary: str
    traceback: str
    error: LatentopsError | None = None


def _failure(error: BaseException) -> RankFailure:
    ours = None
    if isinstance(error, LatentopsError):
        try:
            ours = pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - an error that does not travel is reported as text
            ours = None
    return RankFailure(f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error)), ours)


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
    """A training process (started by :func:`launcher.launch`): join the group, train with this rank, report, leave."""
    connection = Connection(int(sys.argv[1]))
    spec: LaunchSpec = connection.recv()
    _die_with_parent(spec.parent_pid)
    channel = _Channel(connection, spec.parent_pid)
    rank = int(os.environ.get("RANK", "0"))  # a run of one process has no rendezvous variables
    if "OMP_NUM_THREADS" in os.environ:  # else torch's default, as in any process (launcher.launch)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    device = torch.device("cuda", rank) if spec.device_type == "cuda" else torch.device("cpu")
    process = Rank(rank=rank, world_size=spec.world_size, device=device)
    outcome: tuple[str, int, Any]
    tracker = _RelayTracker(channel) if process.is_main and spec.tracked else None
    # A run of one process (a queued job training in a process of its own) has no group to join: it
    # trains as a single process would, and only its reports travel.
    grouped = spec.world_size > 1
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if grouped:
            dist.init_process_group(backend(spec.device_type), rank=rank, world_size=spec.world_size,
                                    timeout=PROCESS_GROUP_TIMEOUT)  # rendezvous at MASTER_ADDR:MASTER_PORT
        result = spec.train(**spec.train_kwargs, device=device, process=process if grouped else None,
                            hooks=_RankHooks(process, channel), tracker=tracker)
        outcome = ("done", rank, result if process.is_main else None)
    except StopRequested:
        outcome = ("stopped", rank, None)
    except BaseException as error:  # noqa: BLE001 - everything is reported to the launcher
        _leave(connection, ("error", rank, _failure(error)), code=1, tracker=tracker)  # peers may be mid-collective
    if grouped:
        dist.destroy_process_group()
    _leave(connection, outcome, code=0, tracker=tracker)


def _leave(connection: Connection, message: tuple[str, int, Any], *, code: int, tracker: _RelayTracker | None) -> None:
    """Send the metrics still held and the last word, and exit at once: the outputs are written and
    closed, and tearing down an interpreter full of torch takes seconds the run has no use for."""
    try:
        if tracker is not None:
            tracker.flush()
        connection.send(message)
        connection.close()
    except OSError:
        pass  # the launcher is gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
