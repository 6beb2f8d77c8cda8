"""``latentops jobs``: list, inspect, cancel and read the logs of jobs."""

from __future__ import annotations

from typing import Any

import typer

from latentops.platform.cli import backends, output

jobs_app = typer.Typer(help="Jobs on the queue: list, show, watch, cancel, retry, logs.", no_args_is_help=True)


@jobs_app.command("list")
def list_jobs(
    state: str = typer.Option(None, help="Only jobs in this state."),
    offset: int = typer.Option(0, min=0), limit: int = typer.Option(50, min=1, max=1000),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List jobs, newest first."""
    rows = backends.backend().list_jobs(state=state, offset=offset, limit=limit)
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
    row = backends.backend().show_job(job_id)
    if json_output:
        output.emit_json(row)
    else:
        for key, value in row.items():
            output.say(f"{key:>12}: {value}")


@jobs_app.command("cancel")
def cancel(job_id: int) -> None:
    """Cancel a job: a queued one at once, a running one within a step."""
    state = backends.backend().cancel_job(job_id)
    output.say(f"job {job_id}: cancellation requested (state {state})")


@jobs_app.command("retry")
def retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (a running or finished-successfully job is refused)."""
    backends.backend().retry_job(job_id)
    output.say(f"job {job_id} queued again")


@jobs_app.command("logs")
def logs(job_id: int) -> None:
    """Print a job's event log."""
    for event in backends.backend().job_logs(job_id):
        output.say(f"{event['at']:%Y-%m-%d %H:%M:%S} {event['kind']:<7} {event['message']}")


@jobs_app.command("watch")
def watch(job_id: int, json_output: bool = typer.Option(False, "--json", help="Print each update as a JSON line.")
          ) -> None:
    """Follow a job's progress until it finishes (the server's event stream with --server); exit 1 unless it succeeded."""
    last: dict[str, object] = {}
    for update in backends.backend().follow_job(job_id):
        last = update
        if json_output:
            output.emit_json(update)
            continue
        progress = update.get("progress") or {}
        percent = progress.get("percent", 0) if isinstance(progress, dict) else 0
        place = f", queue position {update['queue_position']}" if update.get("queue_position") else ""
        output.say(f"job {job_id}: {update['state']} {percent}%{place}")
    if last.get("state") != "succeeded":
        raise typer.Exit(1)


def follow_to_success(job: dict[str, Any], missing: str) -> None:
    """Print a queued job's progress as it reports it; exit 1, naming its state and error, unless it
    succeeded (``missing``: what the caller then has not got, e.g. "no package")."""
    job_id = int(job["id"])
    last: dict[str, Any] = {}
    for update in backends.backend().follow_job(job_id):
        last = update
        progress = update.get("progress") or {}
        output.say(f"job {job_id}: {update['state']} {progress.get('percent', 0)}%")
    if last.get("state") != "succeeded":
        output.error(f"job {job_id} {last.get('state')}: {last.get('error') or missing}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
