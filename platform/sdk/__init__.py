"""``latentops.client``: the Python SDK for the latentops REST API.

    from latentops.client import Client

    with Client("https://latentops.example.com", token="lat_...") as api:
        job = api.finetune.submit(model="sd15", images=[Path("cat-01.png")], attest_licence=True,
                                  attest_consent=True, instance_prompt="a photo of sks cat")
        for update in api.jobs.progress(job["id"]):
            print(update["state"], update["progress"])

Server and token default to ``LATENTOPS_SERVER`` and ``LATENTOPS_TOKEN``. Failures raise the
platform's own exception tree (``latentops.core.errors``), rebuilt from the API's
``{error, detail, reasons}`` body: ``except NotFound`` works the same against the services and
against a server.

The folder is ``platform/sdk`` in the repository and installs as ``latentops.client`` only.
"""

from __future__ import annotations

if __name__ != "latentops.client":  # one module, one name: never also latentops.platform.sdk
    raise ImportError(f"import the SDK as latentops.client, not {__name__}")

from types import TracebackType
from typing import Self

import httpx

from latentops.client import resources, types
from latentops.client.audit import Audit
from latentops.client.http import DEFAULT_TIMEOUT_S, SERVER_ENV, TOKEN_ENV, Http, from_environment
from latentops.core.errors import (
    AuthenticationFailed,
    Conflict,
    IntegrityViolation,
    InvalidInput,
    LatentopsError,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    ServiceUnavailable,
)

# IntegrityViolation's former name, kept so that existing client code still imports.
IntegrityError = IntegrityViolation

__all__ = [
    "SERVER_ENV",
    "TOKEN_ENV",
    "AuthenticationFailed",
    "Client",
    "Conflict",
    "IntegrityError",
    "IntegrityViolation",
    "InvalidInput",
    "LatentopsError",
    "NotFound",
    "PolicyDenied",
    "QuotaExceeded",
    "ServiceUnavailable",
    "types",
]


class Client:
    """A session with one latentops server, authenticated by a personal API token."""

    def __init__(self, server: str | None = None, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        found_server, found_token = from_environment(server, token)
        self.http = Http(found_server, found_token, timeout=timeout, transport=transport)
        self.server = self.http.server
        self.auth = resources.Auth(self.http)
        self.tokens = resources.Tokens(self.http)
        self.users = resources.Users(self.http)
        self.models = resources.Models(self.http)
        self.jobs = resources.Jobs(self.http)
        self.finetune = resources.Finetune(self.http)
        self.audit = Audit(self.http)
        self.policies = resources.Policies(self.http)
        self.quarantine = resources.Quarantine(self.http)
        self.assets = resources.Assets(self.http)
        self.generations = resources.Generations(self.http)
        self.datasets = resources.Datasets(self.http)
        self.copyright = resources.Copyright(self.http)
        self.screening = resources.Screening(self.http)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
