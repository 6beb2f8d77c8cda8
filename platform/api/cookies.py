"""The browser's side of a session: the session cookie, its ``Secure`` flag, safe redirects.

HTTP plumbing shared by the sign-in routes (``/api/v1/auth``) and the portal's sign-in page; it
defines no route. The session cookie is HttpOnly, SameSite=Lax, and Secure in production or
behind https (``settings.cookie_secure`` overrides); a redirect after sign-in goes only to a path
on this site.
"""

from __future__ import annotations

from fastapi import Request, Response

from latentops.core.settings import Settings
from latentops.platform.services import auth as auth_service


def cookie_secure(settings: Settings, request: Request) -> bool:
    if settings.cookie_secure is not None:
        return settings.cookie_secure
    return settings.mode == "production" or request.url.scheme == "https"


def set_session_cookie(response: Response, *, settings: Settings, request: Request, secret: str) -> None:
    response.set_cookie(auth_service.SESSION_COOKIE, secret, max_age=int(settings.session_hours * 3600), path="/",
                        httponly=True, samesite="lax", secure=cookie_secure(settings, request))


def safe_next(value: str | None) -> str:
    """Only same-site paths: an open redirect would let a phishing link borrow our sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
