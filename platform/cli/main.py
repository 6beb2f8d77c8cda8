"""The ``latentops`` command line.

Each command group lives in its own module and calls the same services as the REST API. Errors
from the ``LatentopsError`` family print one line, ``Name: detail``, and exit 1; a traceback is
shown only with ``--debug``.

``--server URL --token T`` (or ``LATENTOPS_SERVER`` / ``LATENTOPS_TOKEN``) runs the commands that
make sense remotely against a latentops server through its REST API (``cli/backends/``).
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from latentops.core.errors import LatentopsError
from latentops.platform.cli import context, output

app = typer.Typer(
    name="latentops",
    help="latentops: governed fine-tuning, generation and synthetic datasets for latent diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules under latentops.platform.cli; each has ``register(app)`` adding its commands.
COMMAND_MODULES = ["stack", "demo", "db", "users", "tokens", "jobs", "models", "grants", "audit", "policy", "screening", "finetune", "generate",
                   "datasets", "witness"]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    server: str = typer.Option("", "--server", envvar="LATENTOPS_SERVER", show_envvar=True,
                               help="Run against this latentops server (https://...) instead of the local database."),
    token: str = typer.Option("", "--token", envvar="LATENTOPS_TOKEN", show_envvar=True,
                              help="Personal API token for --server (latentops tokens create)."),
) -> None:
    output.state.debug = debug
    context.target.server, context.target.token = server.strip(), token.strip()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _module in COMMAND_MODULES:
    importlib.import_module(f"latentops.platform.cli.{_module}").register(app)


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning our errors into one line and a non-zero exit."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=True)
    except LatentopsError as error:
        if debug:
            raise
        output.error(f"{type(error).__name__}: {error.detail}", reasons=error.reasons)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        output.error("Interrupted")
        raise SystemExit(130) from None


if __name__ == "__main__":
    run()
