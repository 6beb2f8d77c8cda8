"""Team memberships and account state, as an admin changes them: add or change a role, remove a
member, disable or enable an account. Every change is audited in the caller's transaction; who
may make it is decided by the access policy at the route, not here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import audit
from latentops.platform.services.auth import end_sessions
from latentops.platform.services.users import get_user_by_email, parse_role, team_for
from latentops.platform.tables import Membership, Team, User


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user: no user with id {user_id}")
    return user


def set_membership(session: Session, *, user_id: int, team: str, role: str, actor: audit.Actor | str,
                   create_team: bool = True) -> Membership:
    """Give the user ``role`` in ``team`` (created if new, unless ``create_team`` is false: then
    an unknown team is refused naming the existing ones), replacing their previous role there."""
    parsed = parse_role(role)
    user = get_user(session, user_id)
    team_row = team_for(session, name=team, actor=actor, create=create_team)
    membership = session.scalar(sa.select(Membership).where(Membership.user_id == user.id, Membership.team_id == team_row.id))
    previous = membership.role.value if membership is not None else None
    if membership is None:
        membership = Membership(user_id=user.id, team_id=team_row.id, role=parsed)
        session.add(membership)
    else:
        membership.role = parsed
    session.flush()
    audit.record(session, actor=actor, action="membership.set", resource=f"user:{user.id}",
                 details={"team": team_row.name, "role": parsed.value, "previous": previous})
    return membership


def remove_membership(session: Session, *, user_id: int, team: str, actor: audit.Actor | str) -> None:
    user = get_user(session, user_id)
    row = session.scalar(sa.select(Membership).join(Team, Team.id == Membership.team_id)
                         .where(Membership.user_id == user.id, Team.name == team.strip().lower()))
    if row is None:
        raise NotFound(f"team: user {user.email} is not a member of {team!r}")
    remaining = session.scalar(sa.select(sa.func.count(Membership.id)).where(Membership.user_id == user.id))
    if remaining == 1:
        raise InvalidInput(f"team: {team!r} is the user's only team; disable the account instead")
    session.delete(row)
    audit.record(session, actor=actor, action="membership.remove", resource=f"user:{user.id}", details={"team": team})


def set_active(session: Session, *, user_id: int, active: bool, actor: audit.Actor | str) -> User:
    """Disable (ending every session) or enable an account; enabling also clears a lockout."""
    user = get_user(session, user_id)
    user.is_active = active
    ended = 0
    if active:
        user.failed_logins, user.locked_until = 0, None
    else:
        ended = end_sessions(session, user=user, reason="account disabled")
    audit.record(session, actor=actor, action="user.enable" if active else "user.disable", resource=f"user:{user.id}",
                 details={"sessions_ended": ended})
    return user


def describe(session: Session, user: User) -> dict[str, Any]:
    rows = session.execute(sa.select(Team.name, Membership.role).join(Membership, Membership.team_id == Team.id)
                           .where(Membership.user_id == user.id).order_by(Team.name))
    return {"id": user.id, "email": user.email, "display_name": user.display_name, "active": user.is_active,
            "sso": user.external_id is not None, "locked": user.locked_until is not None and user.failed_logins > 0,
            "memberships": [{"team": name, "role": getattr(role, "value", role)} for name, role in rows]}


def list_teams(session: Session) -> list[dict[str, Any]]:
    counts: dict[int, int] = dict(session.execute(sa.select(Membership.team_id, sa.func.count(Membership.id)).group_by(Membership.team_id)).all())
    return [{"id": t.id, "name": t.name, "members": int(counts.get(t.id, 0))}
            for t in session.scalars(sa.select(Team).order_by(Team.name))]


def by_email(session: Session, email: str) -> User:
    return get_user_by_email(session, email)
