"""Shared helpers for CLI commands: settings, a database session, and where commands run.

``latentops --server URL --token T`` (or ``LATENTOPS_SERVER`` / ``LATENTOPS_TOKEN``) points the
CLI at a latentops server: ``backends.backend()`` then answers through the REST API instead of the
local services, and anything that would open the local database refuses with one line instead of
quietly acting on a different installation than the one the user named.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings, get_settings
from latentops.platform.database import session_scope

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Target:
    server: str = ""
    token: str = ""


target = _Target()


def remote() -> bool:
    return bool(target.server)


def _command() -> str:
    """``latentops <group> <command>`` of the running command, for messages."""
    import importlib

    try:  # typer 0.2x carries its own click; older versions use click's context stack
        globals_module = importlib.import_module("typer._click.globals")
    except ImportError:  # depends on the installed typer
        globals_module = importlib.import_module("click.globals")
    ctx = globals_module.get_current_context(silent=True)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return "latentops " + " ".join(names) if names else "this command"


def require_local() -> None:
    """Refuse ``--server`` for a command that runs on this machine only."""
    if remote():
        raise InvalidInput(f"{_command()} runs on this machine only (local database and processes), not against "
                           f"--server {target.server}; run it there, or without --server/LATENTOPS_SERVER")


def settings() -> Settings:
    require_local()
    return get_settings()


@contextlib.contextmanager
def session() -> Iterator[Session]:
    require_local()
    with session_scope(get_settings().database_url) as db:
        yield db


def actor() -> str:
    """Local CLI use acts as the operating-system user at the console."""
    import getpass

    return f"cli:{getpass.getuser()}"


def runs_no_model(command: Callable[P, R]) -> Callable[P, R]:
    """Mark a command that never runs a model: its policy engine (regopy) then loads without torch.

    Loading regopy safely otherwise means importing torch first (``governance.native``), which is
    most of the wall time of a command such as ``models grant``. In such a command the semantic
    prompt screen runs on NumPy, which decides every benchmark prompt as the torch pass does.
    """

    @functools.wraps(command)
    def without_torch(*args: P.args, **kwargs: P.kwargs) -> R:
        from latentops.governance import native

        native.without_torch()
        return command(*args, **kwargs)

    return without_torch
