"""End to end: broker -> daemon -> a real Prometheus scraping it with the project's alerting rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import daemon_settings, require_tool
from tests.e2e.prometheus import PrometheusServer, prometheus_binary
from tests.integration.kafka_helpers import produce, tick

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "streamer-rules.yml"
T0 = 1_750_000_000.0



@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    """A failure under CI=true (CI installs the Debian package), a skip saying why on a machine without it."""
    if prometheus_binary() is None:
        require_tool("prometheus", "Debian package prometheus: make system-deps")


def test_prometheus_sees_the_anomaly_and_fires_only_for_it(broker, topic, run_daemon, tmp_path):
    rng = np.random.default_rng(0)
    messages = []
    for i in range(400):
        for k in range(4):
            value = 20 + 3 * np.sin(i / 12 + k) + rng.normal(0, 0.1)
            if k == 0 and i == 399:  # the last tick of stream "hot" is far outside anything seen before
                value += 500
            messages.append(tick("hot" if k == 0 else f"calm-{k}", T0 + 60 * i, float(value)))
    produce(broker.bootstrap, topic, messages)

    settings = daemon_settings(broker.bootstrap, [topic])
    with run_daemon(settings) as running:
        running.wait_scored(len(messages))
        target = f"127.0.0.1:{running.daemon.http.port}"
        with PrometheusServer(tmp_path / "prom", [target], rule_files=[RULES]) as prom:
            # The alert reads the held peak (the highest score of the last detector.peak_hold_seconds), so a
            # one-tick spike stays visible to the scrapes; 0.30 is the threshold of streamer-rules.yml.
            peaks = prom.wait_for(lambda: {s["metric"]["stream"]: float(s["value"][1])
                                           for s in prom.query("streamer_anomaly_score_peak")
                                           if len(prom.query("streamer_anomaly_score_peak")) == 4},
                                  what="4 peak score series")
            assert peaks["hot"] > 0.30
            assert peaks["hot"] > 3 * max(v for k, v in peaks.items() if k != "hot")

            def anomaly_alerts(state):
                return [a for a in prom.alerts() if a["labels"]["alertname"] == "StreamerAnomaly"
                        and a["state"] == state]

            firing = prom.wait_for(lambda: anomaly_alerts("firing"), timeout=240, what="StreamerAnomaly firing")
            assert {a["labels"]["stream"] for a in firing} == {"hot"}
            assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "StreamerAnomaly"
                        and a["labels"]["stream"] != "hot"]
