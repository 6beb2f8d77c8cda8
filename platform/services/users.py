"""Users, teams and memberships.

Every change is audited in the same transaction. Roles are the four in ``Role``; what a role may
do is decided by policy, not here.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from latentops.governance import audit
from latentops.platform.errors import Conflict, InvalidInput, NotFound
from latentops.platform.models import Membership, Role, Team, User

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEAM_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        valid = ", ".join(role.value for role in Role)
        raise InvalidInput(f"role: unknown role {value!r}; valid roles are {valid}") from None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def team_names(session: Session) -> dict[int, str]:
    """Every team's name by its id (for showing the team of jobs, grants and adapters)."""
    return dict(session.execute(sa.select(Team.id, Team.name)).all())


def get_or_create_team(session: Session, *, name: str, actor: audit.Actor | str) -> Team:
    name = name.strip().lower()
    if not TEAM_RE.match(name):
        raise InvalidInput(f"team: {name!r} is not a valid team name (lowercase letters, digits, '-' and '_')")
    team = session.scalar(sa.select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
        audit.record(session, actor=actor, action="team.create", resource=f"team:{team.id}", details={"name": name})
    return team


def create_user(
    session: Session,
    *,
    email: str,
    role: str,
    team: str,
    password: str | None,
    actor: audit.Actor | str,
    display_name: str = "",
) -> User:
    """Create a user with one membership. Nothing is written if any input is invalid."""
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise InvalidInput(f"email: {email!r} is not an email address")
    parsed_role = parse_role(role)
    password_hash = hash_password(password) if password is not None else None
    if session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"email: a user with email {email!r} already exists")
    team_row = get_or_create_team(session, name=team, actor=actor)
    user = User(email=email, display_name=display_name or email.split("@")[0], password_hash=password_hash)
    session.add(user)
    session.flush()
    session.add(Membership(user_id=user.id, team_id=team_row.id, role=parsed_role))
    audit.record(
        session,
        actor=actor,
        action="user.create",
        resource=f"user:{user.id}",
        details={"email": email, "team": team_row.name, "role": parsed_role.value},
    )
    return user


def get_user_by_email(session: Session, email: str) -> User:
    user = session.scalar(sa.select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"user: no user with email {email!r}")
    return user


def list_users(session: Session, *, offset: int = 0, limit: int = 100) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.id).offset(offset).limit(limit)))


def memberships_of(session: Session, user: User) -> list[tuple[str, Role]]:
    rows = session.execute(
        sa.select(Team.name, Membership.role).join(Membership, Membership.team_id == Team.id).where(Membership.user_id == user.id)
    )
    return [(name, role) for name, role in rows]
