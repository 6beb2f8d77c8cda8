"""Policy engines behind one interface, and the embedded one: rego-cpp (regopy) in process.

``Engine.load(bundle)`` makes a bundle the one in force; ``Engine.evaluate(path, input)``
returns the decision document ``{"allow": bool, "deny": [{"rule_id", "reason"}]}`` or raises
``EngineUnavailable``. Callers treat ``EngineUnavailable`` as a deny (fail closed): an engine
error, a timeout, an undefined result, a malformed result or an unreachable server all raise it.

The embedded engine compiles a bundle in a child process first and evaluates every entry point
there once with an empty input: rego-cpp aborts the whole process on some policies (``with input
as`` over partial rules, for one), and a policy file that crashes it must not take the API or a
worker down with it. A crash that only some inputs trigger is not caught this way; the policies
avoid the constructs known to crash (see docs/policy.md).

The OPA server engine (``policy_opa.OpaEngine``) implements the same interface.

Known rego-cpp gaps the policies avoid (pinned by tests/test_policy_conformance.py): ``sprintf``
``%q`` returns the format unchanged and ``%s`` quotes computed strings; regex inline flags such
as ``(?i)`` give undefined; ``net.cidr_contains`` is undefined; a ``default`` rule queried
directly gives undefined; input set as a Python value loses string escaping in the output
(the embedded engine sets input holding such strings as a JSON term, see ``_value_input``);
lookups with a variable key scan the whole object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from latentops.governance.native import load_regopy
from latentops.governance.policy_bundle import PolicyBundle, package_of

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0


class EngineUnavailable(Exception):
    """The engine could not produce a usable decision; the caller denies."""


class CompileError(Exception):
    """A bundle's modules do not compile; the message says where."""


class Engine(Protocol):
    name: str

    def load(self, bundle: PolicyBundle) -> None: ...

    def evaluate(self, path: str, input: dict[str, Any]) -> dict[str, Any]: ...

    def query_test(self, package: str, rule: str) -> bool: ...


def check_decision(document: Any) -> dict[str, Any]:
    """Accept only ``{"allow": bool, "deny": [{"rule_id": str, "reason": str}, ...]}``."""
    if not isinstance(document, dict) or not isinstance(document.get("allow"), bool) or not isinstance(document.get("deny"), list):
        raise EngineUnavailable(f"malformed decision document: {str(document)[:200]}")
    for item in document["deny"]:
        if not isinstance(item, dict) or not isinstance(item.get("rule_id"), str) or not isinstance(item.get("reason"), str):
            raise EngineUnavailable(f"malformed violation in decision: {str(item)[:200]}")
    return document


# --- embedded (regopy) ---------------------------------------------------------------------------

_CHECK_SCRIPT = """
import json, sys
import regopy
payload = json.load(sys.stdin)
rego = regopy.Interpreter()
try:
    for name, source in payload["modules"].items():
        rego.add_module(name, source)
    rego.add_data_json(json.dumps(payload["data"]))
    bundle = rego.build(None, payload["entrypoints"])
    if not bundle.ok():
        raise RuntimeError("build failed")
    # Evaluate every entry point once: some rego-cpp crashes happen at evaluation, not compilation.
    rego.set_input_term("{}")
    for entrypoint in payload["entrypoints"]:
        from regopy.rego_shared import rego_bundle_query_entrypoint, rego_free_output
        rego_free_output(rego_bundle_query_entrypoint(rego._impl, bundle._impl, entrypoint))
except Exception as error:
    print(str(error)[:4000])
    sys.exit(3)
"""


# The bundles (modules, data and entry points, as hashed) that this process saw compile and evaluate
# in a child: compiling is deterministic, so a bundle loaded again (a reload, another service) is not
# checked again.
_CHECKED: set[str] = set()


def compile_check(modules: dict[str, str], data: dict[str, Any], entrypoints: list[str], *, timeout_s: float = 60.0) -> None:
    """Compile in a child process; raise ``CompileError`` on an error or a compiler crash."""
    payload = json.dumps({"modules": modules, "data": data, "entrypoints": entrypoints})
    key = hashlib.sha256(payload.encode()).hexdigest()
    if key in _CHECKED:
        return
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK_SCRIPT], input=payload, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise CompileError(f"compiling the policies took longer than {timeout_s:.0f} s") from None
    if done.returncode == 0:
        _CHECKED.add(key)
        return
    detail = (done.stdout or done.stderr).strip()
    if done.returncode < 0:
        detail = f"the Rego compiler crashed (signal {-done.returncode}): {done.stderr.strip()[-500:]}"
    raise CompileError(_first_error(detail))


def _first_error(detail: str) -> str:
    """rego-cpp prints a readable block, then an AST dump; keep the readable part."""
    readable = detail.split("(rego-errorseq")[0].strip()
    return readable[:2000] or detail[:2000]


@dataclass
class _Compiled:
    interpreter: Any
    bundle: Any
    entrypoints: set[str]


class _NotAValue(Exception):
    """The input holds something the value path does not carry faithfully; use a JSON term."""


_INT64 = (-(2**63), 2**63 - 1)
# Characters JSON must escape: on the value path rego-cpp writes them raw into its output.
_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def _value_input(value: Any) -> int:
    """``value`` as a rego-cpp input handle, built by direct C calls; the caller frees it.

    What ``regopy.Input`` does, without a ``ctypes`` string buffer per string and without a
    separate walk over the input first: a string holding ``"``, ``\\`` or a control character
    (whose escaping the value path loses, so the output would not be JSON), an integer beyond
    64 bits or a type JSON does not have raises ``_NotAValue``, and the caller sets the input
    as a JSON term instead.
    """
    from regopy.rego_shared import rego as lib

    handle = lib.regoNewInput()

    def add(item: Any) -> int:
        if item is True or item is False:
            return int(lib.regoInputBoolean(handle, item))
        if isinstance(item, str):
            if _ESCAPED.search(item):
                raise _NotAValue
            return int(lib.regoInputString(handle, item.encode()))
        if isinstance(item, int):
            if not _INT64[0] <= item <= _INT64[1]:
                raise _NotAValue
            return int(lib.regoInputInt(handle, item))
        if isinstance(item, float):
            return int(lib.regoInputFloat(handle, item))
        if item is None:
            return int(lib.regoInputNull(handle))
        if isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):
                    raise _NotAValue
                if add(key) or add(member) or lib.regoInputObjectItem(handle):
                    raise _NotAValue
            return int(lib.regoInputObject(handle, len(item)))
        if isinstance(item, list | tuple | set | frozenset):
            for member in item:
                if add(member):
                    raise _NotAValue
            size = len(item)
            return int(lib.regoInputArray(handle, size) if isinstance(item, list | tuple) else lib.regoInputSet(handle, size))
        raise _NotAValue

    try:
        if add(value):
            raise _NotAValue
    except BaseException:
        lib.regoFreeInput(handle)
        raise
    return int(handle)


_DATA_REFERENCE = re.compile(r"\bdata\.latentops\b(\.(\w+))?")


def modules_for(path: str, modules: dict[str, str]) -> dict[str, str]:
    """The modules a query of ``latentops.<path>`` can reach: its own package's and, transitively,
    every ``latentops`` package referenced as ``data.latentops.<name>``; modules outside
    ``latentops`` always. A reference to ``data.latentops`` without a package name (a dynamic
    key or the whole tree) keeps every module.

    rego-cpp's query cost grows with the rules compiled into the interpreter, so each path's
    interpreter gets only these (the full bundle is still compiled and checked as a whole).
    """
    by_package: dict[str, list[str]] = {}
    for name, source in modules.items():
        package = package_of(source)
        top = package.split(".")[1] if package.startswith("latentops.") else ""
        by_package.setdefault(top, []).append(name)
    root = path.split(".")[0]
    wanted, pending = {"", root}, [root]
    while pending:
        for name in by_package.get(pending.pop(), []):
            for match in _DATA_REFERENCE.finditer(modules[name]):
                if match.group(2) is None:
                    return dict(modules)
                if match.group(2) not in wanted:
                    wanted.add(match.group(2))
                    pending.append(match.group(2))
    return {name: source for name, source in modules.items() if any(name in by_package.get(p, []) for p in wanted)}


class EmbeddedEngine:
    """rego-cpp in process. One interpreter per bundle; calls are serialised (it is not thread-safe)."""

    name = "embedded"

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, isolate_compile: bool = True) -> None:
        self.timeout_s = timeout_s
        self.isolate_compile = isolate_compile
        self._lock = threading.Lock()
        # One interpreter per path: a query's fixed cost grows with the entry points a bundle has.
        self._compiled: dict[str, _Compiled] = {}
        self._tests: _Compiled | None = None
        self._bundle: PolicyBundle | None = None

    @staticmethod
    def _compile(modules: dict[str, str], data: dict[str, Any], entrypoints: list[str]) -> _Compiled:
        regopy = load_regopy()

        interpreter = regopy.Interpreter()
        try:
            for name, source in modules.items():
                interpreter.add_module(name, source)
            interpreter.add_data_json(json.dumps(data))
            built = interpreter.build(None, entrypoints)
        except regopy.RegoError as error:
            raise CompileError(_first_error(str(error))) from None
        if not built.ok():
            raise CompileError("the policy bundle did not build")
        return _Compiled(interpreter, built, set(entrypoints))

    def load(self, bundle: PolicyBundle, *, for_tests: bool = False) -> None:
        """Make ``bundle`` the one in force. ``for_tests``: compile only what ``query_test`` runs (the
        modules with their tests, one interpreter), not the per-path interpreters decisions use."""
        entrypoints = [bundle.entrypoint(path) for path in bundle.paths]
        if self.isolate_compile:
            compile_check(bundle.modules, bundle.data, entrypoints)
        compiled = {} if for_tests else {
            path: self._compile(modules_for(path, bundle.modules), bundle.data, [bundle.entrypoint(path)])
            for path in bundle.paths}
        tests = self._compile_tests(bundle) if for_tests and bundle.test_names() else None
        with self._lock:
            self._compiled, self._tests, self._bundle = compiled, tests, bundle

    def _compile_tests(self, bundle: PolicyBundle) -> _Compiled:
        entrypoints = [f"{package}/{name}" for package, name in bundle.test_names()]
        return self._compile({**bundle.modules, **bundle.tests}, bundle.data, entrypoints)

    def evaluate(self, path: str, input: dict[str, Any]) -> dict[str, Any]:
        load_regopy()
        from regopy.rego_shared import (
            rego_bundle_query_entrypoint,
            rego_free_input,
            rego_free_output,
            rego_output_ok,
            rego_output_string,
            rego_set_input,
        )

        if not self._compiled or self._bundle is None:
            raise EngineUnavailable("no policy bundle is loaded")
        entrypoint = self._bundle.entrypoint(path)
        started = time.perf_counter()
        with self._lock:
            compiled = self._compiled.get(path)
            if compiled is None:
                raise EngineUnavailable(f"no policy for path {path!r}")
            try:
                try:
                    handle = _value_input(input)
                except _NotAValue:
                    compiled.interpreter.set_input_term(json.dumps(input))
                else:
                    try:  # rego-cpp copies the input; the handle is freed at once, as regopy.Input does
                        rego_set_input(compiled.interpreter._impl, handle)
                    finally:
                        rego_free_input(handle)
                output = rego_bundle_query_entrypoint(compiled.interpreter._impl, compiled.bundle._impl, entrypoint)
            except Exception as error:  # noqa: BLE001 - rego-cpp raises RegoError and, on bad input, plain errors
                raise EngineUnavailable(f"evaluation failed: {error}") from None
            try:
                ok, text = rego_output_ok(output), rego_output_string(output)
            finally:
                rego_free_output(output)
        if time.perf_counter() - started > self.timeout_s:
            raise EngineUnavailable(f"evaluation took longer than {self.timeout_s} s")
        if not ok:
            raise EngineUnavailable(f"evaluation error: {_first_error(text)[:500]}")
        if text == "undefined":
            raise EngineUnavailable(f"decision for {path!r} is undefined")
        try:
            expressions = json.loads(text)["expressions"]
        except (ValueError, KeyError, TypeError):
            raise EngineUnavailable("the engine returned output that is not valid JSON") from None
        return check_decision(expressions[0] if expressions else None)

    def query_test(self, package: str, rule: str) -> bool:
        """Run one Rego test (``package`` like ``latentops/prompt_test``); true when it passes."""
        from regopy.rego_shared import (
            rego_bundle_query_entrypoint,
            rego_free_output,
            rego_output_ok,
            rego_output_string,
        )

        if self._bundle is None:
            raise EngineUnavailable("no policy bundle is loaded")
        with self._lock:
            if self._tests is None:
                self._tests = self._compile_tests(self._bundle)
            output = rego_bundle_query_entrypoint(self._tests.interpreter._impl, self._tests.bundle._impl, f"{package}/{rule}")
            try:
                ok, text = rego_output_ok(output), rego_output_string(output)
            finally:
                rego_free_output(output)
        if not ok:
            raise EngineUnavailable(_first_error(text)[:500])
        return text == '{"expressions":[true]}'
