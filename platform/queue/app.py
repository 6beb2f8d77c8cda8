"""The Celery application.

The broker carries only job ids; job state lives in the database. Settings that keep a job from
being lost: late acknowledgement (a message is acked only after the task returns), requeue when
the worker process dies, one message prefetched per worker process, and a visibility timeout
longer than the longest job so Redis does not hand a running job to a second worker.
"""

from __future__ import annotations

import functools
import importlib

from celery import Celery
from kombu import Exchange, Queue

from latentops.core.settings import Settings, get_settings

QUEUES = ("gpu", "cpu")
# Imported by sending a task (and resolving the broker's host name), not by importing Celery.
CLIENT_MODULES = ("celery.app.events", "celery.app.task", "celery.backends.base", "celery.canvas",
                  "celery.events.dispatcher", "celery.result", "encodings.idna")


def create_celery(settings: Settings) -> Celery:
    app = Celery("latentops", broker=settings.broker_url, include=["latentops.platform.queue.tasks", "latentops.platform.queue.worker", "latentops.platform.queue.metrics_server"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # Priorities 0-9 (admins' jobs go first); Redis emulates them with one list per step.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s,
                                  "queue_order_strategy": "priority", "priority_steps": list(range(10))},
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        task_default_queue="gpu",
        task_create_missing_queues=False,
    )
    return app


@functools.lru_cache(maxsize=1)
def celery_app() -> Celery:
    """The process-wide Celery app for the configured broker."""
    return create_celery(get_settings())


def load_client() -> None:
    """Import what pinging the broker and sending a task import, without connecting.

    An API server calls this before it freezes its startup heap (``api.app.settle_heap``): left to
    the first submit, Celery's sending side, kombu's transport and the broker's client stay in
    the collector's sight, walked by every full collection.
    """
    for module in CLIENT_MODULES:
        importlib.import_module(module)
    app = celery_app()
    connection = app.connection_for_write()
    try:
        _ = connection.transport  # the transport's module and its client (kombu.transport.redis, redis); no I/O
    finally:
        connection.release()
