"""Shared helpers for CLI commands: settings and a database session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.orm import Session

from latentops.platform.database import session_scope
from latentops.platform.settings import Settings, get_settings


def settings() -> Settings:
    return get_settings()


@contextlib.contextmanager
def session() -> Iterator[Session]:
    with session_scope(get_settings().database_url) as db:
        yield db


def actor() -> str:
    """Local CLI use acts as the operating-system user at the console."""
    import getpass

    return f"cli:{getpass.getuser()}"
