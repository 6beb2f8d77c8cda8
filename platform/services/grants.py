"""Who may use, download or manage which base model: grants to teams or users, and access checks.

Every decision here is the models policy's (``governance/policies/models``): granting and
revoking ask it with action ``grant``/``revoke``, access checks with ``use``/``download``/
``manage``. No role is checked in Python. Grants and revocations are audited in the same
transaction as the change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound
from latentops.governance import audit, policy
from latentops.platform.services.users import team_names
from latentops.platform.tables import AccessGrant, ModelRecord, Team, User, utcnow


def get_model(session: Session, name: str) -> ModelRecord:
    model = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == name, ModelRecord.removed_at.is_(None)))
    if model is None:
        raise NotFound(f"model: no base model named {name!r}")
    return model


def active_grants(session: Session, model: ModelRecord) -> list[AccessGrant]:
    return list(session.scalars(
        sa.select(AccessGrant).where(AccessGrant.resource_type == "model", AccessGrant.resource_id == model.id,
                                     AccessGrant.revoked_at.is_(None)).order_by(AccessGrant.id)
    ))


def model_input(session: Session, model: ModelRecord) -> dict[str, Any]:
    """The ``model`` and ``grants`` parts of a models/jobs policy input."""
    teams = team_names(session)
    return {
        "model": {"name": model.name, "sensitivity": model.sensitivity, "owner_team": teams.get(model.owner_team_id)},
        "grants": [{"action": g.action, "team": teams.get(g.team_id) if g.team_id else None, "user_id": g.user_id}
                   for g in active_grants(session, model)],
    }


def _grantee(session: Session, team: str | None, user: str | None) -> tuple[Team | None, User | None]:
    if (team is None) == (user is None):
        raise InvalidInput("grantee: give exactly one of --team or --user")
    if team is not None:
        row = session.scalar(sa.select(Team).where(Team.name == team.strip().lower()))
        if row is None:
            raise NotFound(f"team: no team named {team!r}")
        return row, None
    found = session.scalar(sa.select(User).where(User.email == str(user).strip().lower()))
    if found is None:
        raise NotFound(f"user: no user with email {user!r}")
    return None, found


def _check_action(action: str) -> None:
    actions = policy.policy_data("models.actions")
    if action not in actions:
        raise InvalidInput(f"action: {action!r} is not one of {', '.join(actions)}")


def _grantee_name(team: Team | None, user: User | None) -> str:
    return f"team:{team.name}" if team is not None else f"user:{user.email}" if user is not None else ""


def grant(session: Session, *, model: str, action: str, actor: audit.Actor | str | User,
          team: str | None = None, user: str | None = None) -> AccessGrant:
    """Grant ``action`` on base model ``model`` to a team or a user; an identical active grant is returned as is."""
    return grant_once(session, model=model, action=action, actor=actor, team=team, user=user)[0]


def grant_once(session: Session, *, model: str, action: str, actor: audit.Actor | str | User,
               team: str | None = None, user: str | None = None) -> tuple[AccessGrant, bool]:
    """``grant``, and whether it made a new grant: an identical active grant is returned with
    ``False``, and nothing is written or audited for it."""
    _check_action(action)
    record = get_model(session, model)
    team_row, user_row = _grantee(session, team, user)
    policy.require("models", {"action": "grant", **model_input(session, record)}, session=session, actor=actor)
    for existing in active_grants(session, record):
        if existing.action == action and existing.team_id == (team_row.id if team_row else None) \
                and existing.user_id == (user_row.id if user_row else None):
            return existing, False
    granted_by = actor.id if isinstance(actor, User) else None
    row = AccessGrant(resource_type="model", resource_id=record.id, action=action,
                      team_id=team_row.id if team_row else None, user_id=user_row.id if user_row else None, granted_by=granted_by)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor.email if isinstance(actor, User) else actor, action="model.grant",
                 resource=f"model:{record.name}",
                 details={"grant_id": row.id, "action": action, "grantee": _grantee_name(team_row, user_row)})
    return row, True


def revoke(session: Session, *, model: str, action: str, actor: audit.Actor | str | User,
           team: str | None = None, user: str | None = None) -> int:
    """Revoke the active grant of ``action`` to the team or user; returns how many rows were revoked."""
    _check_action(action)
    record = get_model(session, model)
    team_row, user_row = _grantee(session, team, user)
    policy.require("models", {"action": "revoke", **model_input(session, record)}, session=session, actor=actor)
    matching = [g for g in active_grants(session, record) if g.action == action
                and g.team_id == (team_row.id if team_row else None) and g.user_id == (user_row.id if user_row else None)]
    if not matching:
        raise NotFound(f"grant: {_grantee_name(team_row, user_row)} has no active {action!r} grant on model {model!r}")
    now = utcnow()
    for row in matching:
        row.revoked_at = now
    session.flush()
    audit.record(session, actor=actor.email if isinstance(actor, User) else actor, action="model.revoke",
                 resource=f"model:{record.name}",
                 details={"grant_ids": [g.id for g in matching], "action": action, "grantee": _grantee_name(team_row, user_row)})
    return len(matching)


def check_access(session: Session, *, model: str, action: str, actor: audit.Actor | str | User) -> policy.Decision:
    """Ask the models policy whether ``actor`` may ``action`` the model (recorded); raises PolicyDenied."""
    _check_action(action)
    record = get_model(session, model)
    return policy.require("models", {"action": action, **model_input(session, record)}, session=session, actor=actor)


def list_grants(session: Session, *, model: str) -> list[dict[str, Any]]:
    record = get_model(session, model)
    teams = team_names(session)
    users: dict[int, str] = dict(session.execute(sa.select(User.id, User.email)).all())
    return [{"id": g.id, "action": g.action, "team": teams.get(g.team_id) if g.team_id else None,
             "user": users.get(g.user_id) if g.user_id else None, "granted_at": g.created_at}
            for g in active_grants(session, record)]
