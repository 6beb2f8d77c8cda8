"""A loopback server speaking the parts of OPA's REST API that ``OpaEngine`` uses, evaluated by regopy.

No OPA binary installs here, so the OPA engine path is exercised against this server: the same
HTTP requests, the same response shapes (``{"result": ...}``, ``{}`` when undefined, OPA-style
errors), evaluated by rego-cpp. Endpoints:

* ``GET /health``
* ``GET /v1/policies``, ``PUT /v1/policies/<id>`` (text/plain Rego), ``DELETE /v1/policies/<id>``
* ``GET|PUT|DELETE /v1/data/<path>``; ``POST /v1/data/<path>`` with ``{"input": ...}`` evaluates
* ``POST /v1/query`` with ``{"query": "data.x.y", "input": ...}``

A policy upload that does not compile is refused with 400 and the previous modules stay, as in
OPA. Compilation runs in a child process first, so a compiler crash cannot kill the server.
Start it with ``OpaCompatServer().start()`` (port 0 picks a free port); ``.url`` is its address.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from latentops.governance.native import load_regopy
from latentops.governance.policy_engine import CompileError, compile_check

log = logging.getLogger(__name__)

_RULE_HEAD = re.compile(r"^(\w+)\s*(?::=|=|if\b|contains\b|\{)", re.MULTILINE)
_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)


class _State:
    """Modules, data and the compiled interpreter; rebuilt lazily after each change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self._compiled: tuple[Any, Any, set[str]] | None = None

    def entrypoints(self, modules: dict[str, str]) -> list[str]:
        found = set()
        for source in modules.values():
            package = _PACKAGE.search(source)
            if package:
                prefix = package.group(1).replace(".", "/")
                found.update(f"{prefix}/{name}" for name in _RULE_HEAD.findall(source) if name not in {"package", "import", "default"})
        return sorted(found)

    def put_module(self, name: str, source: str) -> None:
        modules = {**self.modules, name: source}
        compile_check(modules, self.data, self.entrypoints(modules) or ["x"])
        self.modules, self._compiled = modules, None

    def set_data(self, path: list[str], value: Any) -> None:
        if not path:
            self.data = copy.deepcopy(value)
        else:
            node = self.data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = copy.deepcopy(value)
        self._compiled = None

    def delete_data(self, path: list[str]) -> bool:
        node = self.data
        for part in path[:-1]:
            node = node.get(part, {})
        self._compiled = None
        return node.pop(path[-1], None) is not None if path else False

    def evaluate(self, path: list[str], input: Any) -> tuple[bool, Any]:
        """``(defined, value)`` of ``data.<path>`` with ``input``."""
        regopy = load_regopy()
        from regopy.rego_shared import rego_bundle_query_entrypoint, rego_free_output, rego_output_ok, rego_output_string

        if not path or not self.modules:
            return self._data_at(path)
        entry = "/".join(path)
        if self._compiled is None or entry not in self._compiled[2]:
            entrypoints = sorted(set(self.entrypoints(self.modules)) | {entry} | (self._compiled[2] if self._compiled else set()))
            interpreter = regopy.Interpreter()
            for name, source in self.modules.items():
                interpreter.add_module(name, source)
            interpreter.add_data_json(json.dumps(self.data))
            try:
                bundle = interpreter.build(None, entrypoints)
            except regopy.RegoError:
                return self._data_at(path)
            self._compiled = (interpreter, bundle, set(entrypoints))
        interpreter, bundle, _ = self._compiled
        interpreter.set_input_term(json.dumps(input if input is not None else {}))
        output = rego_bundle_query_entrypoint(interpreter._impl, bundle._impl, entry)
        try:
            ok, text = rego_output_ok(output), rego_output_string(output)
        finally:
            rego_free_output(output)
        if not ok:
            raise RuntimeError(text.split("(rego-errorseq")[0].strip()[:1000])
        if text == "undefined":
            return self._data_at(path)
        return True, json.loads(text)["expressions"][0]

    def _data_at(self, path: list[str]) -> tuple[bool, Any]:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # route http.server's access log to logging
        log.debug("opa-compat: " + format, *args)

    def _send(self, status: int, body: Any = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> Any:
        raw = self._body()
        return json.loads(raw) if raw else {}

    def _parts(self, prefix: str) -> list[str]:
        rest = self.path.split("?")[0][len(prefix):]
        return [p for p in rest.split("/") if p]

    def do_GET(self) -> None:
        state = self.server.state
        if self.path.startswith("/health"):
            return self._send(200, {})
        with state.lock:
            if self.path.startswith("/v1/policies"):
                return self._send(200, {"result": [{"id": k, "raw": v} for k, v in state.modules.items()]})
            if self.path.startswith("/v1/data"):
                defined, value = state.evaluate(self._parts("/v1/data"), None)
                return self._send(200, {"result": value} if defined else {})
        self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_PUT(self) -> None:
        state = self.server.state
        with state.lock:
            if self.path.startswith("/v1/policies/"):
                name = "/".join(self._parts("/v1/policies"))
                try:
                    state.put_module(name, self._body().decode())
                except CompileError as error:
                    return self._send(400, {"code": "invalid_parameter", "message": "error(s) occurred while compiling module(s)",
                                            "errors": [{"code": "rego_compile_error", "message": str(error)}]})
                return self._send(200, {})
            if self.path.startswith("/v1/data"):
                try:
                    state.set_data(self._parts("/v1/data"), self._json_body())
                except ValueError as error:
                    return self._send(400, {"code": "invalid_parameter", "message": str(error)})
                return self._send(204)
        self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_DELETE(self) -> None:
        state = self.server.state
        with state.lock:
            if self.path.startswith("/v1/policies/"):
                name = "/".join(self._parts("/v1/policies"))
                if state.modules.pop(name, None) is None:
                    return self._send(404, {"code": "resource_not_found", "message": f"storage_not_found_error: policy id {name!r}"})
                state._compiled = None
                return self._send(200, {})
            if self.path.startswith("/v1/data"):
                return self._send(204 if state.delete_data(self._parts("/v1/data")) else 404)
        self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_POST(self) -> None:
        state = self.server.state
        try:
            body = self._json_body()
        except ValueError as error:
            return self._send(400, {"code": "invalid_parameter", "message": f"body is not JSON: {error}"})
        with state.lock:
            try:
                if self.path.startswith("/v1/data"):
                    defined, value = state.evaluate(self._parts("/v1/data"), body.get("input"))
                    return self._send(200, {"result": value} if defined else {})
                if self.path.startswith("/v1/query"):
                    query = str(body.get("query", ""))
                    match = re.fullmatch(r"data((?:\.\w+)*)", query.strip())
                    if not match:
                        return self._send(400, {"code": "invalid_parameter", "message": "only data.<path> queries are supported"})
                    defined, value = state.evaluate([p for p in match.group(1).split(".") if p], body.get("input"))
                    return self._send(200, {"result": [{"expressions": [{"value": value}]}] if defined else []})
            except RuntimeError as error:
                return self._send(500, {"code": "internal_error", "message": str(error)})
        self._send(404, {"code": "resource_not_found", "message": self.path})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.state = _State()


class OpaCompatServer:
    """Run the server on a background thread; ``stop()`` shuts it down."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="opa-compat", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpaCompatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
