"""``latentops db``: schema migrations."""

from __future__ import annotations

import typer

from latentops.platform.cli import context, output
from latentops.platform.database import check_connection, redact

db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)


@db_app.callback()
def _local_only() -> None:
    """Migrations act on this machine's configured database only."""
    context.require_local()


@db_app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the configured database to the latest schema (or REVISION)."""
    from latentops.platform import migrate  # alembic: imported by these commands, not by every CLI start

    settings = context.settings()
    settings.ensure_home()
    check_connection(settings.database_url)
    migrate.upgrade(settings.database_url, revision)
    output.say(f"database {redact(settings.database_url)} at revision {migrate.current_revision(settings.database_url)}")


@db_app.command()
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Migrate the configured database down to REVISION."""
    from latentops.platform import migrate  # alembic: imported by these commands, not by every CLI start

    settings = context.settings()
    check_connection(settings.database_url)
    migrate.downgrade(settings.database_url, revision)
    output.say(f"database {redact(settings.database_url)} at revision {migrate.current_revision(settings.database_url)}")


@db_app.command()
def current() -> None:
    """Show the database's revision and the latest one available."""
    from latentops.platform import migrate  # alembic: imported by these commands, not by every CLI start

    settings = context.settings()
    check_connection(settings.database_url)
    output.say(f"current: {migrate.current_revision(settings.database_url)}  head: {migrate.head_revision()}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
