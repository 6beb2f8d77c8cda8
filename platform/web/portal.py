"""The web portal's frame: templates, sign-in and sign-out, the landing page, errors as HTML.

Server-rendered Jinja2 with htmx (vendored in ``static/``, no build step, nothing from a CDN).
Pages authenticate with the session cookie and ask the access policy exactly like the REST API
(the same ``governance.access`` checks); htmx requests send the session's CSRF token in the
``X-CSRF-Token`` header (set once on ``<body hx-headers>``), plain forms in a hidden field.

The sign-in form has no session yet, so it is protected by a double-submit token: a random value
in a SameSite=Strict cookie that the form must repeat.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from latentops.core.errors import AuthenticationFailed, LatentopsError, retry_after
from latentops.governance import access
from latentops.governance.access import Principal
from latentops.platform.api import cookies
from latentops.platform.api.deps import SessionDep, SettingsDep, authenticate, client_address, require_csrf
from latentops.platform.services import auth as auth_service
from latentops.platform.services import sso

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "latentops_login_csrf"

# Navigation: (label, path, the access action that makes the link worth showing).
NAVIGATION = [
    ("Jobs", "/jobs", "jobs.read"),
    ("Generate", "/generate", "prompt.check"),
    ("Datasets", "/datasets", "datasets.read"),
    ("Audit", "/audit", "audit.read"),
    ("Quarantine", "/quarantine", "quarantine.review"),
    ("Protected names", "/protected-names", "policies.names.manage"),
    ("Policy data", "/policy-data", "policies.data.read"),
    ("Screening", "/screening", "screening.read"),
    ("Models", "/models", "models.read"),
    ("Admin", "/admin", "users.read"),
]


class LoginRequired(Exception):
    """A page was asked for without a live session: send the browser to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def when(value: dt.datetime | None) -> str | None:
    """A timestamp as pages show it (UTC, to the second)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def wants_html(request: Request) -> bool:
    path = request.url.path
    return not path.startswith("/api/") and path != "/metrics"


def portal_principal(request: Request, session: SessionDep) -> Principal:
    try:
        principal = authenticate(request, session)
    except AuthenticationFailed:
        raise LoginRequired(request.url.path) from None
    request.state.principal = principal
    return principal


async def portal_csrf(request: Request, principal: Annotated[Principal, Depends(portal_principal)]) -> Principal:
    return await require_csrf(request, principal)


PortalUser = Annotated[Principal, Depends(portal_csrf)]


def nav_for(session: Session, principal: Principal) -> list[dict[str, str]]:
    return [{"label": label, "path": path} for label, path, action in NAVIGATION
            if access.allowed(session, principal=principal, action=action)]


def render(request: Request, template: str, *, session: Session | None = None, principal: Principal | None = None,
           status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page (or an htmx fragment) with the navigation the caller may use."""
    principal = principal or getattr(request.state, "principal", None)
    base: dict[str, Any] = {"principal": principal, "nav": [], "active": request.url.path}
    if principal is not None and session is not None:
        base["nav"] = nav_for(session, principal)
    return templates.TemplateResponse(request, template, {**base, **context}, status_code=status_code)


def error_page(request: Request, status_code: int, error: str, detail: str, reasons: list[Any]) -> HTMLResponse:
    template = "fragments/error.html" if request.headers.get("hx-request") else "error.html"
    # No principal here: the request's transaction was rolled back, its ORM rows are detached.
    return templates.TemplateResponse(request, template, {"principal": None, "nav": [], "active": "",
                                                          "status_code": status_code, "error": error, "detail": detail,
                                                          "reasons": [str(r) for r in reasons]},
                                      status_code=status_code)


# --- sign in and out ---------------------------------------------------------------------------


def _login_form(request: Request, settings: Any, *, error: str = "", next_url: str = "/", email: str = "",
                status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, "login.html",
        {"principal": None, "nav": [], "active": "/login", "login_csrf": token, "error": error,
         "next": cookies.safe_next(next_url), "email": email, "sso": sso.enabled(settings)},
        status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path="/login", httponly=True, samesite="strict",
                        secure=cookies.cookie_secure(settings, request))
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, settings: SettingsDep, next: str = "/") -> HTMLResponse:
    return _login_form(request, settings, next_url=next)


@router.post("/login", response_class=HTMLResponse)
def login_submit(request: Request, session: SessionDep, settings: SettingsDep,
                 email: Annotated[str, Form(max_length=320)] = "", password: Annotated[str, Form(max_length=1024)] = "",
                 csrf_token: Annotated[str, Form(max_length=200)] = "",
                 next: Annotated[str, Form(max_length=500)] = "/") -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf_token or not cookie or not secrets.compare_digest(csrf_token, cookie):
        return _login_form(request, settings, error="The sign-in form expired or was not sent by this page; try again.",
                           next_url=next, email=email, status_code=403)
    if not email or not password:
        return _login_form(request, settings, error="Enter your email and password.", next_url=next, email=email,
                           status_code=422)
    try:
        secret = auth_service.password_login(session, settings, limiter=request.app.state.login_throttle,
                                             client=client_address(request), email=email, password=password)
    except LatentopsError as error:
        page = _login_form(request, settings, error=error.detail, next_url=next, email=email,
                           status_code=error.status_code)
        page.headers.update(retry_after(error))
        return page
    response = RedirectResponse(cookies.safe_next(next), status_code=303)
    cookies.set_session_cookie(response, settings=settings, request=request, secret=secret)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, principal: PortalUser) -> Response:
    cookie = request.cookies.get(auth_service.SESSION_COOKIE)
    if cookie:
        auth_service.close_session(session, secret=cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth_service.SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    return render(request, "home.html", session=session, principal=principal)


def install(app: FastAPI, *pages: APIRouter) -> None:
    """Add the portal's frame, its ``pages`` (``web.pages.router``), static files and the sign-in redirect to ``app``."""

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, error: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={cookies.safe_next(error.next_url)}", status_code=303)

    app.include_router(router)
    for page_router in pages:
        app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
