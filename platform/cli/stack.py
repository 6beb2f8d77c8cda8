"""Running latentops: ``up`` (the whole local stack), ``serve`` (API), ``worker``, ``demo``."""

from __future__ import annotations

import os

import typer

from latentops.core.errors import Conflict, InvalidInput, ServiceUnavailable
from latentops.platform.cli import context, output
from latentops.platform.database import check_connection
from latentops.platform.stack import LocalStack, port_in_use


def up(
    port: int = typer.Option(8000, help="Port for the API and portal."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Start the local stack in the foreground: Redis, one worker and the API (Ctrl-C stops all)."""
    context.require_local()
    stack = LocalStack(context.settings(), host=host, port=port, on_event=output.say)
    stack.start()
    raise typer.Exit(stack.run_forever())


def serve(
    port: int = typer.Option(None, help="Port (default: LATENTOPS_API_PORT, 8000)."),
    host: str = typer.Option(None, help="Address (default: LATENTOPS_API_HOST, 127.0.0.1)."),
    workers: int = typer.Option(1, min=1, max=64, help="API processes (the API is stateless: about one per CPU core; "
                                "or run one per container and scale replicas)."),
) -> None:
    """Start the API and portal against the configured database and broker (production)."""
    context.require_local()
    import uvicorn

    settings = context.settings()
    host, port = host or settings.api_host, port or settings.api_port
    check_connection(settings.database_url)
    if port_in_use(host, port):
        raise Conflict(f"port {port} on {host} is already in use; choose another with --port")
    # Forwarded headers are the app's to judge (LATENTOPS_TRUSTED_PROXIES): uvicorn's own handling
    # would believe any X-Forwarded-For sent from 127.0.0.1.
    uvicorn.run("latentops.platform.api.app:create_app", factory=True, host=host, port=port,
                log_level=settings.log_level.lower(), proxy_headers=False, workers=workers)


def worker(
    queues: str = typer.Option("gpu,cpu", help="Comma-separated queues to consume: gpu, cpu."),
    gpus: str = typer.Option(None, help="GPU indices, e.g. 0 or 0,1: one worker process per GPU, each pinned via "
                             "CUDA_VISIBLE_DEVICES. Refused when the GPUs are not there."),
    concurrency: int = typer.Option(None, min=1, max=64, help="Worker processes (default: 1, or one per GPU)."),
) -> None:
    """Start a Celery worker consuming job ids from the broker."""
    context.require_local()
    from latentops.platform.queue.app import QUEUES  # Celery: imported by the commands that use it
    from latentops.platform.queue.worker import GPU_LIST_ENV

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        raise InvalidInput(f"queues: unknown queue(s) {', '.join(unknown) or '(none)'}; valid: {', '.join(QUEUES)}")
    if gpus is not None:
        indices = _check_gpus(gpus)
        os.environ[GPU_LIST_ENV] = ",".join(indices)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(indices)
        concurrency = concurrency or len(indices)
    settings = context.settings()
    check_connection(settings.database_url)
    from latentops.platform.services.jobs import ping_broker

    ping_broker(settings)
    from latentops.platform.queue.app import celery_app

    celery_app().worker_main([
        "worker", "--queues", ",".join(wanted), "--concurrency", str(concurrency or 1), "--pool", "prefork",
        "--hostname", f"latentops-{os.getpid()}@%h", "--loglevel", settings.log_level, "--without-gossip",
        "--without-mingle",
    ])


def _check_gpus(gpus: str) -> list[str]:
    indices = [part.strip() for part in gpus.split(",") if part.strip()]
    if not indices or not all(part.isdigit() for part in indices):
        raise InvalidInput(f"gpus: expected comma-separated GPU indices such as 0 or 0,1, got {gpus!r}")
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [index for index in indices if int(index) >= available]
    if missing:
        raise ServiceUnavailable(
            f"gpus: this worker asked for GPU {', '.join(missing)} but the machine has {available} CUDA device(s); "
            "start it without --gpus to run on the CPU"
        )
    return indices


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(serve)
    app.command()(worker)
