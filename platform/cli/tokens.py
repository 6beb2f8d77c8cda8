"""``latentops tokens``: personal API tokens."""

from __future__ import annotations

import typer

from latentops.platform.cli import context, output
from latentops.platform.services import tokens as tokens_service

tokens_app = typer.Typer(help="Personal API tokens (shown once, stored hashed).", no_args_is_help=True)


@tokens_app.command("create")
def create(
    email: str = typer.Option(..., help="The user the token acts as."),
    name: str = typer.Option("cli", help="A name to recognise the token by."),
    scope: list[str] = typer.Option(["*"], "--scope", help="Scope (repeatable): *, read, jobs, generate, datasets, audit, admin."),
    expires_days: int = typer.Option(90, min=1, max=366, help="Days until the token expires."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a token; its secret is printed once and never stored."""
    with context.session() as db:
        token, secret = tokens_service.create_token(db, email=email, name=name, scopes=scope,
                                                    expires_in_days=expires_days, actor=context.actor())
        result = {"id": token.id, "token": secret, "expires_at": str(token.expires_at), "scopes": token.scopes}
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"token {result['id']} (expires {result['expires_at']}):\n{secret}\nStore it now: it is not shown again.")


@tokens_app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="The token's id.")) -> None:
    """Revoke a token at once (audited)."""
    with context.session() as db:
        tokens_service.revoke_token(db, token_id=token_id, actor=context.actor())
    output.say(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
