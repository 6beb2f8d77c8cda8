"""Helpers for REST API and portal tests: users with roles and tokens, written through the services."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from latentops.platform.database import session_scope
from latentops.platform.models import ApiToken, Team
from latentops.platform.services import tokens as tokens_service
from latentops.platform.services import users as users_service

PASSWORD = "correct horse battery staple"


def make_user(database_url: str, email: str, role: str, team: str, *, scopes: list[str] | None = None) -> str:
    """Create a user with a password and return a personal API token for them."""
    with session_scope(database_url) as session:
        users_service.create_user(session, email=email, role=role, team=team, password=PASSWORD, actor="system")
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
