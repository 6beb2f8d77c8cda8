"""``latentops finetune``: run (in process), submit (queued), validate-images, adapters, promote.

``run`` and ``submit`` take the same options, or a ``--config job.toml`` with the same keys (a
``[finetune]`` table or top-level keys; options given on the command line win). Both go through
the same checks (config, images, copyright screening, jobs policy) and the same recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from latentops.core.errors import InvalidInput
from latentops.platform.cli import backends, context, output
from latentops.platform.services.finetune_request import Request

finetune_app = typer.Typer(help="Fine-tune base models: LoRA and DreamBooth-LoRA.", no_args_is_help=True)

# Keys of a job that are not recipe settings.
JOB_KEYS = {"model", "model_version", "instance_dir", "class_dir", "out", "team", "name", "attest_licence",
            "attest_consent"}


def _merge(options: dict[str, Any], config_file: Path | None) -> dict[str, Any]:
    """Options over ``--config``; the required keys checked."""
    from latentops.pipelines.finetune.config import load_toml

    merged = load_toml(config_file) if config_file else {}
    merged.update({k: v for k, v in options.items() if v is not None and v is not False})
    for key in ("model", "instance_dir", "instance_prompt"):
        if not merged.get(key):
            raise InvalidInput(f"{key}: required (as --{key.replace('_', '-')} or in the config file)")
    return merged


def _request(merged: dict[str, Any], priority: int | None = None) -> Request:
    return Request(
        model=str(merged["model"]), model_version=merged.get("model_version"), instance_dir=Path(merged["instance_dir"]),
        class_dir=Path(merged["class_dir"]) if merged.get("class_dir") else None,
        values={k: v for k, v in merged.items() if k not in JOB_KEYS}, team=merged.get("team"),
        adapter_name=merged.get("name"), attest_licence=bool(merged.get("attest_licence")),
        attest_consent=bool(merged.get("attest_consent")), priority=priority)


def _options(model: str | None, method: str | None, instance_dir: Path | None, instance_prompt: str | None,
             class_prompt: str | None, class_dir: Path | None, steps: int | None, rank: int | None, lr: float | None,
             resolution: int | None, batch_size: int | None, seed: int | None, checkpoint_every: int | None,
             train_text_encoder: bool, team: str | None, name: str | None, attest_licence: bool,
             attest_consent: bool, processes: int | None) -> dict[str, Any]:
    return {"model": model, "method": method, "instance_dir": instance_dir, "instance_prompt": instance_prompt,
            "class_prompt": class_prompt, "class_dir": class_dir, "steps": steps, "rank": rank, "lr": lr,
            "resolution": resolution, "batch_size": batch_size, "seed": seed, "checkpoint_every": checkpoint_every,
            "train_text_encoder": train_text_encoder, "team": team, "name": name, "attest_licence": attest_licence,
            "attest_consent": attest_consent, "processes": processes}


MODEL = typer.Option(None, "--model", help="Base model name in the catalogue.")
METHOD = typer.Option(None, "--method", help="lora or dreambooth.")
INSTANCE_DIR = typer.Option(None, "--instance-dir", help="Folder of instance images (.txt sidecars or metadata.jsonl).")
INSTANCE_PROMPT = typer.Option(None, "--instance-prompt", help="Prompt for images without a caption.")
CLASS_PROMPT = typer.Option(None, "--class-prompt", help="DreamBooth: prompt of the subject's class.")
CLASS_DIR = typer.Option(None, "--class-dir", help="DreamBooth: folder of class images (missing ones are generated).")
CONFIG = typer.Option(None, "--config", help="job.toml with the same keys as these options.")
STEPS, RANK, LR = typer.Option(None, help="Training steps."), typer.Option(None, help="LoRA rank."), typer.Option(None, help="Learning rate.")
RESOLUTION, BATCH_SIZE = typer.Option(None, help="Training resolution (px)."), typer.Option(None, help="Images per step.")
SEED, CHECKPOINT_EVERY = typer.Option(None, help="Random seed."), typer.Option(None, help="Checkpoint every N steps.")
PROCESSES = typer.Option(None, help="Data-parallel training processes (1-8; one per GPU, or CPU processes without "
                         "one); --batch-size is per process.")
TRAIN_TEXT_ENCODER = typer.Option(False, "--train-text-encoder", help="Also put LoRA on the text encoder(s).")
NAME = typer.Option(None, "--name", help="Adapter name (default MODEL-METHOD).")
ATTEST_LICENCE = typer.Option(False, "--attest-licence", help="I hold the rights to train on these images.")
ATTEST_CONSENT = typer.Option(False, "--attest-consent", help="People shown consented to this use.")


class _ProgressHooks:
    """Progress bar for in-process runs (through the CLI's output layer's console)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=output.err_console)
        # Hidden until the first step: a run refused by its checks shows no empty bar.
        self.task = self.bar.add_task("train", total=None, loss="", visible=False)

    def progress(self, step: int, total: int, **metrics: float) -> None:
        shown = f"loss {metrics.get('loss', 0.0):.4f}" + (f"  val_loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else "")
        self.bar.update(self.task, completed=step, total=total, loss=shown, visible=True)

    def log(self, message: str) -> None:
        self.bar.console.print(message, highlight=False)

    def check_cancelled(self) -> None:
        pass


@finetune_app.command("run")
def run(
    model: str = MODEL, method: str = METHOD, instance_dir: Path = INSTANCE_DIR, instance_prompt: str = INSTANCE_PROMPT,
    class_prompt: str = CLASS_PROMPT, class_dir: Path = CLASS_DIR, steps: int = STEPS, rank: int = RANK, lr: float = LR,
    resolution: int = RESOLUTION, batch_size: int = BATCH_SIZE, seed: int = SEED, checkpoint_every: int = CHECKPOINT_EVERY,
    train_text_encoder: bool = TRAIN_TEXT_ENCODER, team: str = typer.Option(None, help="Team the run counts against."), name: str = NAME,
    attest_licence: bool = ATTEST_LICENCE, attest_consent: bool = ATTEST_CONSENT, processes: int = PROCESSES,
    out: Path = typer.Option(None, "--out", help="Output folder (weights, checkpoints, samples)."),
    stop_after: int = typer.Option(None, "--stop-after", help="Stop (with a checkpoint) after this step."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow or register the adapter there."),
    config: Path = CONFIG,
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fine-tune in this process, with a progress bar."""
    context.require_local()
    from latentops.platform.services import finetune as service

    options = _options(model, method, instance_dir, instance_prompt, class_prompt, class_dir, steps, rank, lr, resolution,
                       batch_size, seed, checkpoint_every, train_text_encoder, team, name, attest_licence, attest_consent,
                       processes)
    options["out"] = out
    merged = _merge(options, config)
    request = _request(merged)
    if not merged.get("out"):
        raise InvalidInput("out: required (as --out or in the config file)")
    hooks = _ProgressHooks()
    with hooks.bar:
        result = service.run_local(context.settings(), actor=context.actor(), request=request, out_dir=Path(merged["out"]),
                                   hooks=hooks, resume=resume, stop_after=stop_after, track=not no_track)
    if json_output:
        output.emit_json(result)
    elif "stopped_at" in result:
        output.say(f"stopped after step {result['stopped_at']}; continue with --resume")
    else:
        held = f", val_loss {result['val_losses'][-1][1]:.4f}" if result.get("val_losses") else ""
        output.say(f"adapter {result['adapter']} v{result['adapter_version']}: {result['weights']} "
                   f"(final loss {result['final_loss']:.4f}{held})")


@finetune_app.command("submit")
def submit(
    model: str = MODEL, method: str = METHOD, instance_dir: Path = INSTANCE_DIR, instance_prompt: str = INSTANCE_PROMPT,
    class_prompt: str = CLASS_PROMPT, class_dir: Path = CLASS_DIR, steps: int = STEPS, rank: int = RANK, lr: float = LR,
    resolution: int = RESOLUTION, batch_size: int = BATCH_SIZE, seed: int = SEED, checkpoint_every: int = CHECKPOINT_EVERY,
    train_text_encoder: bool = TRAIN_TEXT_ENCODER, team: str = typer.Option(None, help="Team the job runs for."), name: str = NAME,
    attest_licence: bool = ATTEST_LICENCE, attest_consent: bool = ATTEST_CONSENT, processes: int = PROCESSES,
    priority: int = typer.Option(None, min=0, max=9, help="Queue priority, higher first (default: your role's; "
                                 "the jobs policy sets each role's default and maximum)."),
    config: Path = CONFIG,
    json_output: bool = typer.Option(False, "--json", help='Print {"job_id": ...}.'),
) -> None:
    """Queue a fine-tuning job (checked, screened and decided before it is queued); with --server the
    instance images and their captions are uploaded."""
    options = _options(model, method, instance_dir, instance_prompt, class_prompt, class_dir, steps, rank, lr, resolution,
                       batch_size, seed, checkpoint_every, train_text_encoder, team, name, attest_licence, attest_consent,
                       processes)
    job_id = backends.backend().submit_finetune(_request(_merge(options, config), priority))
    if json_output:
        output.emit_json({"job_id": job_id})
    else:
        output.say(f"job {job_id} queued; follow it with: latentops jobs show {job_id}")


@finetune_app.command("validate-images")
def validate_images(
    folder: Path = typer.Argument(..., help="Folder of instance images."),
    json_output: bool = typer.Option(False, "--json", help='Print [{"file","ok","reason","width","height"}].'),
) -> None:
    """Check every file of an instance folder; exits 1 when no image is usable."""
    from latentops.pipelines.finetune.data import inspect_folder

    reports = inspect_folder(folder)
    if json_output:
        output.emit_json([r.to_json() for r in reports])
    else:
        output.table(f"images in {folder}", ["file", "ok", "reason", "width", "height"],
                     [(r.file, "yes" if r.ok else "no", r.reason, r.width, r.height) for r in reports])
    if not any(r.ok for r in reports):
        raise typer.Exit(1)


@finetune_app.command("adapters")
def adapters(name: str = typer.Option(None, help="Only this adapter."),
             json_output: bool = typer.Option(False, "--json", help="Print JSON lines.")) -> None:
    """List trained LoRA adapters and their aliases."""
    from latentops.platform.services import adapters as service

    with context.session() as db:
        rows = service.list_adapters(db, name=name)
    if json_output:
        for row in rows:
            output.emit_json(row)
        return
    output.table("LoRA adapters", ["name", "version", "aliases", "job", "mlflow"],
                 [(r["name"], r["version"], ",".join(r["aliases"]), r["job_id"], r["mlflow_model_uri"]) for r in rows])


@finetune_app.command("promote")
@context.runs_no_model
def promote(name: str = typer.Argument(..., help="Adapter name."),
            version: int = typer.Option(..., "--version", help="Adapter version to put in production.")) -> None:
    """Approve an adapter version for production (admins and manage-grant holders; audited)."""
    from latentops.platform.services import adapters as service

    with context.session() as db:
        adapter = service.promote(db, settings=context.settings(), name=name, version=version, actor=context.actor())
        aliases = list(adapter.aliases)
    output.say(f"{name} v{version} approved for production (aliases: {', '.join(aliases)})")


def register(app: typer.Typer) -> None:
    app.add_typer(finetune_app, name="finetune")
