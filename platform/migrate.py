"""Schema migrations through Alembic, driven from Python (``latentops db upgrade``)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from latentops.core.errors import ServiceUnavailable
from latentops.platform.database import get_engine, redact


def migrations_dir() -> Path:
    return Path(str(importlib.resources.files("latentops.migrations")))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run(url: str, action: str, revision: str) -> None:
    config = alembic_config(url)
    try:
        with get_engine(url).begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    except sa.exc.OperationalError as error:
        raise ServiceUnavailable(f"database unreachable at {redact(url)}: {str(error.orig).strip().splitlines()[0]}") from None


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str = "base") -> None:
    _run(url, "downgrade", revision)


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
