"""``latentops models``: the model store (import, list, show, remove, tiny models, the demo model).

Grant and revoke commands attach to the same group from ``latentops.platform.cli.grants``.
"""

from __future__ import annotations

import typer

models_app = typer.Typer(help="Base models in the local model store, and who may use them.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
