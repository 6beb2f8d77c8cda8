"""``latentops witness``: run an independent witness of audit logs (C2SP tlog-witness).

``init`` creates the witness's key and name, ``key`` prints its vkey (what deployments list in
``LATENTOPS_AUDIT_WITNESSES`` and auditors pass to ``--witness-key``), ``serve`` runs it, and
``log-key`` prints this deployment's own log vkey for the witness operator's ``--log``. Only
``log-key`` reads the platform's settings and database; a witness needs neither.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import typer

from latentops.core.errors import InvalidInput
from latentops.platform.cli import context, output

witness_app = typer.Typer(help="An independent witness that cosigns audit checkpoints (C2SP tlog-witness).",
                          no_args_is_help=True)

STATE = typer.Option(Path("~/.latentops-witness"), "--state", envvar="LATENTOPS_WITNESS_STATE",
                     help="The witness's folder: key, name and its record of each log (SQLite).")
KEY = typer.Option(None, "--key", envvar="LATENTOPS_WITNESS_KEY", help="The witness's Ed25519 key (default STATE/witness-key.pem).")
NAME = typer.Option(None, "--name", envvar="LATENTOPS_WITNESS_NAME", help="The witness's name (default: STATE/witness-name).")


@witness_app.command("init")
def init(
    name: str = typer.Option(..., "--name", help="The witness's key name, a schema-less URL: witness.example/w1."),
    state: Path = STATE,
) -> None:
    """Create the witness's key (mode 0600) and name in STATE and print its vkey."""
    context.require_local()
    from latentops.governance import witness

    output.say(witness.init(state.expanduser(), name).vkey())


@witness_app.command("key")
def key(state: Path = STATE, key_file: Path | None = KEY, name: str | None = NAME) -> None:
    """Print the witness's vkey: name+keyhash+base64(0x04 || public key)."""
    context.require_local()
    from latentops.governance import signed_note, witness

    state = state.expanduser()
    private = witness.load_key(key_file or state / witness.KEY_FILE)
    output.say(signed_note.verifier(witness.load_name(state, name), signed_note.COSIGNATURE_V1,
                                    private.public_key()).vkey())


@witness_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", envvar="LATENTOPS_WITNESS_HOST", help="Address to listen on."),
    port: int = typer.Option(7380, "--port", envvar="LATENTOPS_WITNESS_PORT", help="Port (0: any free one)."),
    state: Path = STATE,
    key_file: Path | None = KEY,
    name: str | None = NAME,
    logs: list[str] = typer.Option(..., "--log", envvar="LATENTOPS_WITNESS_LOGS",
                                   help="ORIGIN=FILE: a log this witness cosigns and a file with its vkey or "
                                        "public key; repeat (for several logs, or a log's old and new key)."),
) -> None:
    """Serve POST /add-checkpoint (and GET /<origin hash>/checkpoint) until stopped."""
    context.require_local()
    from latentops.governance import signed_note, witness

    state = state.expanduser()
    trusted: dict[str, list[signed_note.Verifier]] = {}
    for item in logs:
        origin, separator, path = item.partition("=")
        if not separator or not origin or not path:
            raise InvalidInput(f"--log: expected ORIGIN=FILE (got {item!r})")
        trusted.setdefault(signed_note.check_name(origin, "--log origin"), []).append(
            witness.read_log_key(origin, Path(path).expanduser()))
    if key_file is None and name and not (state / witness.KEY_FILE).exists():
        # First start of a container: create the key; `witness key` prints the vkey to publish.
        witness.init(state, name)
    private = witness.load_key(key_file or state / witness.KEY_FILE)
    the_witness = witness.Witness(name=witness.load_name(state, name), key=private, state=state, logs=trusted)
    httpd = witness.server(the_witness, host, port)
    logging.getLogger("latentops.governance.witness").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # One unwrapped line, flushed: supervisors and tests read the address from it.
    print(f"witness {the_witness.verifier.vkey()} listening on http://{host}:{httpd.server_address[1]} "
          f"for {', '.join(sorted(trusted))}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


@witness_app.command("log-key")
def log_key(
    key_file: Path | None = typer.Option(None, "--key", help="The log's signing key (default LATENTOPS_AUDIT_SIGNING_KEY)."),
) -> None:
    """Print this deployment's log vkey (origin+keyhash+base64(0x01 || key)), for a witness's --log."""
    from latentops.governance import checkpoints

    settings = context.settings()
    private = checkpoints.load_signing_key(key_file or checkpoints.default_key_path(settings))
    with context.session() as db:
        origin = checkpoints.origin_for(db)
    output.say(checkpoints.log_verifier(origin, private.public_key()))


def register(app: typer.Typer) -> None:
    app.add_typer(witness_app, name="witness")
