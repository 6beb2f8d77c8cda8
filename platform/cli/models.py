"""``latentops models``: the model store (import, list, show, remove, tiny models, the demo model).

Grant and revoke commands attach to the same group from ``latentops.platform.cli.grants``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from latentops.platform.cli import backends, context, output
from latentops.platform.services import models as models_service

models_app = typer.Typer(help="Base models in the local model store, and who may use them.", no_args_is_help=True)


def _store_root() -> Path:
    store = context.settings().model_store
    assert store is not None  # Settings always fills it in
    return store


@models_app.command("import")
def import_(
    source: str = typer.Argument(..., help="A local diffusers folder or a .safetensors/.ckpt file (with --server: a "
                                 "path inside the server's import folder)."),
    name: str = typer.Option(..., "--name", help="Catalogue name for the model."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Accept pickle checkpoints (.ckpt): loading them can run code. Audited."
    ),
    description: str = typer.Option("", help="What the model is for."),
    sensitivity: str = typer.Option("internal", "--sensitivity",
                                    help="Sensitivity label (policy data models.sensitivity: public, internal, restricted "
                                    "by default). public: anyone may use it; otherwise a grant is needed."),
    owner_team: str | None = typer.Option(None, "--owner-team", help="The existing team that owns the model."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Import local weights into the store (content-addressed; audited). Nothing is downloaded."""
    result = backends.backend().import_model(source=source, name=name, allow_pickle=allow_pickle, description=description,
                                             sensitivity=sensitivity, owner_team=owner_team)
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"imported {name} v{result['version']} ({result['family']}, {result['format']}) "
                   f"sha256 {result['content_hash'][:16]}")


@models_app.command("list")
@context.runs_no_model
def list_(
    include_removed: bool = typer.Option(False, "--all", help="Include removed models."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List models in the catalogue."""
    summaries = backends.backend().list_models(include_removed=include_removed)
    if json_output:
        for summary in summaries:
            output.emit_json(summary)
        return
    output.table(
        "models", ["name", "family", "versions", "sha256", "size MB", "removed"],
        [(s["name"], s["family"], s["versions"], s["latest_hash"][:16], f"{s['size_bytes'] / 1e6:.1f}",
          "yes" if s["removed"] else "") for s in summaries],
    )


@models_app.command("show")
@context.runs_no_model
def show(
    name: str = typer.Argument(..., help="Model name."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Show a model and its versions."""
    info = backends.backend().show_model(name)
    if json_output:
        output.emit_json(info)
        return
    removed = f" (removed {info['removed_at']})" if info["removed_at"] else ""
    owner = f", owned by team {info['owner_team']}" if info.get("owner_team") else ""
    output.say(f"{info['name']}: {info['family']}, {info['sensitivity']}{owner}{removed}")
    if info["description"]:
        output.say(info["description"])
    output.table(
        "versions", ["version", "sha256", "format", "size MB", "path"],
        [(v["version"], v["content_hash"], v["format"], f"{v['size_bytes'] / 1e6:.1f}", v["path"]) for v in info["versions"]],
    )


@models_app.command("remove")
@context.runs_no_model
def remove(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Remove a model from the catalogue (soft: weights and history stay; audited)."""
    with context.session() as db:
        models_service.remove_model(db, name=name, actor=context.actor())
    output.say(f"removed {name}")


@models_app.command("create-tiny")
def create_tiny(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the diffusers pipeline to.")],
    family: str = typer.Option(..., "--family", help="sd1, sd2, sdxl, sd3 or flux."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a tiny random-init pipeline (a few MB) for tests and benchmarks; built offline."""
    context.require_local()
    from latentops.core.errors import InvalidInput
    from latentops.pipelines import tiny

    if family not in tiny.TINY_FAMILIES:
        raise InvalidInput(f"family: {family!r} has no tiny model; choose one of {', '.join(tiny.TINY_FAMILIES)}")
    tiny.create(family, out, seed=seed)
    output.say(f"wrote tiny {family} pipeline to {out}")


@models_app.command("train-demo")
def train_demo(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: LATENTOPS_HOME/demo-model).")] = None,
    vae_steps: int | None = typer.Option(None, help="Override autoencoder steps (short trial runs)."),
    unet_steps: int | None = typer.Option(None, help="Override denoiser steps (short trial runs)."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Measure digit accuracy afterwards."),
) -> None:
    """Train the digits demo model from scratch (seeded; the committed model uses the defaults)."""
    context.require_local()
    from latentops.pipelines.demo import evaluation, training

    config = training.DemoTrainingConfig()
    if vae_steps is not None:
        config.vae_steps = vae_steps
    if unet_steps is not None:
        config.unet_steps = unet_steps
    target = out or context.settings().home / "demo-model"

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        output.say(f"{stage} {step}/{total} loss {loss:.4f}")

    timings = training.train(config, target, progress)
    output.say(f"trained in {timings['total_seconds']:.0f}s into {target}")
    if evaluate:
        started = time.perf_counter()
        report = evaluation.evaluate(target)
        evaluation.write_report(target, report)
        output.say(f"digit accuracy {report.accuracy:.1%} over {report.images} images ({time.perf_counter() - started:.0f}s)")


@models_app.command("bootstrap-demo")
def bootstrap_demo(json_output: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Register the bundled digits demo model as ``digits-demo`` (idempotent; audited)."""
    with context.session() as db:
        version = models_service.bootstrap_demo(db, actor=context.actor(), store_root=_store_root())
        result = {"name": "digits-demo", "version": version.version, "content_hash": version.content_hash,
                  "path": version.path}
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"digits-demo v{result['version']} ready (sha256 {result['content_hash'][:16]})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
