"""This machine's audit files for console commands: the signing key, the checkpoint sink and the
keyring (each as given on the command line, else the deployment's), and the query filters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentops.platform.cli import context
from latentops.platform.cli.backends.base import AuditFilters

if TYPE_CHECKING:
    from latentops.governance.checkpoints import CheckpointSink, Keyring


def audit_key_path(key: Path | None) -> Path:
    """The audit signing key given, else this machine's (``LATENTOPS_AUDIT_SIGNING_KEY``)."""
    from latentops.governance import checkpoints

    return key or checkpoints.default_key_path(context.settings())


def audit_sink(location: str | None) -> CheckpointSink:
    """The checkpoint sink given, else this machine's (``LATENTOPS_AUDIT_SINK``)."""
    from latentops.governance import checkpoints

    return checkpoints.open_sink(location or checkpoints.default_sink_location(context.settings()))


def audit_keyring(paths: list[Path] | None) -> Keyring:
    """The public keys given (each file may hold several), else the keyring beside the signing key."""
    from latentops.governance import checkpoints

    if paths:
        keys: Keyring = {}
        for path in paths:
            keys.update(checkpoints.load_public_keys(path))
        return keys
    return checkpoints.signing_keyring(checkpoints.default_key_path(context.settings()))


def compliance_filters(filters: AuditFilters) -> Any:
    from latentops.governance import compliance

    return compliance.Filters(since=compliance.parse_time(filters.since, "since"),
                              until=compliance.parse_time(filters.until, "until"), actor=filters.actor,
                              action=filters.action, resource=filters.resource, outcome=filters.outcome)
