"""HTTP hardening as pure ASGI middleware: security headers on every response and a request body limit.

Headers: a Content-Security-Policy that allows only this origin's scripts, styles and images
(the portal vendors htmx; nothing loads from a CDN), ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY`` against clickjacking, ``nosniff``, a same-origin referrer policy and
``no-store`` on API answers.

The API documentation pages (``/api/docs``, ``/api/redoc``) get their own policy: this origin's
scripts only, inline styles (ReDoc's and Swagger UI's components set them), a blob: worker
(ReDoc's search) and nothing from any other origin.

Forwarded headers: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from a direct
peer inside ``trusted_proxies`` (addresses or CIDR networks; none by default). The client is then
the right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy, so a client
cannot choose its own address by sending the header (the login throttle counts per address).

Body limit: a request whose ``Content-Length`` exceeds ``max_upload_bytes`` is refused with 413
before the application reads it; a chunked body is counted as it arrives and refused the same way
when it passes the limit, so nothing of it is stored.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'")
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; worker-src blob:; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")
DOCS_PATHS = ("/api/docs", "/api/redoc")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        api = path.startswith("/api/")
        fixed = HEADERS
        if path.startswith(DOCS_PATHS):
            fixed = [(b"content-security-policy", DOCS_CSP.encode()), *HEADERS[1:]]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in {h for h, _ in HEADERS}]
                headers += fixed
                if api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = value.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_trusted(host: str | None, networks: tuple[Network, ...]) -> bool:
    address = _address(host) if host else None
    return address is not None and any(address in network for network in networks)


def forwarded_client(peer: str, forwarded_for: str, networks: tuple[Network, ...]) -> str:
    """The client behind trusted proxies: walking ``X-Forwarded-For`` from the right, the first
    address that is not a trusted proxy (the last hop a trusted proxy vouched for). ``peer`` itself
    must be trusted. Unparsable entries end the walk at the last trusted hop."""
    client = peer
    for hop in reversed([part for part in forwarded_for.split(",") if part.strip()]):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not any(address in network for network in networks):
            break
    return client


class TrustedProxyMiddleware:
    """Takes the client address and scheme from forwarded headers only when the peer is a trusted proxy."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.networks = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or not self.networks:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        if peer and is_trusted(peer[0], self.networks):
            forwarded: list[bytes] = []
            proto = None
            for name, value in scope.get("headers", []):
                if name == b"x-forwarded-for":
                    forwarded.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip().lower()
            scope = dict(scope)
            if forwarded:
                scope["client"] = (forwarded_client(peer[0], b",".join(forwarded).decode("latin-1"), self.networks), 0)
            if proto in {"http", "https"}:
                scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


def _error_body(limit: int) -> bytes:
    return json.dumps({"error": "payload_too_large",
                       "detail": f"request body: larger than the limit of {limit} bytes (LATENTOPS_MAX_UPLOAD_BYTES)",
                       "reasons": [{"limit_bytes": limit}]}).encode()


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = _error_body(self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(send)
                return
        state: MutableMapping[str, Any] = {"seen": 0, "over": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(send)
                return  # drop whatever the application answered to a body it could not read
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                state["started"] = True
                await self._refuse(send)
