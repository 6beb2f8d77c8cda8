"""The CLI's output layer: the only place that prints. Tables and progress with rich, JSON plain."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


@dataclass
class _State:
    debug: bool = False


state = _State()


def emit_json(payload: Any) -> None:
    """One line of JSON on stdout, for scripts."""
    print(json.dumps(payload, default=str, sort_keys=True))


def say(message: str) -> None:
    console.print(message, highlight=False)


def error(message: str, *, reasons: Sequence[object] = ()) -> None:
    err_console.print(f"[bold red]{_escape(message)}[/]", highlight=False, soft_wrap=True)
    for reason in reasons:
        err_console.print(f"  - {_escape(str(reason))}", highlight=False, soft_wrap=True)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    grid = Table(title=title, show_lines=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if value is None else str(value) for value in row))
    console.print(grid)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
