"""``/api/v1/auth`` and ``/api/v1/tokens``: sign in and out, single sign-on, personal API tokens.

Password sign-in (``services.auth.password_login``) answers with a session cookie (HttpOnly,
SameSite=Lax, Secure in production or behind https: ``api.cookies``) and the session's CSRF token.
Failed attempts count towards the account's lockout and are committed before the 401 is sent;
attempts per client address are throttled (429).
OpenID Connect sign-in redirects to the identity provider and back to ``/auth/oidc/callback``.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, Field

from latentops.core.errors import AuthenticationFailed, NotFound
from latentops.core.settings import Settings
from latentops.governance import access, audit
from latentops.platform.api.cookies import cookie_secure, safe_next, set_session_cookie
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep, client_address
from latentops.platform.services import auth as auth_service
from latentops.platform.services import memberships, sso
from latentops.platform.services import tokens as tokens_service
from latentops.platform.tables import ApiToken

log = logging.getLogger(__name__)

router = APIRouter(tags=["auth"])
OIDC_COOKIE = "latentops_oidc"
OIDC_PATH = "/api/v1/auth/oidc"
OIDC_MAX_AGE_S = 600


class LoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["*"], max_length=10)
    expires_in_days: int = Field(default=90, ge=1, le=366)


@router.post("/auth/login")
def login(body: LoginRequest, request: Request, response: Response, session: SessionDep,
          settings: SettingsDep) -> dict[str, Any]:
    """Sign in with email and password; sets the session cookie and returns the CSRF token."""
    secret = auth_service.password_login(session, settings, limiter=request.app.state.login_throttle,
                                         client=client_address(request), email=body.email, password=body.password)
    set_session_cookie(response, settings=settings, request=request, secret=secret)
    row, user = auth_service.session_user(session, secret)
    return {"user": memberships.describe(session, user), "csrf_token": row.csrf_token}


@router.post("/auth/logout")
def logout(request: Request, response: Response, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """End the browser session (API tokens are revoked through /tokens)."""
    cookie = request.cookies.get(auth_service.SESSION_COOKIE)
    if cookie:
        auth_service.close_session(session, secret=cookie)
    response.delete_cookie(auth_service.SESSION_COOKIE, path="/")
    return {"signed_out": principal.email}


@router.get("/auth/me")
def me(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Who the caller is: email, memberships, and how they authenticated."""
    access.check(session, principal=principal, action="self.read")
    return {**memberships.describe(session, principal.user), "via": principal.via,
            "scopes": list(principal.scopes) if principal.scopes is not None else None}


# --- single sign-on -------------------------------------------------------------------------


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt="latentops-oidc")


def redirect_uri(settings: Settings, request: Request) -> str:
    base = settings.public_url.rstrip("/") if settings.public_url else str(request.base_url).rstrip("/")
    return f"{base}{OIDC_PATH}/callback"


@router.get("/auth/oidc/login", response_class=RedirectResponse, status_code=302)
def oidc_login(request: Request, settings: SettingsDep, next: str = "/") -> RedirectResponse:
    """Start single sign-on: redirect to the identity provider."""
    url, pending = sso.begin(settings, redirect_uri=redirect_uri(settings, request), next_url=safe_next(next))
    response = RedirectResponse(url, status_code=302)
    value = _serializer(settings).dumps(pending.__dict__)
    response.set_cookie(OIDC_COOKIE, value, max_age=OIDC_MAX_AGE_S, path=OIDC_PATH, httponly=True, samesite="lax",
                        secure=cookie_secure(settings, request))
    return response


@router.get("/auth/oidc/callback", response_class=RedirectResponse, status_code=302)
def oidc_callback(request: Request, session: SessionDep, settings: SettingsDep, code: str = "", state: str = "",
                  error: str = "") -> RedirectResponse:
    """Finish single sign-on: verify the ID token, provision the user, open a session."""
    if error:
        raise AuthenticationFailed(f"sso: the identity provider answered {error!r}")
    if not code or not state:
        raise AuthenticationFailed("sso: the callback needs 'code' and 'state'")
    try:
        pending = sso.Pending(**_serializer(settings).loads(request.cookies.get(OIDC_COOKIE, ""), max_age=OIDC_MAX_AGE_S))
    except (BadSignature, TypeError):
        raise AuthenticationFailed("sso: no sign-in in progress in this browser (or it took too long); start again") from None
    claims = sso.complete(settings, redirect_uri=redirect_uri(settings, request), pending=pending, code=code, state=state)
    try:
        user = sso.provision(session, settings=settings, claims=claims)
    except AuthenticationFailed:
        session.commit()  # keep the audited refusal
        raise
    _row, secret = auth_service.open_session(session, settings=settings, user=user, method="oidc",
                                             client=client_address(request))
    response = RedirectResponse(safe_next(pending.next_url), status_code=302)
    set_session_cookie(response, settings=settings, request=request, secret=secret)
    response.delete_cookie(OIDC_COOKIE, path=OIDC_PATH)
    return response


# --- personal API tokens ----------------------------------------------------------------------


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "prefix": token.prefix, "scopes": token.scopes.split(","),
            "expires_at": audit.format_time(token.expires_at) if token.expires_at else None,
            "revoked": token.revoked_at is not None,
            "last_used_at": audit.format_time(token.last_used_at) if token.last_used_at else None}


@router.get("/tokens")
def list_tokens(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """The caller's own tokens (never their secrets)."""
    access.check(session, principal=principal, action="self.read")
    rows = session.scalars(sa.select(ApiToken).where(ApiToken.user_id == principal.user.id).order_by(ApiToken.id))
    return [_token_json(t) for t in rows]


@router.post("/tokens", status_code=201)
def create_token(body: TokenRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Create a personal token; the secret is in this answer only."""
    access.check(session, principal=principal, action="tokens.manage")
    token, secret = tokens_service.create_token(session, email=principal.email, name=body.name, scopes=body.scopes,
                                                expires_in_days=body.expires_in_days, actor=principal.email)
    return {**_token_json(token), "token": secret}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Revoke one of the caller's tokens at once."""
    access.check(session, principal=principal, action="tokens.manage")
    token = session.get(ApiToken, token_id)
    mine = token is not None and token.user_id == principal.user.id
    if not mine and (token is None or not access.allowed(session, principal=principal, action="users.manage")):
        raise NotFound(f"token: no token with id {token_id}")
    return _token_json(tokens_service.revoke_token(session, token_id=token_id, actor=principal.email))
