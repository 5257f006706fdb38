import subprocess
import sys

import pytest

from streamer.config import ConfigError, load_settings, redacted


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("STREAMER_CONFIG", raising=False)
    s = load_settings(None)
    assert s.kafka.topics == ["ticks"] and s.metrics.port == 9108 and s.model.path is None


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('[kafka]\ntopics = ["a"]\ngroup_id = "from-file"\n[metrics]\nport = 9300\n')
    monkeypatch.setenv("STREAMER_KAFKA__TOPICS", '["x", "y"]')
    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "h1:9092,h2:9092")
    s = load_settings(path)
    assert s.kafka.topics == ["x", "y"]
    assert s.kafka.bootstrap_servers == ["h1:9092", "h2:9092"]
    assert s.kafka.group_id == "from-file" and s.metrics.port == 9300


def test_invalid_value_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMER_METRICS__PORT", "70000")
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_settings(None)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[kafka]\ntopicz = ['a']\n")
    with pytest.raises(ConfigError, match=r"kafka\.topicz"):
        load_settings(path)


def test_unknown_timezone_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[resets]\nsession_timezone = 'Mars/Olympus'\n")
    with pytest.raises(ConfigError, match=r"resets\.session_timezone"):
        load_settings(path)


def test_unknown_ticks_timezone_is_an_error_naming_the_field(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[ticks]\ntimezone = 'America/Gotham'\n")
    with pytest.raises(ConfigError, match=r"ticks\.timezone: .*America/Gotham"):
        load_settings(path)
    monkeypatch.setenv("STREAMER_TICKS__TIMEZONE", "Europe/London")
    assert load_settings(path).ticks.timezone == "Europe/London"  # the environment wins over the file


def test_ticks_timezone_defaults_to_utc():
    from datetime import datetime, timezone

    assert load_settings(None).ticks.zone == timezone.utc
    zone = load_settings(None, ticks={"timezone": "America/New_York"}).ticks.zone
    assert datetime(2013, 10, 8, 9, 30, tzinfo=zone).utcoffset().total_seconds() == -4 * 3600


def test_per_topic_reset_rules_override_only_what_they_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[resets]\nmax_gap_seconds = 60\nsession_timezone = 'UTC'\n"
                    "[resets.topics.nyse]\nsession_timezone = 'America/New_York'\nsession_start = '09:30'\n")
    s = load_settings(path)
    nyse, other = s.resets.for_topic("nyse"), s.resets.for_topic("other")
    assert (nyse.max_gap_seconds, nyse.session_timezone, nyse.session_start) == (60, "America/New_York", "09:30")
    assert (other.max_gap_seconds, other.session_timezone) == (60, "UTC")
    shown = redacted(s)["resets"]["topics"]  # `streamer config`: an override as what it sets
    assert shown == {"nyse": {"session_timezone": "America/New_York", "session_start": "09:30"}}


def test_per_topic_detector_settings_override_only_what_they_set(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[detector]\nwarmup = 50\nprotect_decades = 0\n"
                    "[detector.topics.bars]\nrange_evidence = false\nprotect_decades = 4\n")
    s = load_settings(path)
    bars, other = s.detector.for_topic("bars"), s.detector.for_topic("metrics")
    assert (bars.warmup, bars.range_evidence, bars.protect_decades, bars.topics) == (50, False, 4, {})
    assert (other.warmup, other.range_evidence, other.protect_decades) == (50, True, 0)
    monkeypatch.setenv("STREAMER_DETECTOR__TOPICS__BARS__SEASON_EVIDENCE", "false")
    assert load_settings(None).detector.for_topic("bars").season_evidence is False
    # `streamer config` shows an override as what it sets, not as a full set of defaults
    assert redacted(s)["detector"]["topics"] == {"bars": {"range_evidence": False, "protect_decades": 4.0}}


def test_a_topic_cannot_set_what_belongs_to_the_whole_daemon(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[detector.topics.bars]\nmax_streams = 10\n")
    with pytest.raises(ConfigError, match="detector.topics.*'bars' cannot set max_streams"):
        load_settings(path)
    path.write_text("[detector.topics.bars]\nrange_evidnce = false\n")
    with pytest.raises(ConfigError, match="detector.topics.bars.range_evidnce"):
        load_settings(path)


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__SASL_PLAIN_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMER_KAFKA__CONSUMER", '{"sasl_oauth_token_secret": "t0k3n", "fetch_max_wait_ms": 10}')
    s = load_settings(None)
    shown = redacted(s)
    assert "hunter2" not in repr(shown) and "t0k3n" not in repr(shown)
    assert shown["kafka"]["consumer"]["fetch_max_wait_ms"] == 10
    assert s.kafka.sasl_plain_password.get_secret_value() == "hunter2"


def test_config_command_prints_masked_config_and_fails_on_bad_value():
    env = {"STREAMER_KAFKA__SASL_PLAIN_PASSWORD": "hunter2", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "streamer", "config"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "hunter2" not in ok.stdout and '"sasl_plain_password": "**********"' in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "streamer", "config"], capture_output=True, text=True,
                         env={**env, "STREAMER_KAFKA__MAX_POLL_RECORDS": "lots"})
    assert bad.returncode == 2 and "kafka.max_poll_records" in bad.stderr and "Traceback" not in bad.stderr


def test_start_from_without_offset_is_in_the_ticks_timezone():
    from zoneinfo import ZoneInfo

    from streamer.clients.base import start_timestamp_ms

    assert start_timestamp_ms("2013-10-08T09:30") == 1381224600_000
    assert start_timestamp_ms("2013-10-08T09:30", ZoneInfo("America/New_York")) == 1381224600_000 + 4 * 3600_000
    assert start_timestamp_ms("2013-10-08T09:30Z", ZoneInfo("America/New_York")) == 1381224600_000
