import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from streamer.daemon.metrics import Health, Metrics, MetricsServer, ScoreSnapshot


def test_score_series_come_from_the_snapshot_only():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch_scores(lambda: ScoreSnapshot([("a", 0.2, 0.9), ("b", 0.1, 0.1)], 0.9, 5000))
    assert registry.get_sample_value("streamer_anomaly_score", {"stream": "a"}) == 0.2
    assert registry.get_sample_value("streamer_anomaly_score_peak", {"stream": "a"}) == 0.9
    assert registry.get_sample_value("streamer_anomaly_score", {"stream": "c"}) is None
    assert registry.get_sample_value("streamer_anomaly_score_max") == 0.9
    assert registry.get_sample_value("streamer_streams") == 5000


def test_counters_start_at_zero_for_known_labels():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.init_topic("ticks")
    assert registry.get_sample_value("streamer_messages_total", {"topic": "ticks", "outcome": "invalid"}) == 0
    assert registry.get_sample_value("streamer_invalid_messages_total", {"reason": "malformed_json"}) == 0
    assert registry.get_sample_value("streamer_state_resets_total", {"reason": "segment"}) == 0


def test_health_endpoints():
    registry = CollectorRegistry()
    Metrics(registry)
    health = Health(stall_seconds=60)
    server = MetricsServer(registry, health, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz").status == 200
        try:
            urllib.request.urlopen(base + "/readyz")
            raise AssertionError("not ready yet")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        health.ready = True
        assert urllib.request.urlopen(base + "/readyz").status == 200
        health.stall_seconds = 0  # the loop has not beaten within 0 s: stalled
        try:
            urllib.request.urlopen(base + "/healthz")
            raise AssertionError("stalled loop reported healthy")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        assert b"streamer_build_info" in urllib.request.urlopen(base + "/metrics").read()
    finally:
        server.stop()
