"""The confluent-kafka backend's option mapping (pure: no broker, and no confluent-kafka needed)."""

import builtins

import pytest

from streamer.clients import confluent as kafka_confluent
from streamer.clients.base import KafkaSetupError, open_consumer
from streamer.clients.confluent import FETCH_TUNING, consumer_options, producer_options
from streamer.config import ConfigError, load_settings, redacted


def confluent(**kafka):
    return load_settings(None, kafka={"client": "confluent-kafka", **kafka}).kafka


def test_the_default_client_is_kafka_python_and_a_wrong_name_is_an_error_naming_the_field():
    assert load_settings(None).kafka.client == "kafka-python"
    with pytest.raises(ConfigError, match=r"kafka\.client: .*'kafka-python' or 'confluent-kafka'.*'librdkafka'"):
        load_settings(None, kafka={"client": "librdkafka"})


def test_consumer_options_commit_manually_fetch_without_idling_and_start_where_asked():
    options = consumer_options(confluent(bootstrap_servers="a:9092,b:9092", group_id="g", client_id="c",
                                         start_from="latest"))
    assert options["bootstrap.servers"] == "a:9092,b:9092"
    assert (options["group.id"], options["client.id"]) == ("g", "c")
    assert options["enable.auto.commit"] is False and options["enable.auto.offset.store"] is False
    assert options["auto.offset.reset"] == "latest"
    assert {k: options[k] for k in FETCH_TUNING} == FETCH_TUNING
    assert options["fetch.queue.backoff.ms"] < 1000  # librdkafka's default idles ~1 s per full local queue
    assert consumer_options(confluent(start_from="2026-01-01T00:00:00Z"))["auto.offset.reset"] == "earliest"


def test_sasl_ssl_settings_map_to_librdkafka_names_for_both_clients(tmp_path):
    k = confluent(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="streamer",
                  sasl_plain_password="s3cret", ssl_cafile="/etc/ca.pem", ssl_certfile="/etc/client.pem",
                  ssl_keyfile="/etc/client.key", ssl_password="keypass")
    for options in (consumer_options(k), producer_options(k)):
        assert options["security.protocol"] == "SASL_SSL"
        assert options["sasl.mechanisms"] == "SCRAM-SHA-512"
        assert (options["sasl.username"], options["sasl.password"]) == ("streamer", "s3cret")
        assert options["ssl.ca.location"] == "/etc/ca.pem"
        assert options["ssl.certificate.location"] == "/etc/client.pem"
        assert options["ssl.key.location"] == "/etc/client.key"
        assert options["ssl.key.password"] == "keypass"
        assert not any("_" in key for key in options)  # librdkafka names only
    assert "security.protocol" in consumer_options(confluent()) and "sasl.username" not in consumer_options(confluent())


def test_kafka_python_tables_translate_and_the_librdkafka_tables_win():
    k = confluent(consumer={"session_timeout_ms": 6000, "fetch_max_wait_ms": 50, "request_timeout_ms": 3000},
                  producer={"linger_ms": 20, "max_request_size": 1 << 20},
                  librdkafka_consumer={"fetch.wait.max.ms": 10, "queued.min.messages": 5000},
                  librdkafka_producer={"compression.type": "zstd"})
    options = consumer_options(k)
    assert options["session.timeout.ms"] == 6000 and options["socket.timeout.ms"] == 3000
    assert options["fetch.wait.max.ms"] == 10  # librdkafka table over the translated kafka-python one
    assert options["queued.min.messages"] == 5000
    produced = producer_options(k)
    assert produced["linger.ms"] == 20 and produced["message.max.bytes"] == 1 << 20
    assert produced["compression.type"] == "zstd" and produced["acks"] == "all"
    assert producer_options(confluent())["message.max.bytes"] == 16 * 1024 * 1024  # dead letters up to 16 MiB


def test_a_kafka_python_option_without_an_equivalent_is_an_error_naming_table_and_key():
    with pytest.raises(ConfigError, match=r"kafka\.consumer .*api_version.*kafka\.librdkafka_consumer"):
        confluent(consumer={"api_version": [2, 8]})
    with pytest.raises(ConfigError, match=r"kafka\.producer .*buffer_memory.*kafka\.librdkafka_producer"):
        confluent(producer={"buffer_memory": 1})
    # The same tables are fine for kafka-python, and librdkafka tables are simply unused there.
    load_settings(None, kafka={"consumer": {"api_version": [2, 8]}, "librdkafka_consumer": {"debug": "all"}})


def test_librdkafka_tables_are_masked_in_the_printed_config():
    s = load_settings(None, kafka={"client": "confluent-kafka",
                                   "librdkafka_consumer": {"sasl.oauthbearer.client.secret": "hush"},
                                   "librdkafka_producer": {"ssl.keystore.password": "hush2"}})
    shown = repr(redacted(s))
    assert "hush" not in shown and "**********" in shown


def test_choosing_confluent_without_it_installed_is_a_setup_error_naming_the_field(monkeypatch):
    real_import = builtins.__import__

    def without_confluent(name, *args, **kwargs):
        if name == "confluent_kafka" or name.startswith("confluent_kafka."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_confluent)
    with pytest.raises(KafkaSetupError, match=r"kafka\.client = 'confluent-kafka'.*streamer\[confluent\]"):
        open_consumer(confluent())


def test_translation_tables_name_real_kafka_python_options():
    from kafka import KafkaConsumer, KafkaProducer

    assert set(kafka_confluent.CONSUMER_NAMES) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert set(kafka_confluent.PRODUCER_NAMES) <= set(KafkaProducer.DEFAULT_CONFIG)
