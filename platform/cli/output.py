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


# Exit codes scripts can rely on (README, "A tour of the CLI"): 0 done, 1 refused or failed (one
# line, Name: detail), 2 a usage error (unknown option, missing argument), 3 nothing was released
# because every image was held for review, 130 interrupted.
EXIT_NOTHING_RELEASED = 3


def nothing_released(held: int, asset_ids: Sequence[int]) -> None:
    """Say where held images are and what would release them; the caller exits ``EXIT_NOTHING_RELEASED``."""
    ids = ", ".join(str(i) for i in asset_ids[:10]) + (", ..." if len(asset_ids) > 10 else "")
    error(f"nothing released: all {held} images are held for review in the quarantine" + (f" (assets {ids})" if ids else ""),
          reasons=[("a compliance officer reviews them with `latentops quarantine list`, then `latentops quarantine "
                    "release ID --reason ...` or `reject`, or in the portal under Quarantine"),
                   ("images held because no detector covers a category are released automatically only when policy "
                    "data screening.release_uncovered is true (`latentops screening status` lists uncovered categories)")])


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
