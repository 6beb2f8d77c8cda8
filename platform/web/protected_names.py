"""The protected-names page: compliance officers and admins search the prompt policy's protected
names, add names, remove them and change their category, and try a prompt against the list in force.

The page calls the service behind ``/api/v1/policies/prompt/protected-names``
(``services/protected_names.py``), so the same checks, audit entries and revisions apply. An edit
the service refuses (a bad name or category, a duplicate, a name the list lacks) is shown on the
page with the field it names; nothing is stored. The prompt tester posts to ``/generate/check``,
the live check of the generate page.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import access
from latentops.governance.access import Principal
from latentops.platform.api.deps import SessionDep
from latentops.platform.services import protected_names
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
PATH = "/protected-names"


def _page(request: Request, session: Any, principal: Principal, *, q: str = "", category: str = "", offset: int = 0,
          message: str = "", error: str = "", status_code: int = 200) -> HTMLResponse:
    page = protected_names.list_names(session, principal, q=q, category=category or None, limit=PAGE_SIZE, offset=offset)
    query = urlencode({key: value for key, value in (("q", q), ("category", category)) if value})
    return render(request, "protected_names.html", session=session, principal=principal, page=page, q=q,
                  category=category, query=query, message=message[:300], error=error, status_code=status_code)


def _edited(name: str, what: str, result: dict[str, Any]) -> Response:
    message = f"{what}; policy revision {result['revision'][:12]} is in force"
    return RedirectResponse(f"{PATH}?{urlencode({'q': name, 'message': message})}", status_code=303)


@router.get(PATH, response_class=HTMLResponse)
def names_page(request: Request, session: SessionDep, principal: PortalUser, q: str = Query(default="", max_length=200),
               category: str = Query(default="", max_length=100), offset: int = Query(default=0, ge=0),
               message: str = Query(default="", max_length=300)) -> HTMLResponse:
    access.check(session, principal=principal, action=protected_names.MANAGE_ACTION)
    try:
        return _page(request, session, principal, q=q, category=category, offset=offset, message=message)
    except InvalidInput as problem:  # an unknown category in the address: the whole list, and why
        return _page(request, session, principal, q=q, error=problem.detail, status_code=problem.status_code)


@router.post(PATH, response_class=HTMLResponse)
def names_add(request: Request, session: SessionDep, principal: PortalUser, name: Annotated[str, Form(max_length=1000)],
              category: Annotated[str, Form(max_length=100)], note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    try:
        result = protected_names.add(session, principal, [{"name": name, "category": category}], note=note)
    except (InvalidInput, NotFound) as problem:
        return _page(request, session, principal, error=problem.detail, status_code=problem.status_code)
    return _edited(name.strip(), f"added {name.strip()} ({category})", result)


@router.post(f"{PATH}/remove", response_class=HTMLResponse)
def names_remove(request: Request, session: SessionDep, principal: PortalUser, name: Annotated[str, Form(max_length=1000)],
                 note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    try:
        result = protected_names.remove(session, principal, [name], note=note)
    except (InvalidInput, NotFound) as problem:
        return _page(request, session, principal, error=problem.detail, status_code=problem.status_code)
    return _edited(name.strip(), f"removed {name.strip()}", result)


@router.post(f"{PATH}/category", response_class=HTMLResponse)
def names_recategorise(request: Request, session: SessionDep, principal: PortalUser,
                       name: Annotated[str, Form(max_length=1000)], category: Annotated[str, Form(max_length=100)],
                       note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    try:
        result = protected_names.recategorise(session, principal, name, category, note=note)
    except (InvalidInput, NotFound) as problem:
        return _page(request, session, principal, q=name, error=problem.detail, status_code=problem.status_code)
    return _edited(name.strip(), f"{name.strip()} is now a protected {category}", result)
