"""``/api/v1/users`` and ``/api/v1/teams``: accounts, teams and roles, for admins.

Creating users and teams, changing memberships and disabling accounts are ``users.manage`` actions
of the access policy; reading them is ``users.read``. Disabling an account ends its browser
sessions. A user or membership names an existing team: an unknown name is refused (422) with the
teams there are, and ``POST /teams`` creates one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from latentops.governance import access
from latentops.platform.api.deps import PrincipalDep, SessionDep
from latentops.platform.services import memberships
from latentops.platform.services import users as users_service

router = APIRouter(tags=["users"])


class UserRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    role: str = Field(min_length=1, max_length=32)
    team: str = Field(min_length=1, max_length=63)
    password: str | None = Field(default=None, max_length=1024, description="Omit for single sign-on users.")
    display_name: str = Field(default="", max_length=200)


class TeamRequest(BaseModel):
    name: str = Field(min_length=1, max_length=63)


class MembershipRequest(BaseModel):
    team: str = Field(min_length=1, max_length=63)
    role: str = Field(min_length=1, max_length=32)


@router.get("/users")
def list_users(session: SessionDep, principal: PrincipalDep, offset: int = Query(default=0, ge=0, le=1_000_000),
               limit: int = Query(default=100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Users with their teams and roles."""
    access.check(session, principal=principal, action="users.read")
    return [memberships.describe(session, u) for u in users_service.list_users(session, offset=offset, limit=limit)]


@router.post("/users", status_code=201)
def create_user(body: UserRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Create a user with a role in an existing team (an unknown team is refused, naming the teams)."""
    access.check(session, principal=principal, action="users.manage")
    user = users_service.create_user(session, email=body.email, role=body.role, team=body.team, password=body.password,
                                     actor=principal.email, display_name=body.display_name, create_team=False)
    return memberships.describe(session, user)


@router.put("/users/{user_id}/memberships")
def set_membership(user_id: int, body: MembershipRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Give the user a role in an existing team, replacing their previous role there."""
    access.check(session, principal=principal, action="users.manage")
    memberships.set_membership(session, user_id=user_id, team=body.team, role=body.role, actor=principal.email,
                               create_team=False)
    return memberships.describe(session, memberships.get_user(session, user_id))


@router.delete("/users/{user_id}/memberships/{team}")
def remove_membership(user_id: int, team: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Remove the user from a team (not their last one)."""
    access.check(session, principal=principal, action="users.manage")
    memberships.remove_membership(session, user_id=user_id, team=team, actor=principal.email)
    return memberships.describe(session, memberships.get_user(session, user_id))


@router.post("/users/{user_id}/disable")
def disable(user_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Disable an account; its sessions end at once and its tokens stop working."""
    access.check(session, principal=principal, action="users.manage")
    return memberships.describe(session, memberships.set_active(session, user_id=user_id, active=False,
                                                                actor=principal.email))


@router.post("/users/{user_id}/enable")
def enable(user_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Enable an account again (also lifts a lockout)."""
    access.check(session, principal=principal, action="users.manage")
    return memberships.describe(session, memberships.set_active(session, user_id=user_id, active=True,
                                                                actor=principal.email))


@router.get("/teams")
def list_teams(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """Teams with their member counts."""
    access.check(session, principal=principal, action="users.read")
    return memberships.list_teams(session)


@router.post("/teams", status_code=201)
def create_team(body: TeamRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Create a team (an existing name is 409)."""
    access.check(session, principal=principal, action="users.manage")
    team = users_service.create_team(session, name=body.name, actor=principal.email)
    return {"id": team.id, "name": team.name, "members": 0}
