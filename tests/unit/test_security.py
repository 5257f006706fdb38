"""Security settings reach the Kafka client, secrets never reach output, and /metrics can require TLS + auth."""

import base64
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from streamer.clients.kafka_python import consumer_options, producer_options
from streamer.config import ConfigError, load_settings, redacted
from streamer.daemon.metrics import Health, Metrics, MetricsServer
from tests.conftest import require_tool


def test_sasl_ssl_scram_settings_reach_both_clients(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("dummy")
    s = load_settings(None, kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                   "sasl_plain_username": "streamer", "sasl_plain_password": "s3cret",
                                   "ssl_cafile": str(ca)})
    for options in (consumer_options(s.kafka), producer_options(s.kafka)):
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "streamer"
        assert options["sasl_plain_password"] == "s3cret"
        assert options["ssl_cafile"] == str(ca)
    assert "s3cret" not in repr(redacted(s)) and "s3cret" not in repr(s)


def test_mutual_tls_files_and_pass_through_options():
    s = load_settings(None, kafka={"security_protocol": "SSL", "ssl_cafile": "/etc/ca.pem",
                                   "ssl_certfile": "/etc/client.pem", "ssl_keyfile": "/etc/client.key",
                                   "ssl_password": "keypass", "consumer": {"fetch_max_wait_ms": 50}})
    options = consumer_options(s.kafka)
    assert (options["ssl_certfile"], options["ssl_keyfile"], options["ssl_password"]) == (
        "/etc/client.pem", "/etc/client.key", "keypass")
    assert options["fetch_max_wait_ms"] == 50 and options["enable_auto_commit"] is False
    assert "keypass" not in repr(redacted(s))


def test_metrics_auth_settings_come_in_pairs():
    with pytest.raises(ConfigError, match="metrics"):
        load_settings(None, metrics={"basic_auth_username": "prom"})
    with pytest.raises(ConfigError, match="metrics"):
        load_settings(None, metrics={"tls_certfile": "/x.pem"})


@pytest.fixture
def certificate(tmp_path):
    require_tool("openssl", "Debian package openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_metrics_endpoint_over_tls_with_basic_auth(certificate):
    registry = CollectorRegistry()
    Metrics(registry)
    server = MetricsServer(registry, Health(), "127.0.0.1", 0, tls=certificate, basic_auth=("prom", "pw")).start()
    base = f"https://127.0.0.1:{server.port}"
    context = ssl.create_default_context(cafile=str(certificate[0]))

    def get(path, user=None, password=None):
        request = urllib.request.Request(base + path)
        if user:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        return urllib.request.urlopen(request, context=context, timeout=5)

    try:
        for user, password in ((None, None), ("prom", "wrong"), ("other", "pw")):
            with pytest.raises(urllib.error.HTTPError) as denied:
                get("/metrics", user, password)
            assert denied.value.code == 401
        assert b"streamer_build_info" in get("/metrics", "prom", "pw").read()
        assert get("/healthz").status == 200  # probes stay open
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)  # no plain HTTP
        assert get("/healthz").status == 200  # and a bad client does not take the server down
    finally:
        server.stop()
