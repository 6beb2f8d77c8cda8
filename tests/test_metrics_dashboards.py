"""Dashboards and alert rules use only metrics the code exports, and every query parses as PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient

from latentops.platform import metrics
from latentops.platform.api.app import create_app

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((REPO / "dashboards" / "grafana").glob("*.json"))
ALERT_FILES = sorted((REPO / "dashboards" / "prometheus").glob("*.yml"))
# Series Prometheus itself creates for every scrape target, not exported by any code.
PROMETHEUS_BUILTINS = {"up"}
# Grafana's interval macros and template variables, replaced by what Grafana would substitute.
GRAFANA_MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name} / {panel['title']}", target["expr"]
        for variable in board["templating"]["list"]:
            if variable.get("type") == "query":
                yield f"{path.name} / ${variable['name']}", variable["query"]["query"]


def alert_queries() -> Iterator[tuple[str, str]]:
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name} / {rule['alert']}", rule["expr"]


def grafana_to_promql(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip())
    return label_values.group(1) if label_values else expr


def selector_names(node: Any) -> Iterator[str]:
    """Metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        return
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from selector_names(child)
    for child in getattr(node, "args", None) or ():
        yield from selector_names(child)


def exported_names(exposition: str) -> set[str]:
    """Sample names an exposition declares, from its ``# TYPE`` lines (counters and histograms expanded)."""
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\w+)$", exposition, re.MULTILINE):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    # What a real API scrape declares (process metrics and the database gauges) ...
    from latentops.core.settings import load_settings
    from latentops.platform import migrate

    home = tmp_path_factory.mktemp("metrics-home")
    url = f"sqlite:///{home / 'latentops.db'}"
    migrate.upgrade(url)
    with TestClient(create_app(load_settings(home=home, database_url=url, broker_url="redis://127.0.0.1:9/0"))) as client:
        text = client.get("/metrics").text
    names = exported_names(text)
    # ... plus the GPU gauges a worker exports, declared by the collector (no GPU on this machine).
    from prometheus_client import CollectorRegistry, generate_latest

    class Declared:
        def collect(self) -> Iterator[Any]:
            return metrics.GpuCollector().describe()

    registry = CollectorRegistry()
    registry.register(Declared())  # type: ignore[arg-type]
    return names | exported_names(generate_latest(registry).decode())


def test_there_are_three_dashboards_and_alert_rules() -> None:
    titles = {json.loads(path.read_text())["title"] for path in DASHBOARDS}
    assert titles == {"latentops / Platform overview", "latentops / GPU workers", "latentops / Governance and compliance"}
    assert len(list(alert_queries())) >= 10


@pytest.mark.parametrize(("where", "expr"), [*dashboard_queries(), *alert_queries()], ids=lambda v: str(v)[:60])
def test_query_parses_and_uses_only_exported_metrics(where: str, expr: str, exported: set[str]) -> None:
    try:
        parsed = promql_parser.parse(grafana_to_promql(expr))
    except Exception as error:  # noqa: BLE001 - the parser raises its own ValueError subclasses
        pytest.fail(f"{where}: not valid PromQL: {error}\n{expr}")
    names = set(selector_names(parsed))
    assert names, f"{where}: no metric in {expr!r}"
    unknown = {name for name in names if name not in exported and name not in PROMETHEUS_BUILTINS}
    assert not unknown, f"{where}: uses metrics the code does not export: {sorted(unknown)}"
    assert all(name.startswith("latentops_") for name in names - PROMETHEUS_BUILTINS)


def test_the_name_check_catches_a_misspelt_metric(exported: set[str]) -> None:
    parsed = promql_parser.parse('sum(rate(latentops_job_finished_total[5m])) / max(latentops_queue_depth)')
    names = set(selector_names(parsed))
    assert names == {"latentops_job_finished_total", "latentops_queue_depth"}
    assert names - exported == {"latentops_job_finished_total"}


def test_dashboards_are_importable_grafana_json() -> None:
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40, path.name
        uids.add(board["uid"])
        assert board["templating"]["list"][0]["type"] == "datasource"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name} / {panel['title']}: wider than the grid"
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", f"{path.name} / {panel['title']}"


def test_alert_rules_have_severity_and_summary() -> None:
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert re.fullmatch(r"Latentops[A-Z]\w+", rule["alert"]), rule["alert"]
                assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
