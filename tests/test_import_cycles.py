"""No two modules of latentops import each other, directly or through others; the portal and the
services never import a route module.

import-linter's ``acyclic_siblings`` contract (``make lint``) cannot see packages without an
``__init__.py`` (``platform/``, ``platform/web/``), so this test looks at every module: it builds
the import graph with grimp (import-linter's own) and lists its strongly connected components.
Imports inside functions count: a lazy import is still a cycle.

Routes (``platform/api`` modules with an ``APIRouter``) and portal pages are both thin callers of
the services: a portal page or a service that imports a route module fails
``test_portal_and_services_never_import_route_modules``, lazily or not.
"""

from __future__ import annotations

import importlib

import grimp
from fastapi import APIRouter

ROOTS = ("latentops.core", "latentops.platform", "latentops.governance", "latentops.pipelines")

# Cycles that exist today, each removed by the change that splits its modules. A cycle may shrink
# or disappear; a cycle with any module outside one of these groups fails the test.
KNOWN: list[set[str]] = []

# The modules under platform/api that define no router (HTTP plumbing): the only ones the portal
# and the services may import.
NON_ROUTE_API_MODULES = {
    "latentops.platform.api.deps",  # the request's session, settings, principal and CSRF check
    "latentops.platform.api.limits",  # request limits, the JSON depth check, the last-resort answer
    "latentops.platform.api.cookies",  # the session cookie, its Secure flag, same-site redirects
}
CALLERS = ("latentops.platform.web", "latentops.platform.services")


def import_cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Every group of two or more modules that import each other (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == module:
                        break
                if len(group) > 1:
                    cycles.append(group)
    return cycles


def test_cycle_finder_sees_a_lazy_import() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "a.one", "a.two", "a.three"):
        graph.add_module(name)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.one")  # e.g. from inside a function
    graph.add_import(importer="a.three", imported="a.one")
    assert import_cycles(graph) == [{"a.one", "a.two"}]


def test_no_new_import_cycles() -> None:
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    assert len(graph.modules) > 100  # the namespace packages were found
    new = [sorted(group) for group in import_cycles(graph) if not any(group <= known for known in KNOWN)]
    assert new == [], f"modules that import each other: {new}"


def route_imports(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """(importer, imported) for each module under ``CALLERS`` that imports a route module."""
    callers = sorted(m for m in graph.modules if any(m == c or m.startswith(f"{c}.") for c in CALLERS))
    return sorted((caller, imported) for caller in callers for imported in graph.find_modules_directly_imported_by(caller)
                  if imported.startswith("latentops.platform.api.") and imported not in NON_ROUTE_API_MODULES)


def test_route_import_finder_sees_a_lazy_import_of_a_route_module() -> None:
    graph = grimp.ImportGraph()
    for name in ("latentops.platform.web.pages", "latentops.platform.services.models", "latentops.platform.api.jobs",
                 "latentops.platform.api.deps"):
        graph.add_module(name)
    graph.add_import(importer="latentops.platform.web.pages", imported="latentops.platform.api.deps")
    graph.add_import(importer="latentops.platform.web.pages", imported="latentops.platform.api.jobs")
    graph.add_import(importer="latentops.platform.services.models", imported="latentops.platform.api.jobs")  # lazy
    assert route_imports(graph) == [("latentops.platform.services.models", "latentops.platform.api.jobs"),
                                    ("latentops.platform.web.pages", "latentops.platform.api.jobs")]


def test_portal_and_services_never_import_route_modules() -> None:
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    assert {"latentops.platform.web.pages", "latentops.platform.web.portal"} <= graph.modules  # the portal was found
    assert route_imports(graph) == [], "portal pages and services call services, never route modules"
    for name in sorted(NON_ROUTE_API_MODULES):
        module = importlib.import_module(name)
        routers = [key for key, value in vars(module).items() if isinstance(value, APIRouter)]
        assert routers == [], f"{name} defines a router ({', '.join(routers)}): it is a route module"
