"""Request limits at the boundary and the last-resort error answer.

``JsonLimitMiddleware`` reads every JSON request body (``application/json``, ``application/*+json``,
or a body without a content type, which FastAPI parses as JSON) before the application does and
refuses it, in the one error shape ``{error, detail, reasons}``, when it is

* larger than ``max_json_bytes``: 413 ``payload_too_large`` (the HTTP status for a body too large,
  as for uploads, whose own limit is ``max_upload_bytes``);
* nested deeper than ``max_json_depth`` arrays and objects: 422 ``invalid_input``.

The depth is counted without parsing (strings removed, brackets counted), so a body of a million
``[`` costs a scan, not a ``RecursionError`` in the JSON parser, the validators or the policy
engine. ``json_depth`` and ``loads`` give code that parses JSON from a form field the same limit.

``LastResortMiddleware`` answers any exception that no handler took with 500 in the same shape
(an HTML page for the portal), logged with its traceback; without it Starlette sends a plain-text
"Internal Server Error".
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# +1 for an opening bracket, -1 for a closing one, by byte value
_STEP = [0] * 256
for _byte in b"[{":
    _STEP[_byte] = 1
for _byte in b"]}":
    _STEP[_byte] = -1


def json_depth(text: bytes | str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (0 for a scalar); no parsing, no recursion."""
    raw = text.encode() if isinstance(text, str) else text
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def depth_error(field: str, limit: int) -> dict[str, Any]:
    return {"error": "invalid_input",
            "detail": f"{field}: JSON nested deeper than the limit of {limit} levels (LATENTOPS_MAX_JSON_DEPTH)",
            "reasons": [{"field": field, "limit": "max_json_depth", "max_depth": limit}]}


def size_error(limit: int) -> dict[str, Any]:
    return {"error": "payload_too_large",
            "detail": f"request body: JSON larger than the limit of {limit} bytes (LATENTOPS_MAX_JSON_BYTES)",
            "reasons": [{"field": "body", "limit": "max_json_bytes", "limit_bytes": limit}]}


def loads(text: str, *, field: str, max_depth: int) -> Any:
    """``json.loads`` for JSON taken from a form field: refuses deeper nesting than ``max_depth``
    with ``InvalidInput`` naming ``field`` before parsing (a ``JSONDecodeError`` passes through)."""
    from latentops.core.errors import InvalidInput

    if json_depth(text) > max_depth:
        problem = depth_error(field, max_depth)
        raise InvalidInput(problem["detail"], reasons=problem["reasons"])
    return json.loads(text)


def is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse this request's body as JSON."""
    content_type = b""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            content_type = value
            break
    media = content_type.split(b";", 1)[0].strip().lower()
    if not media:
        return True
    maintype, _, subtype = media.partition(b"/")
    return maintype == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class JsonLimitMiddleware:
    """Refuses JSON bodies over ``max_bytes`` (413) or nested deeper than ``max_depth`` (422)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in {"GET", "HEAD", "OPTIONS", "DELETE"} or not is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_json(send, 413, size_error(self.max_bytes), [(b"connection", b"close")])
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if json_depth(body) > self.max_depth:
            await send_json(send, 422, depth_error("body", self.max_depth))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


INTERNAL_ERROR = {"error": "internal_error", "detail": "the server failed to answer this request; the error is logged",
                  "reasons": []}


class LastResortMiddleware:
    """Any exception that reaches it becomes a logged 500 in the one error shape (HTML for portal pages)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:  # the last resort: every unhandled error, logged with its traceback
            log.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # the answer is under way: the server closes the connection
            await send_error(scope, send)


async def send_error(scope: Scope, send: Send) -> None:
    """The 500 answer: JSON for the API, the portal's error page for pages."""
    path = str(scope.get("path", ""))
    if path.startswith("/api/") or path == "/metrics":
        await send_json(send, 500, INTERNAL_ERROR)
        return
    from starlette.requests import Request

    from latentops.platform.web import portal

    try:
        page = portal.error_page(Request(scope), 500, str(INTERNAL_ERROR["error"]), str(INTERNAL_ERROR["detail"]), [])
    except Exception:  # the page itself failed: the JSON answer still goes out
        log.exception("the error page failed to render")
        await send_json(send, 500, INTERNAL_ERROR)
        return
    await page(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
