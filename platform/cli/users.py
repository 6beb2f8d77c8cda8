"""``latentops users``: create and list users."""

from __future__ import annotations

import sys

import typer

from latentops.core.errors import InvalidInput
from latentops.platform.cli import backends, output
from latentops.platform.tables import Role

users_app = typer.Typer(help="Users, teams and roles.", no_args_is_help=True)
ROLES = ", ".join(role.value for role in Role)


@users_app.command("create")
def create(
    email: str = typer.Option(..., help="The user's email address (their login)."),
    role: str = typer.Option(..., help=f"Role in the team: {ROLES}."),
    team: str = typer.Option(..., help="An existing team; an unknown one is refused, naming the existing ones "
                                       "(the first user of an installation founds its first team)."),
    new_team: bool = typer.Option(False, "--new-team", help="Create the team first if it does not exist (audited)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a user with a role in a team (audited)."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("password: --password-stdin was given but standard input was empty")
    result = backends.backend().create_user(email=email, role=role, team=team, password=password, new_team=new_team)
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"created user {result['email']} (id {result['id']}) as {role} in team {result['team']}")


@users_app.command("list")
def list_users(
    offset: int = typer.Option(0, min=0), limit: int = typer.Option(50, min=1, max=1000),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """List users with their teams and roles."""
    columns = ("id", "email", "teams", "active")
    rows = backends.backend().list_users(offset=offset, limit=limit)
    if json_output:
        for row in rows:
            output.emit_json({key: row[key] for key in columns})
    else:
        output.table("users", list(columns), [[row[key] for key in columns] for row in rows])


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
