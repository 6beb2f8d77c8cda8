"""Helpers for REST API and portal tests: users with roles and tokens, written through the services."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import sqlalchemy as sa

from latentops.platform.database import session_scope
from latentops.platform.services import tokens as tokens_service
from latentops.platform.services import users as users_service
from latentops.platform.tables import ApiToken, Team

PASSWORD = "correct horse battery staple"


@functools.cache
def _password_hash() -> str:
    """``PASSWORD`` hashed once per test process by the service's hasher (argon2: ~0.1 s a hash)."""
    return users_service.hash_password(PASSWORD)


def make_user(database_url: str, email: str, role: str, team: str, *, scopes: list[str] | None = None) -> str:
    """Create a user whose password is ``PASSWORD`` and return a personal API token for them."""
    with session_scope(database_url) as session:
        user = users_service.create_user(session, email=email, role=role, team=team, password=None, actor="system")
        user.password_hash = _password_hash()
        _token, secret = tokens_service.create_token(session, email=email, name="test", actor="system", scopes=scopes)
    return secret


def make_token(database_url: str, email: str, *, scopes: list[str] | None = None) -> str:
    with session_scope(database_url) as session:
        _token, secret = tokens_service.create_token(session, email=email, name="extra", actor="system", scopes=scopes)
    return secret


def expire_token(database_url: str, secret: str) -> None:
    with session_scope(database_url) as session:
        token = session.scalar(sa.select(ApiToken).where(ApiToken.prefix == secret[:12]))
        assert token is not None
        token.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


def team_id(database_url: str, name: str) -> int:
    with session_scope(database_url) as session:
        found = session.scalar(sa.select(Team.id).where(Team.name == name))
        assert found is not None
        return int(found)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningApi(NamedTuple):
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def api_server(log: Path, *, port: int | None = None, **env: str) -> Iterator[RunningApi]:
    """``uvicorn`` serving the app factory in a subprocess with this test's environment (plus
    ``env``); yields its base URL and process once ``/login`` answers, and stops it afterwards."""
    from conftest import REPO

    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "latentops.platform.api.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env}, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield RunningApi(base, process)
    finally:
        process.terminate()
        process.wait(15)
