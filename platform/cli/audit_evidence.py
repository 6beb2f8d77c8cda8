"""``latentops audit evidence``: the evidence pack for a time window, checked by its own ``verify.py``.

Locally it signs with this machine's key and sink; with ``--server`` the server signs and builds the
pack, and the zip is written here unchanged.
"""

from __future__ import annotations

from pathlib import Path

import typer

from latentops.platform.cli import backends, output

KEY_HELP = "Ed25519 signing key (PEM; default LATENTOPS_AUDIT_SIGNING_KEY, created if missing). Local only."
SINK_HELP = "External checkpoint sink: a file path or scheme://... (default LATENTOPS_AUDIT_SINK). Local only."


def evidence_command(
    start: str = typer.Option(..., "--from", help="Window start: an ISO 8601 date or time (UTC if no zone)."),
    end: str = typer.Option(..., "--to", help="Window end, exclusive; a date alone includes that whole day."),
    out: Path = typer.Option(..., "--out", help="The zip to write (e.g. pack.zip)."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    sink: str | None = typer.Option(None, "--sink", help=SINK_HELP),
) -> None:
    """Write the evidence pack of a window: entries, proofs, signed checkpoints, policy revisions, keys
    and a standalone verify.py (audited; signs a fresh checkpoint)."""
    from latentops.governance import evidence  # loads the policy engine: only when the command runs

    window = evidence.parse_window(start, end, names=("--from", "--to"))
    summary = backends.backend().audit_evidence(out, window=window, key=key, sink=sink)
    output.say(f"evidence pack {out}: {summary['entries']} entries in the window {summary['window']['from']} to "
               f"{summary['window']['to']}, tree size {summary['tree_size']} (root {summary['root_hash']}), "
               f"{summary['policy_revisions']} policy revision(s); sha256 {summary['sha256']}. "
               "Check it with: unzip it, then python3 verify.py")
