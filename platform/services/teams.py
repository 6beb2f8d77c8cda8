"""Which team a request runs for: the one rule every route, portal page, CLI and job uses.

``resolve(session, caller, name)``, where ``caller`` is an authenticated ``Principal`` (REST and
portal) or an actor (a user's e-mail, ``cli:<user>`` for the console, ``system`` or
``job:<id>`` for a job acting for the user who submitted it):

* **A named team** must exist and be visible to the caller: one of the caller's teams, or any team
  when one of the caller's roles sees every team (the access policy's ``all_teams_roles``). The
  console and the system see every team. A team the caller cannot see is ``NotFound``, exactly
  like a missing one, so the answer does not tell whether another team exists.
* **No name** means the caller's only team. Several teams is ``InvalidInput`` (name one). A
  principal without a team is refused the same way; an actor without one (the console, the
  system, a user without memberships) gets ``None``: the request runs for no team.

A principal's check is the access decision for ``action`` on the team (recorded when denied for
another reason than the team, e.g. a role that may not submit); an actor's is the same team rule,
evaluated without recording, since the service asks its own domain policy next. A blank name
from an actor (an empty form field or flag) counts as no name.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import access, audit, policy
from latentops.governance.access import Principal
from latentops.platform.tables import Team


class _TeamOwned(Protocol):
    team_id: int | None


Owned = TypeVar("Owned", bound=_TeamOwned)

__all__ = ["resolve"]


def resolve(session: Session, caller: Principal | audit.Actor | str, name: str | None, *,
            action: str = "jobs.submit") -> Team | None:
    """The team ``caller`` names (or its only team) for ``action``; the rule is the module docstring's.

    Never ``None`` for a ``Principal``; ``None`` for an actor means the request runs for no team.
    """
    if isinstance(caller, Principal):
        return _for_principal(session, caller, name, action)
    return _for_actor(session, caller, name or None, action)


def _only(teams: list[str]) -> str:
    if len(teams) != 1:
        raise InvalidInput(f"team: you belong to {len(teams)} teams ({', '.join(teams) or 'none'}); name one")
    return teams[0]


def _row(session: Session, name: str) -> Team | None:
    return session.scalar(sa.select(Team).where(Team.name == name.strip().lower()))


def _for_principal(session: Session, principal: Principal, name: str | None, action: str) -> Team:
    if name is None:
        name = _only(principal.teams)
    row = _row(session, name)
    access.check(session, principal=principal, action=action, resource={"team": row.name if row else None},
                 not_found=f"team: no team named {name!r}")
    if row is None:
        raise NotFound(f"team: no team named {name!r}")
    return row


def _for_actor(session: Session, actor: audit.Actor | str, name: str | None, action: str) -> Team | None:
    subject = policy.subject_for(session, actor)
    mine = sorted({m["team"] for m in subject.get("memberships", [])})
    if name is None:
        if not mine:
            return None
        name = _only(mine)
    row = _row(session, name)
    if row is None or (subject["kind"] == "user" and row.name not in mine and not _sees_every_team(session, subject, action)):
        raise NotFound(f"team: no team named {name!r}")
    return row


def _sees_every_team(session: Session, subject: dict[str, object], action: str) -> bool:
    """Whether the access policy's team rule lets ``subject`` see another team's resources."""
    decision = access.evaluate(session, {"action": action, "subject": subject, "token": None,
                                         "resource": {"team": None, "granted": False}})
    return policy.UNAVAILABLE_RULE not in decision.rule_ids and access.TEAM_RULE not in decision.rule_ids


def visible_row(session: Session, principal: Principal, table: type[Owned], row_id: int, *, action: str,
                missing: str) -> Owned:
    """The row of ``table`` (one with a ``team_id``) if the caller may ``action`` it; ``NotFound``
    with ``missing`` otherwise: another team's row is answered exactly like a missing one."""
    access.check(session, principal=principal, action=action)
    row = session.get(table, row_id)
    if row is None:
        raise NotFound(missing)
    team = session.get(Team, row.team_id) if row.team_id else None
    access.check(session, principal=principal, action=action, resource={"team": team.name if team else None},
                 not_found=missing)
    return row
