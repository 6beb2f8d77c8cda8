"""``latentops jobs``: list, inspect, cancel and read the logs of jobs."""

from __future__ import annotations

import typer

from latentops.platform.cli import context, output
from latentops.platform.services import jobs as jobs_service

jobs_app = typer.Typer(help="Jobs on the queue: list, show, cancel, retry, logs.", no_args_is_help=True)


@jobs_app.command("list")
def list_jobs(
    state: str = typer.Option(None, help="Only jobs in this state."),
    offset: int = typer.Option(0, min=0), limit: int = typer.Option(50, min=1, max=1000),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List jobs, newest first."""
    with context.session() as db:
        rows = [jobs_service.as_dict(job) for job in jobs_service.list_jobs(db, state=state, offset=offset, limit=limit)]
    if json_output:
        for row in rows:
            output.emit_json(row)
        return
    output.table("jobs", ["id", "kind", "state", "progress", "attempts", "created"],
                 [(r["id"], r["kind"], r["state"], f"{r['progress'].get('percent', 0)}%", r["attempts"], r["created_at"])
                  for r in rows])


@jobs_app.command("show")
def show(job_id: int, json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show one job's state, progress and result."""
    with context.session() as db:
        job = jobs_service.get(db, job_id)
        row = jobs_service.as_dict(job) | {"queue_position": jobs_service.queue_position(db, job)}
    if json_output:
        output.emit_json(row)
    else:
        for key, value in row.items():
            output.say(f"{key:>12}: {value}")


@jobs_app.command("cancel")
def cancel(job_id: int) -> None:
    """Cancel a job: a queued one at once, a running one within a step."""
    with context.session() as db:
        job = jobs_service.cancel(db, job_id=job_id, actor=context.actor())
        state = job.state.value
    output.say(f"job {job_id}: cancellation requested (state {state})")


@jobs_app.command("retry")
def retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (a running or finished-successfully job is refused)."""
    jobs_service.retry(context.settings(), job_id=job_id, actor=context.actor())
    output.say(f"job {job_id} queued again")


@jobs_app.command("logs")
def logs(job_id: int) -> None:
    """Print a job's event log."""
    with context.session() as db:
        jobs_service.get(db, job_id)
        for event in jobs_service.events(db, job_id):
            output.say(f"{event.at:%Y-%m-%d %H:%M:%S} {event.kind:<7} {event.message}")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
