"""``latentops datasets``: generate a synthetic dataset from a spec (in process or queued), list, show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from latentops.platform.cli import backends, context, output
from latentops.platform.cli.jobs import follow_to_success

datasets_app = typer.Typer(help="Synthetic datasets from a spec, through the governed path.", no_args_is_help=True)


class _ProgressHooks:
    """The run's hooks drawn as a rich progress bar."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress_bar, self.task = progress, task

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.progress_bar.update(self.task, completed=step, total=total)

    def log(self, message: str) -> None:
        self.progress_bar.console.print(message, highlight=False)

    def check_cancelled(self) -> None:
        pass


@datasets_app.command("generate")
def generate(
    spec_file: Annotated[Path, typer.Option("--spec", help="The dataset spec (YAML).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (in process); resumes an unfinished run.")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Queue it as a job instead of running it here (with --server: "
                                                       "on the server).")] = False,
    as_user: Annotated[str | None, typer.Option("--as", help="Act as this user (email) instead of the console (local only).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate a dataset: screened images, ImageFolder or WebDataset, manifest, card, MLflow run.

    Exits 3 when no image was released (every one held for review, or every class refused).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from latentops.core.errors import InvalidInput
    from latentops.pipelines.datasets import spec as spec_module
    from latentops.platform.services import datasets

    spec = spec_module.load(spec_file)
    if submit:
        queued = backends.backend().submit_dataset(spec=spec, as_user=as_user)
        if json_output:
            output.emit_json(queued)
        else:
            output.say(f"dataset {queued['dataset_id']} queued as job {queued['job_id']}")
        return
    if context.remote():
        raise InvalidInput("--out: not available with --server (that generates in this process; queue it on the "
                           "server with --submit)")
    actor = as_user or context.actor()
    if out is None:
        raise InvalidInput("out: give --out DIR to run in process, or --submit to queue it")
    with Progress(TextColumn(f"[bold]{spec.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=output.err_console, disable=json_output) as progress:
        task = progress.add_task("images", total=spec.total_images)
        summary = datasets.run(context.settings(), spec=spec, out=out, actor=actor, hooks=_ProgressHooks(progress, task))
    if json_output:
        output.emit_json(summary)
    else:
        output.say(f"dataset {summary['dataset_id']}: {summary['images']} images in {summary['out']} "
                   f"({summary['released']} released, {summary['quarantined']} quarantined, "
                   f"{sum(summary['filtered'].values())} filtered)")
        for denied in summary["denied_classes"]:
            output.error(f"class {denied['class']!r} refused by policy", reasons=denied["reasons"])
    if not summary["released"]:  # an empty dataset is not a success a script should build on
        if not json_output:
            output.nothing_released(int(summary["quarantined"]), [])
        raise typer.Exit(output.EXIT_NOTHING_RELEASED)


@datasets_app.command("submit")
def submit_command(
    spec_file: Annotated[Path, typer.Option("--spec", help="The dataset spec (YAML).")],
    as_user: Annotated[str | None, typer.Option("--as", help="Act as this user (email).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Queue a dataset job (the same as ``generate --submit``)."""
    generate(spec_file=spec_file, out=None, submit=True, as_user=as_user, json_output=json_output)


@datasets_app.command("list")
def list_command(json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Datasets, newest first."""
    rows = backends.backend().list_datasets()
    if json_output:
        output.emit_json(rows)
        return
    output.table("Datasets", ["id", "name", "team", "state", "format", "images", "job"],
                 [(r["id"], r["name"], r["team"], r["state"], r["format"], r["stats"].get("images"), r["job_id"])
                  for r in rows])


@datasets_app.command("show")
def show(dataset_id: int, json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """One dataset: spec, state, statistics and where it is."""
    row = backends.backend().show_dataset(dataset_id)
    if json_output:
        output.emit_json(row)
        return
    for key in ("id", "name", "team", "state", "format", "path", "job_id", "created_at"):
        output.say(f"{key}: {row[key]}")
    for key, value in sorted(row["stats"].items()):
        output.say(f"stats.{key}: {value}")


@datasets_app.command("import-classifier")
def import_classifier(
    source: Annotated[Path, typer.Argument(help="A TorchScript classifier file (logits, one column per class).")],
) -> None:
    """Register a classifier for dataset filters; prints the id a spec names (filters.classifier.id)."""
    from latentops.pipelines.datasets import filters
    from latentops.platform.services import datasets

    context.require_local()  # the file is stored in the server's artefact folder
    output.say(filters.import_classifier(datasets.classifier_root(context.settings()), source))


@datasets_app.command("package")
def package(
    dataset_id: Annotated[int, typer.Argument(help="A ready dataset's id.")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the zip (a folder takes its own name).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job and write the zip (default), or only "
                                                                "queue it.")] = True,
) -> None:
    """Package a ready dataset as one zip (splits, manifest, card) on the cpu queue, then download it.

    The zip loads without unpacking: ``datasets.load_dataset("imagefolder", data_files={"train":
    "zip://train/**::PKG.zip", "validation": "zip://validation/**::PKG.zip"})``.
    """
    backend = backends.backend()
    job = backend.package_dataset(dataset_id)
    output.say(f"queued package of dataset {dataset_id} as job {job['id']} on the {job['queue']} queue")
    if not wait:
        return
    follow_to_success(job, "no package")
    path = backend.fetch_dataset_package(dataset_id, int(job["id"]), out or Path.cwd())
    output.say(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
