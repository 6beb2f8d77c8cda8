"""Where a remote-capable CLI command does its work: ``backend()`` picks the implementation.

``latentops --server URL --token T`` (or ``LATENTOPS_SERVER`` / ``LATENTOPS_TOKEN``) sets
``context.target``; ``backend()`` then answers with a ``RemoteBackend`` (the REST API through the
SDK), else with a ``LocalBackend`` (the services on this machine's database). The protocol both
implement is ``base.Backend``. Imports point one way: commands -> backends -> context.
"""

from __future__ import annotations

from latentops.platform.cli import context
from latentops.platform.cli.backends.base import AuditFilters, Backend, GenerateOptions

__all__ = ["AuditFilters", "Backend", "GenerateOptions", "backend"]


def backend() -> Backend:
    """Where a remote-capable command does its work: the REST API with ``--server``, else the services."""
    if context.remote():
        # Imported on use: the SDK and its HTTP client load only for a command run with --server.
        from latentops.platform.cli.backends.remote import RemoteBackend

        return RemoteBackend(context.target.server, context.target.token)
    from latentops.platform.cli.backends.local import LocalBackend

    return LocalBackend()
