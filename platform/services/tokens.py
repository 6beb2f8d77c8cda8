"""Personal API tokens: shown once, stored as SHA-256, scoped, expiring and revocable."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import AuthenticationFailed, InvalidInput, NotFound
from latentops.governance import audit
from latentops.platform.services.users import get_user_by_email
from latentops.platform.tables import ApiToken, User, utcnow

TOKEN_PREFIX = "lat_"
MAX_EXPIRY_DAYS = 366
# "policy:bundle" lets an OPA server pull the policy bundle (GET /api/v1/policies/bundle.tar.gz) and nothing else.
SCOPES = frozenset({"*", "read", "jobs", "generate", "datasets", "audit", "admin", "policy:bundle"})
# ``last_used_at`` is for humans ("used 3 minutes ago"), not evidence: writing it on every request
# would make every API call a database write (and on SQLite, a wait for the one writer).
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def create_token(
    session: Session,
    *,
    email: str,
    name: str,
    actor: audit.Actor | str,
    scopes: list[str] | None = None,
    expires_in_days: int | None = 90,
) -> tuple[ApiToken, str]:
    """Create a token for the user; return the row and the secret (never stored)."""
    if not name.strip():
        raise InvalidInput("name: a token needs a name")
    scopes = scopes or ["*"]
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise InvalidInput(f"scopes: unknown scope(s) {', '.join(unknown)}; valid: {', '.join(sorted(SCOPES))}")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(f"expires_in_days: must be between 1 and {MAX_EXPIRY_DAYS}, got {expires_in_days}")
    user = get_user_by_email(session, email)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name.strip(),
        prefix=secret[:12],
        token_hash=_digest(secret),
        scopes=",".join(sorted(scopes)),
        expires_at=None if expires_in_days is None else utcnow() + dt.timedelta(days=expires_in_days),
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="token.create",
        resource=f"token:{token.id}",
        details={"user": user.email, "name": token.name, "scopes": token.scopes, "prefix": token.prefix},
    )
    return token, secret


def authenticate(session: Session, secret: str) -> tuple[User, ApiToken]:
    """The user behind a bearer token, or ``AuthenticationFailed`` (unknown, expired, revoked)."""
    # One query for the token and its user: this runs on every API request.
    row = session.execute(sa.select(ApiToken, User).outerjoin(User, User.id == ApiToken.user_id)
                          .where(ApiToken.token_hash == _digest(secret))).first()
    if row is None:
        raise AuthenticationFailed("token: unknown token")
    token, user = row
    if token.revoked_at is not None:
        raise AuthenticationFailed("token: this token was revoked")
    if token.expires_at is not None and _as_utc(token.expires_at) <= utcnow():
        raise AuthenticationFailed("token: this token has expired")
    if user is None or not user.is_active:
        raise AuthenticationFailed("token: the token's user is disabled")
    now = utcnow()
    if token.last_used_at is None or now - _as_utc(token.last_used_at) >= LAST_USED_RESOLUTION:
        token.last_used_at = now
    return user, token


def revoke_token(session: Session, *, token_id: int, actor: audit.Actor | str) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token: no token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor=actor, action="token.revoke", resource=f"token:{token.id}")
    return token
