"""A loopback server speaking the parts of OPA that ``OpaEngine`` uses, evaluated by regopy.

A test fake, not part of the product: no OPA binary installs here, so the tests exercise the OPA
engine path against this server: the same HTTP requests, the same response shapes
(``{"result": ...}``, ``{}`` when undefined, OPA-style errors), evaluated by rego-cpp. REST
endpoints:

* ``GET /health`` (``?bundles``: 500 until every configured bundle is activated, as OPA does)
* ``GET /v1/policies``, ``PUT /v1/policies/<id>`` (text/plain Rego), ``DELETE /v1/policies/<id>``
* ``GET|PUT|DELETE /v1/data/<path>``; ``POST /v1/data/<path>`` with ``{"input": ...}`` evaluates;
  ``?provenance=true`` adds ``provenance.bundles.<name>.revision`` for each activated bundle
* ``POST /v1/query`` with ``{"query": "data.x.y", "input": ...}``

A policy upload that does not compile is refused with 400 and the previous modules stay, as in
OPA. Compilation runs in a child process first, so a compiler crash cannot kill the server.

Bundles (OPA's bundle service protocol, the subset OPA's bundle plugin uses against a plain HTTP
bundle server): given an OPA configuration (``services`` with ``url`` and bearer ``credentials``
from ``token`` or ``token_path``, ``bundles`` with ``service``, ``resource`` and ``polling``
delays; ``${VAR}`` replaced from the environment as ``opa run`` does), a thread per bundle
downloads ``<service url>/<resource>`` at a random delay between ``min_delay_seconds`` and
``max_delay_seconds``, sending the last ``ETag`` as ``If-None-Match``. ``304`` keeps the bundle;
``200`` is read (``.manifest`` revision and roots, ``*.rego``, ``data.json`` at their folder's
path) and activated only if it compiles, replacing the previous bundle's modules and the data
under its roots; any failure keeps the previous bundle and is kept in ``bundle_status``. While a
bundle is active, REST writes under its roots are refused with 400 ("path ... is owned by bundle
..."), as OPA refuses them. Not implemented (refused in the configuration): signing, persistence,
long polling, discovery, OCI services, status and decision-log reporting. OPA retries a failed
download with exponential backoff; this server simply waits the next polling delay.

Start it with ``OpaCompatServer().start()`` (port 0 picks a free port), or
``OpaCompatServer(config=load_config(path, env)).start()`` to pull bundles; ``.url`` is its address.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import random
import re
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from latentops.governance.native import load_regopy
from latentops.governance.policy_engine import CompileError, compile_check

log = logging.getLogger(__name__)

_RULE_HEAD = re.compile(r"^(\w+)\s*(?::=|=|if\b|contains\b|\{)", re.MULTILINE)
_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)
_ENV_REFERENCE = re.compile(r"\$\{(\w+)\}")
VERSION = "opa-compat"


# --- configuration -------------------------------------------------------------------------------


class ConfigError(ValueError):
    """The OPA configuration is malformed or asks for something this server does not implement."""


@dataclass(frozen=True)
class BundleSource:
    """Where one bundle comes from and how often it is polled."""

    name: str
    url: str
    token: str = ""
    token_path: str = ""
    scheme: str = "Bearer"
    min_delay_s: float = 60.0
    max_delay_s: float = 120.0

    def authorization(self) -> str | None:
        """The ``Authorization`` header; a ``token_path`` file is read on every request, as OPA does."""
        token = self.token
        if self.token_path:
            token = Path(self.token_path).read_text(encoding="utf-8").strip()
        return f"{self.scheme} {token}" if token else None


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` replaced by the variable's value, an unset one by "" (as ``opa run`` does)."""
    return _ENV_REFERENCE.sub(lambda match: env.get(match.group(1), ""), text)


def load_config(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Read an OPA configuration file (YAML or JSON) with environment variables substituted."""
    import yaml

    document = yaml.safe_load(substitute_env(path.read_text(encoding="utf-8"), env))
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: an OPA configuration must be a mapping")
    return document


def _only(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)} not supported by opa-compat (supported: {', '.join(sorted(allowed))})")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    return value


def bundle_sources(config: Mapping[str, Any]) -> list[BundleSource]:
    """The bundles an OPA configuration pulls; anything outside the implemented subset is refused."""
    _only(config, {"services", "bundles"}, "config")
    services = _mapping(config.get("services", {}), "services")
    sources = []
    for name, raw in _mapping(config.get("bundles", {}), "bundles").items():
        bundle = _mapping(raw, f"bundles.{name}")
        _only(bundle, {"service", "resource", "polling"}, f"bundles.{name}")
        service_name = str(bundle.get("service", ""))
        if service_name not in services:
            raise ConfigError(f"bundles.{name}.service: {service_name!r} is not in services")
        service = _mapping(services[service_name], f"services.{service_name}")
        _only(service, {"url", "credentials"}, f"services.{service_name}")
        url = str(service.get("url", ""))
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"services.{service_name}.url: {url!r} is not an http(s) URL")
        credentials = _mapping(service.get("credentials", {}), f"services.{service_name}.credentials")
        _only(credentials, {"bearer"}, f"services.{service_name}.credentials")
        bearer = _mapping(credentials.get("bearer", {}), f"services.{service_name}.credentials.bearer")
        _only(bearer, {"token", "token_path", "scheme"}, f"services.{service_name}.credentials.bearer")
        if bearer.get("token") and bearer.get("token_path"):
            raise ConfigError(f"services.{service_name}.credentials.bearer: give either token or token_path")
        polling = _mapping(bundle.get("polling", {}), f"bundles.{name}.polling")
        _only(polling, {"min_delay_seconds", "max_delay_seconds"}, f"bundles.{name}.polling")
        low, high = float(polling.get("min_delay_seconds", 60)), float(polling.get("max_delay_seconds", 120))
        if not 0 < low <= high:
            raise ConfigError(f"bundles.{name}.polling: need 0 < min_delay_seconds <= max_delay_seconds, got {low} and {high}")
        resource = str(bundle.get("resource", f"bundles/{name}"))
        sources.append(BundleSource(
            name=str(name), url=f"{url.rstrip('/')}/{resource.lstrip('/')}", token=str(bearer.get("token", "")),
            token_path=str(bearer.get("token_path", "")), scheme=str(bearer.get("scheme", "Bearer")),
            min_delay_s=low, max_delay_s=high,
        ))
    return sources


# --- bundle files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFiles:
    revision: str
    roots: list[str]
    modules: dict[str, str]  # path inside the bundle -> source
    data: dict[str, Any]


def _under(path: list[str], roots: list[str]) -> bool:
    """Whether ``path`` lies under one of ``roots`` ("a/b" style; "" is the whole tree)."""
    return any(root == "" or path[: len(root.split("/"))] == root.split("/") for root in roots)


def read_bundle(content: bytes) -> BundleFiles:
    """Parse a ``.tar.gz`` bundle; ``ValueError`` names what is wrong."""
    manifest: dict[str, Any] = {}
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                name = member.name.lstrip("/")
                raw = archive.extractfile(member)
                text = raw.read().decode("utf-8") if raw is not None else ""
                if name == ".manifest":
                    manifest = json.loads(text)
                elif name.endswith(".rego"):
                    modules[name] = text
                elif name == "data.json" or name.endswith("/data.json"):
                    node = data
                    for part in [p for p in name.split("/")[:-1] if p]:
                        node = node.setdefault(part, {})
                    node.update(json.loads(text))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"bundle: not a gzipped tarball ({error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"bundle: a file is not UTF-8 JSON or Rego ({error})") from None
    roots = [str(root).strip("/") for root in manifest.get("roots", [""])]
    for key in data:
        if not _under([key], roots):
            raise ValueError(f"bundle: data at /{key} is outside the manifest roots {roots}")
    for name, source in modules.items():
        package = _PACKAGE.search(source)
        if package is None or not _under(package.group(1).split("."), roots):
            raise ValueError(f"bundle: {name} declares a package outside the manifest roots {roots}")
    return BundleFiles(str(manifest.get("revision", "")), roots, modules, data)


@dataclass
class BundleStatus:
    """What OPA's bundle status reports, for one bundle."""

    name: str
    revision: str = ""
    etag: str = ""
    activated: bool = False
    last_error: str = ""
    downloads: int = 0
    not_modified: int = 0
    failures: int = 0
    activations: int = 0


@dataclass
class _Active:
    revision: str
    roots: list[str]
    module_ids: set[str] = field(default_factory=set)


# --- state ---------------------------------------------------------------------------------------


class _State:
    """Modules, data and the compiled interpreter; rebuilt lazily after each change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.bundles: dict[str, _Active] = {}
        self._compiled: tuple[Any, Any, set[str]] | None = None

    def entrypoints(self, modules: dict[str, str]) -> list[str]:
        found: set[str] = set()
        for source in modules.values():
            package = _PACKAGE.search(source)
            if package:
                prefix = package.group(1).replace(".", "/")
                found.update(f"{prefix}/{name}" for name in _RULE_HEAD.findall(source) if name not in {"package", "import", "default"})
        return sorted(found)

    def owner(self, path: list[str]) -> str | None:
        """The bundle owning ``path`` or a path under it (a write there would change the bundle's data)."""
        for name, active in self.bundles.items():
            for root in active.roots:
                parts = root.split("/") if root else []
                if path[: len(parts)] == parts or parts[: len(path)] == path:
                    return name
        return None

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

    def activate(self, name: str, files: BundleFiles) -> None:
        """Make ``files`` bundle ``name``: compiled with everything else first, swapped in at once."""
        with self.lock:
            previous = self.bundles.get(name)
            modules = {k: v for k, v in self.modules.items() if previous is None or k not in previous.module_ids}
            data = copy.deepcopy(self.data)
        for root in (previous.roots if previous else []) + files.roots:
            _erase(data, root)
        for key, value in files.data.items():
            data[key] = copy.deepcopy(value)
        ids = {f"{name}/{path}": source for path, source in files.modules.items()}
        modules.update(ids)
        entrypoints = self.entrypoints(modules) or ["x"]
        compile_check(modules, data, entrypoints)  # CompileError: the previous bundle stays
        try:  # as OPA compiles on activation, not on the first query
            compiled = _build(modules, data, set(entrypoints))
        except Exception as error:  # noqa: BLE001 - regopy.RegoError, which only exists once regopy is loaded
            raise CompileError(f"the bundle did not build: {str(error)[:500]}") from None
        with self.lock:
            self.modules, self.data, self._compiled = modules, data, compiled
            self.bundles[name] = _Active(files.revision, files.roots, set(ids))

    def provenance(self) -> dict[str, Any]:
        return {"version": VERSION, "bundles": {name: {"revision": a.revision} for name, a in sorted(self.bundles.items())}}

    def compile(self) -> None:
        """Build the interpreter for every rule now, as OPA does when a policy is stored (this server
        otherwise builds it on the first query after a change)."""
        if self._compiled is None and self.modules:
            self._compiled = _build(self.modules, self.data, set(self.entrypoints(self.modules)))

    def evaluate(self, path: list[str], input: Any) -> tuple[bool, Any]:
        """``(defined, value)`` of ``data.<path>`` with ``input``."""
        packages = [match.group(1).split(".") for match in map(_PACKAGE.search, self.modules.values()) if match]
        if not path or not any(p[: len(path)] == path or path[: len(p)] == p for p in packages):
            return self._data_at(path)  # no rule can be at or under this path: plain data
        regopy = load_regopy()
        from regopy.rego_shared import (
            rego_bundle_query_entrypoint,
            rego_free_output,
            rego_output_ok,
            rego_output_string,
        )

        entry = "/".join(path)
        if self._compiled is None or entry not in self._compiled[2]:
            entrypoints = set(self.entrypoints(self.modules)) | {entry} | (self._compiled[2] if self._compiled else set())
            try:
                self._compiled = _build(self.modules, self.data, entrypoints)
            except regopy.RegoError:
                return self._data_at(path)
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


def _build(modules: dict[str, str], data: dict[str, Any], entrypoints: set[str]) -> tuple[Any, Any, set[str]]:
    """An interpreter with ``modules`` and ``data`` built for ``entrypoints`` (raises ``RegoError``)."""
    regopy = load_regopy()
    interpreter = regopy.Interpreter()
    for name, source in modules.items():
        interpreter.add_module(name, source)
    interpreter.add_data_json(json.dumps(data))
    return interpreter, interpreter.build(None, sorted(entrypoints)), entrypoints


def _erase(data: dict[str, Any], root: str) -> None:
    if not root:
        data.clear()
        return
    *parents, last = root.split("/")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


# --- bundle polling ------------------------------------------------------------------------------


class _Downloader:
    """Polls one bundle source on a thread until stopped."""

    def __init__(self, state: _State, source: BundleSource, stop: threading.Event) -> None:
        self.state, self.source, self.stop = state, source, stop
        self.status = BundleStatus(source.name)
        self.thread = threading.Thread(target=self._run, name=f"opa-compat-bundle-{source.name}", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 - the poller must outlive any one bad answer, as OPA's does
                self._failed(f"{type(error).__name__}: {error}")
            self.stop.wait(random.uniform(self.source.min_delay_s, self.source.max_delay_s))

    def _failed(self, message: str) -> None:
        self.status.failures += 1
        self.status.last_error = message
        log.warning("opa-compat: bundle %s: %s", self.source.name, message)

    def poll(self) -> None:
        import httpx

        headers = {"Accept": "application/gzip"}
        if self.status.etag:
            headers["If-None-Match"] = self.status.etag
        try:
            authorization = self.source.authorization()
        except OSError as error:
            return self._failed(f"credentials: cannot read {self.source.token_path}: {error}")
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = httpx.get(self.source.url, headers=headers, timeout=10.0)
        except httpx.HTTPError as error:
            return self._failed(f"download from {self.source.url}: {type(error).__name__}: {error}")
        if response.status_code == 304:
            self.status.not_modified += 1
            self.status.last_error = ""
            return None
        if response.status_code != 200:
            return self._failed(f"server replied with HTTP {response.status_code}: {response.text[:300]}")
        self.status.downloads += 1
        try:
            files = read_bundle(response.content)
            self.state.activate(self.source.name, files)
        except (ValueError, CompileError) as error:
            return self._failed(f"bundle {self.source.name} not activated: {error}")
        self.status.revision, self.status.etag = files.revision, response.headers.get("etag", "")
        self.status.activated, self.status.last_error = True, ""
        self.status.activations += 1
        log.info("opa-compat: bundle %s activated revision %s", self.source.name, files.revision)
        return None


# --- HTTP ----------------------------------------------------------------------------------------


def _owned(name: str, path: str) -> dict[str, str]:
    return {"code": "invalid_parameter", "message": f'path {path} is owned by bundle "{name}"'}


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

    def _flag(self, name: str) -> bool:
        values = parse_qs(urlsplit(self.path).query, keep_blank_values=True).get(name)
        return values is not None and values[-1].lower() in {"", "true", "1"}

    def _result(self, defined: bool, value: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"result": value} if defined else {}
        if self._flag("provenance"):
            body["provenance"] = self.server.state.provenance()
        return body

    def _refuse_owned(self, path: list[str]) -> bool:
        owner = self.server.state.owner(path)
        if owner is None:
            return False
        self._send(400, _owned(owner, "/" + "/".join(path)))
        return True

    def _refuse_owned_policy(self, name: str, source: str | None) -> bool:
        state = self.server.state
        for bundle, active in state.bundles.items():
            if name in active.module_ids:
                self._send(400, {"code": "invalid_parameter", "message": f'policy {name} is owned by bundle "{bundle}"'})
                return True
        package = _PACKAGE.search(source or "")
        return package is not None and self._refuse_owned(package.group(1).split("."))

    def do_GET(self) -> None:
        state = self.server.state
        if self.path.startswith("/health"):
            if self._flag("bundles"):
                missing = [d.source.name for d in self.server.downloaders if not d.status.activated]
                if missing:
                    return self._send(500, {"error": f"bundle(s) not activated: {', '.join(missing)}"})
            return self._send(200, {})
        with state.lock:
            if self.path.startswith("/v1/policies"):
                return self._send(200, {"result": [{"id": k, "raw": v} for k, v in state.modules.items()]})
            if self.path.startswith("/v1/data"):
                return self._send(200, self._result(*state.evaluate(self._parts("/v1/data"), None)))
        self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_PUT(self) -> None:
        state = self.server.state
        with state.lock:
            if self.path.startswith("/v1/policies/"):
                name = "/".join(self._parts("/v1/policies"))
                source = self._body().decode()
                if self._refuse_owned_policy(name, source):
                    return None
                try:
                    state.put_module(name, source)
                except CompileError as error:
                    return self._send(400, {"code": "invalid_parameter", "message": "error(s) occurred while compiling module(s)",
                                            "errors": [{"code": "rego_compile_error", "message": str(error)}]})
                return self._send(200, {})
            if self.path.startswith("/v1/data"):
                path = self._parts("/v1/data")
                if self._refuse_owned(path):
                    return None
                try:
                    state.set_data(path, self._json_body())
                except ValueError as error:
                    return self._send(400, {"code": "invalid_parameter", "message": str(error)})
                return self._send(204)
        self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_DELETE(self) -> None:
        state = self.server.state
        with state.lock:
            if self.path.startswith("/v1/policies/"):
                name = "/".join(self._parts("/v1/policies"))
                if self._refuse_owned_policy(name, None):
                    return None
                if state.modules.pop(name, None) is None:
                    return self._send(404, {"code": "resource_not_found", "message": f"storage_not_found_error: policy id {name!r}"})
                state._compiled = None
                return self._send(200, {})
            if self.path.startswith("/v1/data"):
                path = self._parts("/v1/data")
                if self._refuse_owned(path):
                    return None
                return self._send(204 if state.delete_data(path) else 404)
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
                    return self._send(200, self._result(*state.evaluate(self._parts("/v1/data"), body.get("input"))))
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
        self.downloaders: list[_Downloader] = []


class OpaCompatServer:
    """Run the server on a background thread (and one thread per configured bundle); ``stop()`` ends them."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, config: Mapping[str, Any] | None = None) -> None:
        sources = bundle_sources(config) if config is not None else []
        self._server = _Server((host, port))
        self._stop = threading.Event()
        self._server.downloaders = [_Downloader(self._server.state, source, self._stop) for source in sources]
        self._thread = threading.Thread(target=self._server.serve_forever, name="opa-compat", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def compile(self) -> None:
        """Build the interpreter for the stored policies now. OPA compiles when a policy is stored;
        this server waits for the first query, which on a slow machine can outlast a decision's
        2 s timeout. Call it after loading policies through the API when decisions are timed."""
        with self._server.state.lock:
            self._server.state.compile()

    def bundle_status(self, name: str) -> BundleStatus:
        """A copy of the named bundle's status (revision, ETag, counts, last error)."""
        for downloader in self._server.downloaders:
            if downloader.source.name == name:
                return copy.copy(downloader.status)
        raise KeyError(f"bundle {name!r} is not configured")

    def wait_for_revision(self, name: str, revision: str, timeout_s: float) -> BundleStatus:
        """Block until bundle ``name`` is at ``revision``; ``TimeoutError`` with its status otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.bundle_status(name)
            if status.activated and status.revision == revision:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"bundle {name} is at {status.revision or 'no revision'}, not {revision}: {status}")
            time.sleep(0.05)

    def start(self) -> OpaCompatServer:
        load_regopy()  # loads torch first (see latentops.governance.native): seconds, so before serving
        self._thread.start()
        for downloader in self._server.downloaders:
            downloader.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for downloader in self._server.downloaders:
            if downloader.thread.is_alive():
                downloader.thread.join(timeout=15)
