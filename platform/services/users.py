"""Users, teams and memberships.

Every change is audited in the same transaction. Roles are the four in ``Role``; what a role may
do is decided by policy, not here.

Passwords follow NIST SP 800-63B (section 5.1.1.2): at least ``MIN_PASSWORD_LENGTH`` characters,
no composition rules (any characters, spaces included), and refused when they are easy to guess:
only whitespace, one character repeated, a shorter sequence repeated (``passwordpassword``), on
the list of 30,000 common passwords that ships with ``zxcvbn`` (also with trailing digits and
symbols removed: ``password1234``), or built around the account's email name. The error names the
rule, never the password.
"""

from __future__ import annotations

import functools
import re
import string

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.governance import audit
from latentops.platform.tables import Membership, Role, Team, User

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEAM_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_DECORATION = string.digits + string.punctuation + string.whitespace

_hasher = PasswordHasher()


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        valid = ", ".join(role.value for role in Role)
        raise InvalidInput(f"role: unknown role {value!r}; valid roles are {valid}") from None


@functools.cache
def common_passwords() -> frozenset[str]:
    """zxcvbn's list of common passwords (lowercase), loaded on first use."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def password_problem(password: str, *, email: str = "") -> str | None:
    """Why ``password`` may not be used (a phrase naming the rule), or None when it may."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    if not password.strip():
        return "must not be only whitespace"
    lowered = password.lower()
    if len(set(lowered)) == 1:
        return "must not be one character repeated"
    if re.fullmatch(r"(.+?)\1+", lowered, re.DOTALL):
        return "must not be a shorter sequence repeated"
    core = lowered.strip(_DECORATION)
    if not core or lowered.strip() in common_passwords() or core in common_passwords():
        return "is on the list of commonly used passwords"
    local = email.strip().lower().split("@", 1)[0]
    if local and (lowered == local or (len(local) >= 4 and local in lowered)):
        return "must not contain the email's name"
    return None


def check_password(password: str, *, email: str = "") -> None:
    """Refuse a password that breaks the rules with ``InvalidInput`` naming ``password`` and the rule."""
    problem = password_problem(password, email=email)
    if problem is not None:
        raise InvalidInput(f"password: {problem}", reasons=[{"field": "password", "reason": problem}])


def hash_password(password: str, *, email: str = "") -> str:
    check_password(password, email=email)
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


def _team_name(name: str) -> str:
    name = name.strip().lower()
    if not TEAM_RE.match(name):
        raise InvalidInput(f"team: {name!r} is not a valid team name (lowercase letters, digits, '-' and '_')")
    return name


def get_or_create_team(session: Session, *, name: str, actor: audit.Actor | str) -> Team:
    name = _team_name(name)
    team = session.scalar(sa.select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
        audit.record(session, actor=actor, action="team.create", resource=f"team:{team.id}", details={"name": name})
    return team


def create_team(session: Session, *, name: str, actor: audit.Actor | str) -> Team:
    """Create a team (audited); an existing name is a ``Conflict``."""
    name = _team_name(name)
    if session.scalar(sa.select(Team.id).where(Team.name == name)) is not None:
        raise Conflict(f"team: a team named {name!r} already exists")
    return get_or_create_team(session, name=name, actor=actor)


def existing_team(session: Session, name: str, *, field: str = "team") -> Team:
    """The team named ``name``; an unknown name is ``InvalidInput`` naming ``field``, the value and the
    teams there are, so a mistyped name is never taken for a new team."""
    team = session.scalar(sa.select(Team).where(Team.name == name.strip().lower()))
    if team is None:
        names = list(session.scalars(sa.select(Team.name).order_by(Team.name).limit(51)))
        known = ", ".join(names[:50]) + (", ..." if len(names) > 50 else "") if names else "none yet"
        raise InvalidInput(f"{field}: no team named {name.strip()!r}; existing teams: {known}",
                           reasons=[{"field": field, "reason": "no such team", "allowed": names[:50]}])
    return team


def team_for(session: Session, *, name: str, actor: audit.Actor | str, create: bool) -> Team:
    """The team ``name``: created when new if ``create``, else it must exist (``existing_team``)."""
    return get_or_create_team(session, name=name, actor=actor) if create else existing_team(session, name)


def create_user(
    session: Session,
    *,
    email: str,
    role: str,
    team: str,
    password: str | None,
    actor: audit.Actor | str,
    display_name: str = "",
    create_team: bool = True,
) -> User:
    """Create a user with one membership. Nothing is written if any input is invalid.

    ``create_team`` false refuses a team that does not exist yet (the REST API and the portal:
    creating a team is its own action there), naming the teams there are."""
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise InvalidInput(f"email: {email!r} is not an email address")
    parsed_role = parse_role(role)
    password_hash = hash_password(password, email=email) if password is not None else None
    if session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"email: a user with email {email!r} already exists")
    team_row = team_for(session, name=team, actor=actor, create=create_team)
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


def actor_user(session: Session, actor: audit.Actor | str) -> User | None:
    """The user an actor (an ``Actor`` or an email) names; None for the console or an unknown email."""
    return session.scalar(sa.select(User).where(User.email == audit.actor_name(actor).strip().lower()))


def list_users(session: Session, *, offset: int = 0, limit: int = 100) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.id).offset(offset).limit(limit)))


def memberships_of(session: Session, user: User) -> list[tuple[str, Role]]:
    rows = session.execute(
        sa.select(Team.name, Membership.role).join(Membership, Membership.team_id == Team.id).where(Membership.user_id == user.id)
    )
    return [(name, role) for name, role in rows]
