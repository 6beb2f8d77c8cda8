"""The HTTP core of the SDK: one ``httpx.Client``, bearer authentication and error mapping.

Every answer that is not 2xx carries the API's one error shape ``{error, detail, reasons}``; it
comes back here as the same ``LatentopsError`` subclass the server raised (``NotFound``,
``PolicyDenied`` with its reasons, ``AuthenticationFailed`` for an expired or revoked token, ...),
so code written against the services catches the same family through the SDK. A server that
cannot be reached is ``ServiceUnavailable`` naming the URL.

Tests and embedders may pass an ``httpx`` transport (``httpx.ASGITransport`` over the app, for
example): the network edge is the only thing replaced, as in httpx's own design.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from latentops.core import errors

SERVER_ENV = "LATENTOPS_SERVER"
TOKEN_ENV = "LATENTOPS_TOKEN"
API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT_S = 30.0
NO_TIMEOUT = None  # for answers that take as long as they take (event streams, big downloads)
_CLIENT_DEFAULT: Any = object()  # "the client's timeout", distinct from None ("no timeout")

# Our classes by their stable ``error`` name, plus the few names only HTTP itself produces.
_BY_NAME: dict[str, type[errors.LatentopsError]] = {
    cls.error: cls
    for cls in (errors.InvalidInput, errors.NotFound, errors.Conflict, errors.AuthenticationFailed,
                errors.PolicyDenied, errors.QuotaExceeded, errors.ServiceUnavailable, errors.ConfigurationError,
                errors.IntegrityViolation)
}
_BY_NAME |= {"payload_too_large": errors.InvalidInput, "forbidden": errors.PolicyDenied,
             "method_not_allowed": errors.InvalidInput}
_BY_STATUS: dict[int, type[errors.LatentopsError]] = {
    400: errors.InvalidInput, 401: errors.AuthenticationFailed, 403: errors.PolicyDenied, 404: errors.NotFound,
    409: errors.Conflict, 413: errors.InvalidInput, 422: errors.InvalidInput, 429: errors.QuotaExceeded,
    502: errors.ServiceUnavailable, 503: errors.ServiceUnavailable, 504: errors.ServiceUnavailable,
}


def error_from(response: httpx.Response) -> errors.LatentopsError:
    """The ``LatentopsError`` an error answer describes (its class, detail and reasons)."""
    try:
        body = json.loads(response.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        name = str(body.get("error", ""))
        cls = _BY_NAME.get(name) or _BY_STATUS.get(response.status_code, errors.LatentopsError)
        reasons = body.get("reasons") if isinstance(body.get("reasons"), list) else []
        return cls(body["detail"], reasons=reasons)
    cls = _BY_STATUS.get(response.status_code, errors.LatentopsError)
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    return cls(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} {text}")


class Http:
    """Requests against one server with one token; raises ``LatentopsError`` for every failure."""

    def __init__(self, server: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not server.startswith(("http://", "https://")):
            raise errors.InvalidInput(f"server: expected an http:// or https:// URL, got {server!r}")
        if not token:
            raise errors.AuthenticationFailed(f"token: no API token given (pass one or set {TOKEN_ENV})")
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server + API_PREFIX, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                           "User-Agent": "latentops-client/0.1"})

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, *, stream: bool = False, timeout: float | None = _CLIENT_DEFAULT,
              **kwargs: Any) -> httpx.Response:
        if timeout is not _CLIENT_DEFAULT:
            kwargs["timeout"] = timeout
        try:
            request = self._http.build_request(method, path, **kwargs)
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException:
            raise errors.ServiceUnavailable(f"server {self.server}: {method} {path} timed out") from None
        except httpx.HTTPError as error:
            raise errors.ServiceUnavailable(f"server unreachable at {self.server}: {error}") from None
        if response.is_error:
            try:
                raise error_from(response)
            finally:
                response.close()
        return response

    def json(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
             **kwargs: Any) -> Any:
        """Send a request and return its JSON answer."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        if body is not None:
            kwargs["json"] = body
        response = self._send(method, path, params=clean, **kwargs)
        return response.json()

    @contextmanager
    def stream(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
               timeout: float | None = _CLIENT_DEFAULT) -> Iterator[httpx.Response]:
        """A streamed answer (downloads, Server-Sent Events); closed when the block ends."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._send(method, path, params=clean, stream=True, timeout=timeout)
        try:
            yield response
        finally:
            response.close()


def server_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` pairs of a Server-Sent Events answer; comment lines (keepalives) are skipped."""
    event, data = "message", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    yield event, json.loads(text)
                except json.JSONDecodeError:
                    yield event, text
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def from_environment(server: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Server and token from the arguments, else ``LATENTOPS_SERVER`` and ``LATENTOPS_TOKEN``."""
    found_server = server or os.environ.get(SERVER_ENV, "")
    if not found_server:
        raise errors.InvalidInput(f"server: no server URL given (pass one or set {SERVER_ENV})")
    return found_server, token or os.environ.get(TOKEN_ENV, "")


_FILENAME = re.compile(r'filename="([^"/\\]+)"')
CHUNK = 1024 * 1024


def download(http: Http, path: str, dest: Path, params: dict[str, Any], default_name: str,
              method: str = "GET") -> Path:
    """Stream ``path`` into ``dest`` (a folder takes the server's file name); a partial file is removed."""
    with http.stream(method, path, params=params, timeout=None) as response:
        found = _FILENAME.search(response.headers.get("content-disposition", ""))
        target = dest / (found.group(1) if found else default_name) if dest.is_dir() else dest
        partial = target.with_name(target.name + ".part")
        try:
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes(CHUNK):
                    handle.write(chunk)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return target
