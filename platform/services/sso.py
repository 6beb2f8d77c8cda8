"""Enterprise single sign-on with OpenID Connect (Keycloak, Entra ID, Okta, ...).

The authorization code flow with PKCE, as a confidential client (authlib's OAuth 2 client):

1. ``begin`` reads the provider's discovery document, makes ``state``, ``nonce`` and a PKCE
   verifier, and returns the authorization URL; the caller keeps the three values in a signed,
   short-lived cookie.
2. ``complete`` exchanges the code at the token endpoint and verifies the ID token against the
   provider's JWKS: signature, issuer, audience, expiry and nonce (joserfc).
3. ``provision`` finds or creates the user for ``issuer|subject`` and sets their memberships from
   the groups claim through ``LATENTOPS_OIDC_GROUP_MAP``; a user none of whose groups maps to a
   team is refused. Memberships of SSO users follow the identity provider at every sign-in.

A local account with the same email is linked only when the provider says the email is verified.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from latentops.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform.services.users import get_or_create_team, parse_role
from latentops.platform.tables import Membership, Team, User

log = logging.getLogger(__name__)

DISCOVERY_TTL_S = 300.0
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


@dataclass(frozen=True)
class Pending:
    """What must survive the round trip through the provider (kept in a signed cookie)."""

    state: str
    nonce: str
    code_verifier: str
    next_url: str = "/"


def enabled(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def _require(settings: Settings) -> None:
    if not enabled(settings):
        raise NotFound("sso: single sign-on is not configured on this server (LATENTOPS_OIDC_ISSUER, LATENTOPS_OIDC_CLIENT_ID)")


def discover(settings: Settings) -> dict[str, Any]:
    """The provider's discovery document (cached for a few minutes)."""
    _require(settings)
    issuer = settings.oidc_issuer.rstrip("/")
    cached = _discovery.get(issuer)
    if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
        return cached[1]
    url = issuer + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=5.0)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise ServiceUnavailable(f"identity provider: discovery at {url} failed: {error}") from None
    if document.get("issuer", "").rstrip("/") != issuer:
        raise ServiceUnavailable(f"identity provider: discovery names issuer {document.get('issuer')!r}, expected {issuer!r}")
    _discovery[issuer] = (time.monotonic(), document)
    return document


def _client(settings: Settings, redirect_uri: str) -> OAuth2Client:
    return OAuth2Client(client_id=settings.oidc_client_id, client_secret=settings.oidc_client_secret or None,
                        scope=settings.oidc_scopes, redirect_uri=redirect_uri, code_challenge_method="S256",
                        token_endpoint_auth_method="client_secret_basic" if settings.oidc_client_secret else "none",
                        timeout=10.0)


def begin(settings: Settings, *, redirect_uri: str, next_url: str = "/") -> tuple[str, Pending]:
    """The provider's authorization URL and the values to keep until the callback."""
    document = discover(settings)
    pending = Pending(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                      code_verifier=secrets.token_urlsafe(48), next_url=next_url)
    with _client(settings, redirect_uri) as client:
        url, _state = client.create_authorization_url(document["authorization_endpoint"], state=pending.state,
                                                      code_verifier=pending.code_verifier, nonce=pending.nonce)
    return url, pending


def complete(settings: Settings, *, redirect_uri: str, pending: Pending, code: str, state: str) -> dict[str, Any]:
    """Exchange the code and verify the ID token; returns its claims."""
    if not secrets.compare_digest(state, pending.state):
        raise AuthenticationFailed("sso: the state does not match this browser's sign-in; start again")
    document = discover(settings)
    try:
        with _client(settings, redirect_uri) as client:
            token = client.fetch_token(document["token_endpoint"], code=code, code_verifier=pending.code_verifier,
                                       grant_type="authorization_code")
        keys = httpx.get(document["jwks_uri"], timeout=5.0)
        keys.raise_for_status()
        keyset = KeySet.import_key_set(keys.json())
    except (httpx.HTTPError, ValueError) as error:
        raise ServiceUnavailable(f"identity provider: token exchange failed: {error}") from None
    except AuthlibBaseError as error:  # the provider refused the code (invalid_grant, ...)
        raise AuthenticationFailed(f"sso: the identity provider refused the code: {error}") from None
    id_token = token.get("id_token")
    if not id_token:
        raise AuthenticationFailed("sso: the identity provider returned no ID token")
    algorithms = document.get("id_token_signing_alg_values_supported") or ["RS256"]
    try:
        decoded = jwt.decode(id_token, keyset, algorithms=[a for a in algorithms if a != "none"])
        jwt.JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": document["issuer"]},
            aud={"essential": True, "value": settings.oidc_client_id}, exp={"essential": True},
            sub={"essential": True}, nonce={"essential": True, "value": pending.nonce},
        ).validate(decoded.claims)
    except JoseError as error:
        raise AuthenticationFailed(f"sso: the ID token does not verify: {error.error}: {error.description or ''}".strip()) from None
    return dict(decoded.claims)


def _mapped_memberships(settings: Settings, groups: list[str]) -> dict[str, str]:
    """team -> role from the groups claim; the highest role listed last wins when groups overlap."""
    result: dict[str, str] = {}
    for group in groups:
        mapping = settings.oidc_group_map.get(group)
        if mapping is None:
            continue
        team, role = mapping.get("team", ""), mapping.get("role", "")
        if not team or not role:
            raise ConfigurationError(f"LATENTOPS_OIDC_GROUP_MAP: group {group!r} needs a 'team' and a 'role'")
        parse_role(role)
        result[team] = role
    return result


def provision(session: Session, *, settings: Settings, claims: dict[str, Any]) -> User:
    """Find or create the user for the ID token and set their memberships from the groups claim."""
    issuer, subject = str(claims.get("iss", "")), str(claims.get("sub", ""))
    external_id = f"{issuer}|{subject}"
    email = str(claims.get("email") or "").strip().lower()
    groups_claim = claims.get(settings.oidc_groups_claim) or []
    if not isinstance(groups_claim, list):
        raise InvalidInput(f"sso: the {settings.oidc_groups_claim!r} claim must be a list of group names")
    groups = [str(g) for g in groups_claim]
    wanted = _mapped_memberships(settings, groups)
    actor = f"sso:{issuer}"
    if not wanted:
        audit.record(session, actor=actor, action="auth.sso_login", resource=f"external:{external_id}", outcome="failure",
                     details={"reason": "no group maps to a team", "groups": groups})
        raise AuthenticationFailed("sso: none of your identity provider groups maps to a latentops team; ask an admin")
    user = session.scalar(sa.select(User).where(User.external_id == external_id))
    if user is None and email:
        existing = session.scalar(sa.select(User).where(User.email == email))
        if existing is not None:
            if claims.get("email_verified") is not True or existing.external_id is not None:
                raise AuthenticationFailed(f"sso: a local account {email} exists and the provider did not verify the email")
            existing.external_id = external_id
            user = existing
    if user is None:
        if not email:
            raise AuthenticationFailed("sso: the ID token has no email claim; ask for the 'email' scope")
        user = User(email=email, display_name=str(claims.get("name") or email.split("@")[0]), password_hash=None,
                    external_id=external_id)
        session.add(user)
        session.flush()
        audit.record(session, actor=actor, action="user.provision", resource=f"user:{user.id}",
                     details={"email": email, "external_id": external_id})
    if not user.is_active:
        raise AuthenticationFailed("sso: the account is disabled")
    _sync_memberships(session, user=user, wanted=wanted, actor=actor)
    return user


def _sync_memberships(session: Session, *, user: User, wanted: dict[str, str], actor: str) -> None:
    current = {team.name: membership for membership, team in session.execute(
        sa.select(Membership, Team).join(Team, Team.id == Membership.team_id).where(Membership.user_id == user.id))}
    changes: list[str] = []
    for team_name, role in sorted(wanted.items()):
        parsed = parse_role(role)
        if team_name in current:
            if current[team_name].role != parsed:
                current[team_name].role = parsed
                changes.append(f"{team_name}:{role}")
            continue
        team = get_or_create_team(session, name=team_name, actor=actor)
        session.add(Membership(user_id=user.id, team_id=team.id, role=parsed))
        changes.append(f"+{team_name}:{role}")
    for team_name, membership in current.items():
        if team_name not in wanted:
            session.delete(membership)
            changes.append(f"-{team_name}")
    session.flush()
    if changes:
        audit.record(session, actor=actor, action="membership.sync", resource=f"user:{user.id}",
                     details={"changes": changes})
