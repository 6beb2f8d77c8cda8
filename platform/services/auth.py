"""Signing in: passwords with lockout, server-side browser sessions, and login throttling.

* ``attempt_login`` checks an email and password (argon2). Each failure counts against the account
  (``users.failed_logins``); after ``login_max_failures`` in a row the account is locked until
  ``locked_until`` and live sessions end. Every attempt, failed or not, is audited. The result is
  returned rather than raised so the caller can **commit** the failure count and audit entry
  before it answers 401: a rolled-back failure would make lockout impossible.
  An unknown email, a wrong password, a locked or disabled account and a single sign-on account
  get the same answer after the same work (one argon2 verification, against a dummy hash when
  there is no real one), so the answer does not tell whether an account exists or is locked;
  the audit entry records which it was.
* Sessions: the cookie carries a random secret, the database only its SHA-256 (``web_sessions``),
  plus a CSRF token per session that forms and htmx requests echo back.
* ``LoginThrottle`` limits login attempts per client address (a sliding window in this process),
  so one address cannot try many accounts quickly; refusals are audited too.
* ``password_login`` is the whole password sign-in of the REST route and the portal: throttle,
  check, commit a failure before raising it, open the session.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.orm import Session

from latentops.core.errors import AuthenticationFailed, QuotaExceeded
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform.services.users import password_matches
from latentops.platform.tables import User, WebSession, utcnow

log = logging.getLogger(__name__)

SESSION_COOKIE = "latentops_session"
# The one answer to a failed sign-in, whatever the reason (the audit trail has the reason).
WRONG_CREDENTIALS = "email or password is wrong"
# A hash to verify against when the email is unknown, so both cases take as long.
_DUMMY_HASH = PasswordHasher().hash("latentops-no-such-user")
_TOUCH_EVERY = dt.timedelta(minutes=1)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass
class LoginResult:
    user: User | None
    error: AuthenticationFailed | None

    def raise_if_failed(self) -> User:
        if self.error is not None or self.user is None:
            raise self.error or AuthenticationFailed("login failed")
        return self.user


def attempt_login(session: Session, *, settings: Settings, email: str, password: str, client: str) -> LoginResult:
    """Check a password; count failures, lock after too many, audit every attempt. Never raises for bad credentials."""
    email = email.strip().lower()
    now = utcnow()
    wrong = AuthenticationFailed(WRONG_CREDENTIALS)
    user = session.scalar(sa.select(User).where(User.email == email))
    # One verification on every path, so the time taken does not tell the cases apart either.
    matches = password_matches(user.password_hash if user is not None and user.password_hash else _DUMMY_HASH, password)
    if user is None:
        audit.record(session, actor=f"anonymous@{client}", action="auth.login", resource="user:unknown",
                     outcome="failure", details={"reason": "unknown email", "client": client})
        return LoginResult(None, wrong)
    if user.locked_until is not None and _utc(user.locked_until) > now:
        audit.record(session, actor=user.email, action="auth.login", resource=f"user:{user.id}", outcome="locked",
                     details={"locked_until": audit.format_time(user.locked_until), "client": client})
        return LoginResult(None, wrong)
    if not user.password_hash or not matches or not user.is_active:
        user.failed_logins = (user.failed_logins or 0) + 1
        reason = "account disabled" if not user.is_active and user.password_hash else "wrong password"
        audit.record(session, actor=user.email, action="auth.login", resource=f"user:{user.id}", outcome="failure",
                     details={"reason": reason, "failed_logins": user.failed_logins, "client": client})
        if user.failed_logins >= settings.login_max_failures:
            user.locked_until = now + dt.timedelta(seconds=settings.login_lockout_s)
            ended = end_sessions(session, user=user, reason="lockout")
            audit.record(session, actor="system", action="auth.lockout", resource=f"user:{user.id}", outcome="locked",
                         details={"failed_logins": user.failed_logins, "locked_until": audit.format_time(user.locked_until),
                                  "sessions_ended": ended, "client": client})
            log.warning("account locked after repeated failed logins", extra={"user_id": user.id})
        return LoginResult(None, wrong)
    user.failed_logins, user.locked_until = 0, None
    return LoginResult(user, None)


def password_login(session: Session, settings: Settings, *, limiter: LoginThrottle, client: str, email: str,
                   password: str) -> str:
    """Check the password and open a session; returns the cookie secret. Failures are committed, then raised."""
    _throttle(session, limiter, client=client, email=email)
    result = attempt_login(session, settings=settings, email=email, password=password, client=client)
    if result.error is not None:
        session.commit()
        raise result.error
    _row, secret = open_session(session, settings=settings, user=result.raise_if_failed(), method="password",
                                client=client)
    return secret


def _throttle(session: Session, limiter: LoginThrottle, *, client: str, email: str) -> None:
    """Count a login attempt for the client address; audit and refuse when it is over the limit."""
    try:
        limiter.hit(client)
    except QuotaExceeded:
        audit.record(session, actor=f"anonymous@{client}", action="auth.throttle", resource="auth:login",
                     outcome="refused", details={"email": email.strip().lower()[:320], "client": client})
        session.commit()
        raise


def open_session(session: Session, *, settings: Settings, user: User, method: str, client: str) -> tuple[WebSession, str]:
    """Start a browser session for ``user``; returns the row and the cookie secret (never stored)."""
    secret = secrets.token_urlsafe(32)
    row = WebSession(user_id=user.id, token_hash=_digest(secret), csrf_token=secrets.token_urlsafe(32), method=method,
                     client=client[:200], expires_at=utcnow() + dt.timedelta(hours=settings.session_hours))
    session.add(row)
    session.flush()
    audit.record(session, actor=user.email, action="auth.login", resource=f"user:{user.id}",
                 details={"method": method, "session_id": row.id, "client": client})
    return row, secret


def session_user(session: Session, secret: str) -> tuple[WebSession, User]:
    """The live session and user behind a cookie secret, or ``AuthenticationFailed``."""
    row = session.scalar(sa.select(WebSession).where(WebSession.token_hash == _digest(secret)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise AuthenticationFailed("session: not signed in (the session ended); sign in again")
    if _utc(row.expires_at) <= now:
        raise AuthenticationFailed("session: the session expired; sign in again")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise AuthenticationFailed("session: the account is disabled")
    if row.last_seen_at is None or now - _utc(row.last_seen_at) > _TOUCH_EVERY:
        row.last_seen_at = now
    return row, user


def close_session(session: Session, *, secret: str) -> None:
    """Log out: end the session behind ``secret`` (a no-op for an unknown or ended one)."""
    row = session.scalar(sa.select(WebSession).where(WebSession.token_hash == _digest(secret)))
    if row is None or row.revoked_at is not None:
        return
    row.revoked_at = utcnow()
    user = session.get(User, row.user_id)
    audit.record(session, actor=user.email if user else f"user:{row.user_id}", action="auth.logout",
                 resource=f"user:{row.user_id}", details={"session_id": row.id})


def end_sessions(session: Session, *, user: User, reason: str) -> int:
    """End every live session of ``user`` (lockout, account disabled); returns how many ended."""
    result = session.execute(sa.update(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        log.info("ended %d session(s): %s", count, reason, extra={"user_id": user.id})
    return count


class LoginThrottle:
    """At most ``per_minute`` login attempts per client address in any 60 seconds (this process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._attempts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, client: str) -> None:
        """Count one attempt; raise ``QuotaExceeded`` when the address is over its limit."""
        now = time.monotonic()
        with self._lock:
            window = self._attempts[client]
            while window and now - window[0] > 60.0:
                window.popleft()
            if len(window) >= self.per_minute:
                retry = int(60.0 - (now - window[0])) + 1
                raise QuotaExceeded(f"login: too many attempts from {client}; try again in {retry} s",
                                    reasons=[{"retry_after_s": retry}])
            window.append(now)
            if len(self._attempts) > 10_000:  # forget idle addresses
                for key in [k for k, v in self._attempts.items() if not v or now - v[-1] > 60.0]:
                    del self._attempts[key]
