"""Worker process hooks: housekeeping, per-child GPU pinning, and clean state after fork.

The worker's main process runs a housekeeping thread that re-dispatches jobs left behind by
crashed workers (see ``jobs.sweep``) and signs a periodic audit checkpoint when one is due (many
workers may find it due at once; the checkpoint writer serialises them and skips an unchanged
tree) and, hourly, shreds audit personal payloads past their retention period
(``governance/retention.py``), plus a thread that moves audit entries of writers that died between commit and
integration into the chain. Each prefork child gets its own GPU when the worker was started with
``--gpus``, and drops database connections inherited from its parent.

A prefork child dies with the worker (Linux parent-death signal, SIGKILL): a worker killed
mid-job, or killed with the ``latentops up`` that started it, leaves no child to finish the job
beside the worker that takes it over. Celery's pool initialiser sets the same signal; the hook here
also closes the race in which the worker died before the signal was set, and does not depend on
the Celery version. The children are forked by the worker's main thread, which lives as long as
the worker, so the signal fires only when the worker itself goes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from latentops.core.settings import get_settings
from latentops.platform import database

log = logging.getLogger(__name__)

GPU_LIST_ENV = "LATENTOPS_WORKER_GPUS"
_stop = threading.Event()
# A fork copies only the forking thread, with every lock as it stands. A child forked while a
# housekeeping thread was inside SQLite (or a database or broker client) inherits that thread's
# locks with nobody left to release them, and hangs at its first connection: the pool replaces a
# dead child in exactly that way, and the job it hands the new child never starts. So the threads
# below work under this lock, and the pool's fork waits for it (``_guard_forks``).
_fork_guard = threading.Lock()
_forks_guarded = False


def _guard_forks() -> None:
    """From now on, every ``os.fork`` of this process waits until no housekeeping work is under way."""
    global _forks_guarded
    if not _forks_guarded:
        os.register_at_fork(before=_fork_guard.acquire, after_in_parent=_fork_guard.release,
                            after_in_child=_fork_guard.release)
        _forks_guarded = True


def _checkpoint_if_due() -> None:
    from latentops.governance import checkpoints

    settings = get_settings()
    with database.session_scope(settings.database_url) as session:
        if not checkpoints.due(session):
            return
        key = checkpoints.default_key_path(settings)
        checkpoints.create(session, signing_key=checkpoints.load_or_create_signing_key(key),
                           sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                           keyring=checkpoints.signing_keyring(key))


def _retention_if_due() -> None:
    """Shred audit personal payloads past their retention period (at most hourly per worker)."""
    from latentops.governance import retention

    settings = get_settings()
    if retention.due(settings.database_url):
        with database.session_scope(settings.database_url) as session:
            retention.run(session)


def _housekeeping_forever(worker: str) -> None:
    from latentops.platform.services import jobs

    settings = get_settings()
    while not _stop.wait(settings.sweep_interval_s):
        for name, task in (("sweep", lambda: jobs.sweep(settings, worker=worker)), ("checkpoint", _checkpoint_if_due),
                           ("retention", _retention_if_due)):
            try:
                with _fork_guard:
                    task()
            except Exception:  # a database or broker blip: log it and try again next interval
                log.exception("%s failed", name)


@worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    from latentops.governance import integration

    name = getattr(sender, "hostname", None) or socket.gethostname()
    _guard_forks()
    threading.Thread(target=_housekeeping_forever, args=(str(name),), daemon=True, name="housekeeping").start()
    integration.start_background(database.get_engine(get_settings().database_url), interval_s=5.0, stop=_stop,
                                 guard=_fork_guard)
    log.info("housekeeping started (every %.0fs)", get_settings().sweep_interval_s)


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    _stop.set()


@worker_process_init.connect
def _child_init(**_: Any) -> None:
    from billiard.process import current_process

    from latentops.platform.stack import die_with_parent

    # First: the worker may have been killed while this child was starting.
    die_with_parent(signal.SIGKILL, getattr(current_process(), "_parent_pid", None) or os.getppid())
    # Pooled connections must not be shared across fork.
    database.forget_after_fork()
    gpus = [gpu for gpu in os.environ.get(GPU_LIST_ENV, "").split(",") if gpu]
    if gpus:
        index = getattr(current_process(), "index", 0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        log.info("worker child %s pinned to GPU %s", index, os.environ["CUDA_VISIBLE_DEVICES"])
