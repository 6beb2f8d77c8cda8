"""Worker process hooks: the crash sweeper, per-child GPU pinning, and clean state after fork.

The worker's main process runs a sweeper thread that re-dispatches jobs left behind by crashed
workers (see ``jobs.sweep``). Each prefork child gets its own GPU when the worker was started with
``--gpus``, and drops database connections inherited from its parent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from latentops.platform import database
from latentops.platform.settings import get_settings

log = logging.getLogger(__name__)

GPU_LIST_ENV = "LATENTOPS_WORKER_GPUS"
_stop = threading.Event()


def _sweep_forever(worker: str) -> None:
    from latentops.platform.services import jobs

    settings = get_settings()
    while not _stop.wait(settings.sweep_interval_s):
        try:
            jobs.sweep(settings, worker=worker)
        except Exception:  # a database or broker blip: log it and sweep again next interval
            log.exception("sweep failed")


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or socket.gethostname()
    threading.Thread(target=_sweep_forever, args=(str(name),), daemon=True, name="job-sweeper").start()
    log.info("job sweeper started (every %.0fs)", get_settings().sweep_interval_s)


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()


@worker_process_init.connect
def _child_init(**_: Any) -> None:
    # Pooled connections must not be shared across fork.
    database.forget_after_fork()
    gpus = [gpu for gpu in os.environ.get(GPU_LIST_ENV, "").split(",") if gpu]
    if gpus:
        from billiard.process import current_process

        index = getattr(current_process(), "index", 0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        log.info("worker child %s pinned to GPU %s", index, os.environ["CUDA_VISIBLE_DEVICES"])
