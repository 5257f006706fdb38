"""deploy/grafana: the dashboard and the Grafana-managed alert rules are parsed with the Grafana Foundation
SDK's typed models (nothing may be dropped as unknown), every PromQL expression is checked by promtool and
by a PromQL parser for the metric names, and the alert rules are compared with the Prometheus ones."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from deploytools import (
    DAEMON_METRICS,
    DEPLOY,
    SCRAPE_SERIES,
    check_selectors,
    load_json,
    load_yaml,
    require,
    run,
    selectors,
    series_names,
    tool,
    write_rules_file,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "streamer.json"
ALERTS_FILE = GRAFANA / "provisioning" / "alerting" / "streamer-alerts.yaml"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources.yaml"
PROVIDERS_FILE = GRAFANA / "provisioning" / "dashboards.yaml"
PROM_RULES = DEPLOY / "prometheus" / "streamer-rules.yml"
DS_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONED_UID = "streamer-prometheus"



# Read for (and recorded against) each test that uses them: see deploytools.
def dashboard() -> dict:
    return load_json(DASHBOARD_FILE)


def alerting() -> dict:
    return load_yaml(ALERTS_FILE)


def grafana_rules() -> list[dict]:
    return [rule for group in alerting()["groups"] for rule in group["rules"]]


def lost_fields(original: Any, round_tripped: Any, path: str = "") -> list[str]:
    """Paths present in ``original`` but missing after a parse and re-serialisation by typed models."""
    if isinstance(original, dict):
        if not isinstance(round_tripped, dict):
            return [f"{path}: became {type(round_tripped).__name__}"]
        return [p for k, v in original.items()
                for p in ([f"{path}/{k}"] if k not in round_tripped else
                          lost_fields(v, round_tripped[k], f"{path}/{k}"))]
    if isinstance(original, list):
        if not isinstance(round_tripped, list) or len(original) != len(round_tripped):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(original, round_tripped, strict=True))
                for p in lost_fields(a, b, f"{path}[{i}]")]
    return [] if original == round_tripped else [f"{path}: {original!r} -> {round_tripped!r}"]


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.to_json()))


def sdk_round_trip_dashboard(data: dict) -> dict:
    models = require("grafana_foundation_sdk.models.dashboard")
    plugins = require("grafana_foundation_sdk.cog.plugins")

    # Without the panel and query plugins, options and targets would stay untyped dicts.
    plugins.register_default_plugins()
    return _plain(models.Dashboard.from_json(copy.deepcopy(data)).to_json())


def sdk_round_trip_rule(rule: dict) -> dict:
    models = require("grafana_foundation_sdk.models.alerting")
    return _plain(models.Rule.from_json(copy.deepcopy(rule)).to_json())


# --- dashboard --------------------------------------------------------------------------------------------------

def test_dashboard_parses_with_the_sdk_models_losing_nothing() -> None:
    data = dashboard()
    assert lost_fields(data, sdk_round_trip_dashboard(data)) == []


@pytest.mark.parametrize("mutate", [
    lambda d: d["panels"][0].__setitem__("gridPoss", {"x": 0}),
    lambda d: d["panels"][4]["targets"][0].__setitem__("legnedFormat", "{{stream}}"),
    lambda d: d["panels"][4]["options"].__setitem__("legnd", {}),
    lambda d: d["templating"]["list"][0].__setitem__("querry", "prometheus"),
], ids=["panel", "target", "options", "variable"])
def test_a_misspelt_dashboard_field_is_detected(mutate: Any) -> None:
    bad = dashboard()
    mutate(bad)
    assert len(lost_fields(bad, sdk_round_trip_dashboard(bad))) == 1


def walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(node, dict):
        return ([node[key]] if key in node else []) + [v for k, child in node.items() for v in walk(child, key)]
    if isinstance(node, list):
        return [v for child in node for v in walk(child, key)]
    return []


def test_no_hard_coded_datasource() -> None:
    data = dashboard()
    (variable,) = [v for v in data["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource" and variable["query"] == "prometheus"
    for ref in walk(data, "datasource"):
        assert ref == DS_VARIABLE or ref == {"type": "grafana", "uid": "-- Grafana --"}, ref
    # every panel and every target names the variable explicitly
    for panel in data["panels"]:
        assert panel["datasource"] == DS_VARIABLE, panel["title"]
        assert all(t["datasource"] == DS_VARIABLE for t in panel["targets"]), panel["title"]
    # the only uids in the file: the dashboard's own, the variable and Grafana's built-in annotations
    assert set(walk(data, "uid")) == {"streamer", "${datasource}", "-- Grafana --"}


def panel(title: str) -> dict:
    (found,) = [p for p in dashboard()["panels"] if p["title"] == title]
    return found


@pytest.mark.parametrize("title,kind,metric", [
    ("Anomaly score per stream", "timeseries", "streamer_anomaly_score"),
    ("Top anomalous streams now", "bargauge", "streamer_anomaly_score_peak"),
    ("Messages per second by outcome", "timeseries", "streamer_messages_total"),
    ("Consumer lag", "timeseries", "streamer_consumer_lag_messages"),
    ("State resets by reason", "timeseries", "streamer_state_resets_total"),
    ("Invalid input by reason", "timeseries", "streamer_invalid_messages_total"),
    ("Batch latency", "timeseries", "streamer_batch_seconds_bucket"),
    ("Event lag", "timeseries", "streamer_event_lag_seconds"),
])
def test_required_panels(title: str, kind: str, metric: str) -> None:
    p = panel(title)
    assert p["type"] == kind
    exprs = [t["expr"] for t in p["targets"]]
    assert all(metric in {s.name for s in selectors(grafana_to_promql(e))} for e in exprs)


def test_top_streams_and_latency_queries() -> None:
    (top,) = panel("Top anomalous streams now")["targets"]
    assert top["expr"].startswith("topk(") and top["instant"] is True
    latency = [t["expr"] for t in panel("Batch latency")["targets"]]
    assert [e.split(",")[0] for e in latency] == [f"histogram_quantile({q}" for q in ("0.5", "0.9", "0.99")]


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    panels = dashboard()["panels"]
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert len({p["id"] for p in panels}) == len(panels)


# --- PromQL in the dashboard and the Grafana alert rules --------------------------------------------------------

GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values Prometheus accepts (multi-value variables become regexes)."""
    for var, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_exprs() -> list[tuple[str, str]]:
    data = dashboard()
    out = [(p["title"], t["expr"]) for p in data["panels"] for t in p["targets"]]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, query
            out.append((variable["name"], match.group(1)))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    return [(rule["title"], q["model"]["expr"]) for rule in grafana_rules() for q in rule["data"]
            if q["datasourceUid"] != "__expr__"]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + alert_exprs()


def test_every_expression_passes_promtool_check_rules(tmp_path: Path) -> None:
    exprs = all_exprs()
    rules = write_rules_file(tmp_path / "extracted.yml",
                             [(name, grafana_to_promql(expr)) for name, expr in exprs])
    out = run([tool("promtool"), "check", "rules", rules]).stdout
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_promtool_check_of_extracted_expressions_can_fail(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = write_rules_file(tmp_path / "bad.yml", [("bad", "sum by (le (rate(x[5m]))")])
    assert run([promtool, "check", "rules", rules], check=False).returncode != 0


def test_every_metric_is_one_the_daemon_exposes() -> None:
    known = series_names(DAEMON_METRICS) | SCRAPE_SERIES
    exprs = all_exprs()
    problems = [p for _, expr in exprs for p in check_selectors(grafana_to_promql(expr), known)]
    assert problems == []
    used = {s.name for _, expr in exprs for s in selectors(grafana_to_promql(expr))}
    # and the dashboard shows every metric of the daemon at least once
    assert used >= set(series_names(DAEMON_METRICS)) - {"streamer_batch_seconds_sum",
                                                         "streamer_batch_seconds_count"}


def test_metric_check_catches_an_unknown_metric() -> None:
    known = series_names(DAEMON_METRICS)
    assert check_selectors('rate(streamer_message_total{outcome="scored"}[5m])', known)
    assert check_selectors('rate(streamer_messages_total{outcome="scoredd"}[5m])', known)
    assert check_selectors('streamer_anomaly_score{strem="x"}', known)


# --- Grafana-managed alert rules --------------------------------------------------------------------------------

def test_alert_rules_parse_with_the_sdk_models_losing_nothing() -> None:
    doc = alerting()
    assert doc["apiVersion"] == 1
    for group in doc["groups"]:
        assert set(group) == {"orgId", "name", "folder", "interval", "rules"}
    rules = grafana_rules()
    for rule in rules:
        assert lost_fields(rule, sdk_round_trip_rule(rule)) == [], rule["title"]
    bad = copy.deepcopy(rules[0])
    bad["noDataStat"] = "OK"
    assert lost_fields(bad, sdk_round_trip_rule(bad)) == ["/noDataStat"]


def query_model_round_trip(query: dict) -> dict:
    """The rule's query model through the SDK's typed query: Prometheus, or a server-side threshold."""
    expr = require("grafana_foundation_sdk.models.expr")
    prometheus = require("grafana_foundation_sdk.models.prometheus")
    model = copy.deepcopy(query["model"])
    if query["datasourceUid"] == "__expr__":
        assert model["type"] == "threshold"
        return _plain(expr.TypeThreshold.from_json(model).to_json())
    return _plain(prometheus.Dataquery.from_json(model).to_json())


def test_alert_query_models_parse_with_the_sdk_models_losing_nothing() -> None:
    rules = grafana_rules()
    for rule in rules:
        for query in rule["data"]:
            assert lost_fields(query["model"], query_model_round_trip(query)) == [], rule["title"]
    bad = copy.deepcopy(rules[0]["data"][0])
    bad["model"]["exp"] = bad["model"].pop("expr")
    assert lost_fields(bad["model"], query_model_round_trip(bad)) == ["/exp"]


def test_alert_rules_use_the_provisioned_datasource_uid() -> None:
    datasources = load_yaml(DATASOURCES_FILE)
    (ds,) = datasources["datasources"]
    assert ds["uid"] == PROVISIONED_UID and ds["type"] == "prometheus"
    for rule in grafana_rules():
        refs = {q["refId"]: q for q in rule["data"]}
        assert rule["condition"] in refs
        for q in rule["data"]:
            assert q["datasourceUid"] in {PROVISIONED_UID, "__expr__"}
            assert q["model"]["refId"] == q["refId"]
            if q["datasourceUid"] == "__expr__":
                assert q["model"]["expression"] in refs


def prometheus_alerts() -> dict[str, dict]:
    doc = load_yaml(PROM_RULES)
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def threshold(rule: dict) -> tuple[str, float]:
    (cond,) = [q for q in rule["data"] if q["refId"] == rule["condition"]]
    (evaluator,) = [c["evaluator"] for c in cond["model"]["conditions"]]
    return evaluator["type"], evaluator["params"][0]


def test_grafana_alerts_are_equivalent_to_the_prometheus_alerts() -> None:
    prom = prometheus_alerts()
    grafana = {r["title"]: r for r in grafana_rules()}
    assert set(grafana) == set(prom)
    for name, rule in grafana.items():
        assert rule["for"] == prom[name]["for"], name
        assert rule["labels"] == prom[name]["labels"], name


def test_anomaly_threshold_is_the_same_in_both_places() -> None:
    promql_parser = require("promql_parser")
    expr = promql_parser.parse(prometheus_alerts()["StreamerAnomaly"]["expr"])
    assert isinstance(expr.rhs, promql_parser.NumberLiteral)
    (rule,) = [r for r in grafana_rules() if r["title"] == "StreamerAnomaly"]
    assert threshold(rule) == ("gt", expr.rhs.val) == ("gt", 0.30)


def test_dashboard_provider_points_at_a_directory() -> None:
    providers = load_yaml(PROVIDERS_FILE)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert not provider["allowUiUpdates"]
