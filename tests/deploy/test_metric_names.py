"""The metric catalogue the deploy artefacts are written against (deploytools.DAEMON_METRICS) versus what
streamer.daemon.metrics.Metrics really registers, and every name used by the rules, dashboard and Grafana alerts."""

from __future__ import annotations

from deploytools import (
    DAEMON_METRICS,
    DEPLOY,
    LABEL_VALUES,
    SCRAPE_SERIES,
    load_json,
    load_yaml,
    selectors,
    series_names,
)
from prometheus_client import CollectorRegistry

from streamer.daemon import metrics as metrics_module


# The families prometheus_client reports (counters without _total) -> type, and label names seen in samples.
def registered() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    registry = CollectorRegistry()
    metrics = metrics_module.Metrics(registry)
    # streamer_anomaly_score{,_max}, streamer_device_score{,_peak} and streamer_streams come from a collector
    # fed by the detector
    metrics.watch_scores(lambda: metrics_module.ScoreSnapshot(top=[("s1", 0.5, 0.7)], max_peak=0.7, streams=1,
                                                              devices=[("d1", 0.4, 0.6)]))
    metrics.init_topic("ticks")
    types, labels = {}, {}
    for family in registry.collect():
        types[family.name] = family.type
        seen = {frozenset(k for k in s.labels if k not in ("le", "quantile")) for s in family.samples}
        if seen:
            (labels[family.name],) = seen
    return types, labels


def used_names() -> set[str]:
    exprs = []
    rule_groups = load_yaml(DEPLOY / "prometheus/streamer-rules.yml")["groups"]
    for group in rule_groups:
        exprs += [rule["expr"] for rule in group["rules"]]
    alerting = load_yaml(DEPLOY / "grafana/provisioning/alerting/streamer-alerts.yaml")
    exprs += [q["model"]["expr"] for g in alerting["groups"] for r in g["rules"] for q in r["data"]
              if "expr" in q["model"]]
    dashboard = load_json(DEPLOY / "grafana/dashboards/streamer.json")
    exprs += [t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$stream", ".*")
              for p in dashboard["panels"] for t in p["targets"]]
    recorded = {rule["record"] for group in rule_groups for rule in group["rules"] if "record" in rule}
    return {s.name for e in exprs for s in selectors(e)} - recorded - set(SCRAPE_SERIES)


def test_catalogue_matches_the_registered_families() -> None:
    types, labels = registered()
    for name, (kind, label_names) in DAEMON_METRICS.items():
        assert types.get(name) == kind, name
        if name in labels:
            assert labels[name] == label_names, name


def test_every_metric_used_in_rules_and_dashboards_is_registered() -> None:
    types, _ = registered()
    exposed = set(series_names({name: (kind, frozenset()) for name, kind in types.items()}))
    missing = used_names() - exposed
    assert used_names() and missing == set()


def test_outcome_values_match() -> None:
    assert set(metrics_module.OUTCOMES) == LABEL_VALUES["outcome"]
