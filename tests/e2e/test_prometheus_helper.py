"""The PrometheusServer helper against a real prometheus binary scraping an in-process prometheus_client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

try:  # tests/ laid out as packages
    from .prometheus import PrometheusError, PrometheusServer, prometheus_binary
except ImportError:  # pytest's default rootdir-relative import: this directory is on sys.path
    from prometheus import PrometheusError, PrometheusServer, prometheus_binary

from tests.conftest import require_tool  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    """A failure under CI=true (CI installs the Debian package), a skip saying why on a machine without it."""
    if prometheus_binary() is None:
        require_tool("prometheus", "Debian package prometheus: make system-deps")


@pytest.fixture
def exporter() -> Iterator[tuple[Gauge, str]]:
    registry = CollectorRegistry()
    gauge = Gauge("e2e_helper_value", "A value the test sets", ["kind"], registry=registry)
    gauge.labels("test").set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield gauge, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def alert_rules(tmp_path: Path) -> Path:
    path = tmp_path / "helper-rules.yml"
    path.write_text("""
groups:
  - name: helper
    rules:
      - alert: HelperValueHigh
        expr: e2e_helper_value > 100
        labels: {severity: test}
""")
    return path


def test_scrape_query_and_alert(tmp_path: Path, exporter: tuple[Gauge, str], alert_rules: Path) -> None:
    gauge, target = exporter
    rules = [alert_rules, REPO / "deploy" / "prometheus" / "streamer-rules.yml"]
    with PrometheusServer(tmp_path / "prom", [target], rule_files=rules, job="helper") as prom:
        result = prom.wait_for(lambda: prom.query('e2e_helper_value{job="helper"}'), timeout=30)
        (sample,) = result
        assert sample["metric"] == {"__name__": "e2e_helper_value", "instance": target, "job": "helper",
                                    "kind": "test"}
        assert float(sample["value"][1]) == 42.0
        assert prom.query('up{job="helper"}')[0]["value"][1] == "1"
        assert prom.query("nonexistent_metric") == []

        # the value changes at the exporter and the alert rule fires
        def helper_alerts() -> list[dict]:
            return [a for a in prom.alerts() if a["labels"]["alertname"] == "HelperValueHigh"]

        assert helper_alerts() == []
        gauge.labels("test").set(1000)
        firing = prom.wait_for(lambda: [a for a in helper_alerts() if a["state"] == "firing"], timeout=30)
        assert firing[0]["labels"]["kind"] == "test"
        # No target has job="streamer" here, so the project's StreamerAbsent is on its way (for: 5m): pending
        # once its group has been evaluated (the groups run independently: wait for it, not for the clock).
        absent = prom.wait_for(lambda: [a for a in prom.alerts() if a["labels"]["alertname"] == "StreamerAbsent"],
                               timeout=30, what="StreamerAbsent pending")
        assert [a["state"] for a in absent] == ["pending"]

        # the project's rule file loads and evaluates cleanly in a real Prometheus
        groups = prom.wait_for(lambda: [g for g in prom.rules() if g["name"] == "streamer"
                                        and all(r.get("health") == "ok" for r in g["rules"])], timeout=30)
        assert len(groups[0]["rules"]) == 10

        with pytest.raises(PrometheusError, match="bad_data"):
            prom.query("sum(")
        port = prom.port
    assert not prom.running
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_a_broken_config_fails_fast(tmp_path: Path) -> None:
    bad_rules = tmp_path / "bad.yml"
    bad_rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n")
    server = PrometheusServer(tmp_path / "prom", ["127.0.0.1:1"], rule_files=[bad_rules])
    with pytest.raises(PrometheusError, match="exited"):
        server.start(timeout=30)
    assert not server.running
