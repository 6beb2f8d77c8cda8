"""``latentops models grant|revoke|grants|access``: who may use, download or manage a base model.

The commands attach to the ``models`` group owned by ``latentops.platform.cli.models``. Every
command asks the models policy through ``latentops.platform.services.grants``; a denied request
still leaves its decision recorded.
"""

from __future__ import annotations

import typer

from latentops.platform.cli import backends, context, output
from latentops.platform.cli.backends.local import run_recorded
from latentops.platform.cli.models import models_app
from latentops.platform.services import grants as grants_service

ACTION_HELP = "use, download or manage."


@models_app.command("grant")
@context.runs_no_model
def grant(
    name: str = typer.Argument(..., help="Base model name."),
    action: str = typer.Option(..., "--action", help=ACTION_HELP),
    team: str | None = typer.Option(None, "--team", help="Team to grant to."),
    user: str | None = typer.Option(None, "--user", help="User (email) to grant to."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Grant an action on a base model to a team or a user (policy-checked, audited)."""
    result = backends.backend().grant(model=name, action=action, team=team, user=user)
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"granted {action} on {name} to {'team ' + team if team else 'user ' + str(user)} (grant {result['grant_id']})")


@models_app.command("revoke")
@context.runs_no_model
def revoke(
    name: str = typer.Argument(..., help="Base model name."),
    action: str = typer.Option(..., "--action", help=ACTION_HELP),
    team: str | None = typer.Option(None, "--team", help="Team to revoke from."),
    user: str | None = typer.Option(None, "--user", help="User (email) to revoke from."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Revoke a grant (policy-checked, audited)."""
    count = backends.backend().revoke(model=name, action=action, team=team, user=user)
    if json_output:
        output.emit_json({"model": name, "action": action, "team": team, "user": user, "revoked": count})
    else:
        output.say(f"revoked {action} on {name} from {'team ' + team if team else 'user ' + str(user)}")


@models_app.command("grants")
@context.runs_no_model
def list_grants(
    name: str = typer.Argument(..., help="Base model name."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List the active grants on a base model."""
    rows = backends.backend().list_grants(name)
    if json_output:
        for row in rows:
            output.emit_json(row)
    else:
        output.table(f"grants on {name}", ["id", "action", "team", "user", "granted at"],
                     [(r["id"], r["action"], r["team"], r["user"], r["granted_at"]) for r in rows])


@models_app.command("access")
@context.runs_no_model
def access(
    name: str = typer.Argument(..., help="Base model name."),
    action: str = typer.Option(..., "--action", help=ACTION_HELP),
    as_user: str | None = typer.Option(None, "--as", help="Check for this user (email) instead of the console operator."),
) -> None:
    """Ask the models policy whether an action on a model is allowed (the decision is recorded)."""
    actor = as_user or context.actor()
    decision = run_recorded(lambda db: grants_service.check_access(db, model=name, action=action, actor=actor))
    output.emit_json(decision.to_json())


def register(app: typer.Typer) -> None:
    """The commands are on ``models_app``, which ``latentops.platform.cli.models`` adds to the app."""
