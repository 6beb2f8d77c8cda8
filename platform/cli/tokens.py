"""``latentops tokens``: personal API tokens."""

from __future__ import annotations

import typer

from latentops.platform.cli import backends, output

tokens_app = typer.Typer(help="Personal API tokens (shown once, stored hashed).", no_args_is_help=True)


@tokens_app.command("create")
def create(
    email: str = typer.Option(None, help="The user the token acts as (required locally; with --server, "
                              "the token's own user)."),
    name: str = typer.Option("cli", help="A name to recognise the token by."),
    scope: list[str] = typer.Option(["*"], "--scope", help="Scope (repeatable): *, read, jobs, generate, datasets, audit, admin, policy:bundle."),
    expires_days: int = typer.Option(90, min=1, max=366, help="Days until the token expires."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a token; its secret is printed once and never stored."""
    result = backends.backend().create_token(email=email, name=name, scopes=scope, expires_days=expires_days)
    secret = result["token"]
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"token {result['id']} (expires {result['expires_at']}):\n{secret}\nStore it now: it is not shown again.")


@tokens_app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="The token's id.")) -> None:
    """Revoke a token at once (audited)."""
    backends.backend().revoke_token(token_id)
    output.say(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
