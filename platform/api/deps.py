"""Request dependencies as ``Annotated`` aliases: settings, a database session, the caller.

* ``SettingsDep``: the app's ``Settings``.
* ``SessionDep``: one transaction per request, committed when the route returns and rolled back
  when it raises (a policy denial is committed: it is evidence). It ends *before* the response
  is sent, so a client that sees 2xx can rely on the write. What the services registered to run
  after the commit (``database.after_commit``: handing a new job to the broker) runs then too, once
  the session is closed; an error it raises (``ServiceUnavailable``) is the response. The services
  a route calls work in this session instead of opening another, so a request holds one pooled
  connection at most.
* ``PrincipalDep``: the caller, from ``Authorization: Bearer <api token>`` or the portal's session
  cookie; 401 with a clear reason otherwise (unknown, expired or revoked token, ended session).
  A request authenticated by cookie that changes anything must echo the session's CSRF token in
  the ``X-CSRF-Token`` header or a ``csrf_token`` form field; tokens need no CSRF token because a
  browser never attaches them by itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from latentops.core.errors import AuthenticationFailed
from latentops.core.settings import Settings
from latentops.governance.access import Principal, principal_for
from latentops.platform.database import session_scope
from latentops.platform.services import auth as auth_service
from latentops.platform.services import tokens as tokens_service

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


async def get_settings(request: Request) -> Settings:
    # async: FastAPI runs a plain def dependency in the thread pool, a hop per request for one attribute
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


# At most this many requests hold a database session at once. A request holds one pooled connection
# at most, but from its first query until the route returns, across hops between threadpool workers
# (the principal, then the route). Unlimited, the pool's 15 connections go to the first requests,
# the threadpool's 40 workers all wait for a connection on behalf of later ones, and the requests
# holding the connections wait for a worker: a deadlock until the pool's 30 s timeout answers 500s.
# The connections left over serve what runs outside a request's session: the audit integrator and
# the progress streams.
MAX_SESSIONS = 7
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=MAX_SESSIONS)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer_secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if header:
        raise AuthenticationFailed("authorization: expected 'Bearer <token>'")
    return None


def authenticate(request: Request, session: Session) -> Principal:
    """The caller of ``request``, or ``AuthenticationFailed`` naming why not."""
    secret = bearer_secret(request)
    if secret is not None:
        user, token = tokens_service.authenticate(session, secret)
        scopes = tuple(sorted(s for s in token.scopes.split(",") if s))
        return principal_for(session, user, scopes=scopes, via="token", token_id=token.id)
    cookie = request.cookies.get(auth_service.SESSION_COOKIE)
    if cookie:
        row, user = auth_service.session_user(session, cookie)
        return principal_for(session, user, via="session", csrf_token=row.csrf_token, session_id=row.id)
    raise AuthenticationFailed("not signed in: send 'Authorization: Bearer <api token>' or sign in to the portal")


def get_principal(request: Request, session: SessionDep) -> Principal:
    principal = authenticate(request, session)
    request.state.principal = principal
    return principal


async def require_csrf(request: Request, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """Refuse a cookie-authenticated change that does not echo the session's CSRF token."""
    if request.method in SAFE_METHODS or principal.via != "session":
        return principal
    sent = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if not sent and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not secrets.compare_digest(sent, principal.csrf_token):
        raise HTTPException(403, f"csrf: this form post is missing its CSRF token ({CSRF_FIELD} field or "
                                 "X-CSRF-Token header); reload the page and try again")
    return principal


PrincipalDep = Annotated[Principal, Depends(require_csrf)]
