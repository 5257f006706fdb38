"""deploy/prometheus: promtool checks the rules and the sample config and runs the rule unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from deploytools import DAEMON_METRICS, DEPLOY, SCRAPE_SERIES, check_selectors, load_yaml, run, series_names, tool, used

PROM = DEPLOY / "prometheus"
RULES = PROM / "streamer-rules.yml"
RULE_TESTS = PROM / "streamer-rules.test.yml"


def _rules() -> list[dict]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


ALERTS = [rule["alert"] for rule in _rules() if "alert" in rule]


@pytest.fixture
def promtool() -> str:
    return tool("promtool")


def test_promtool_check_rules(promtool: str) -> None:
    out = run([promtool, "check", "rules", RULES]).stdout
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_test_rules(promtool: str) -> None:
    # Several runs: promtool evaluates separate rule groups in random order, which made alerts on recorded
    # series flaky by one interval before the rules were put in one group.
    for _ in range(5):
        out = run([promtool, "test", "rules", RULE_TESTS.name], cwd=PROM).stdout
        assert "SUCCESS" in out


def test_promtool_check_config(promtool: str) -> None:
    out = run([promtool, "check", "config", PROM / "prometheus.yml"]).stdout
    assert "1 rule files found" in out  # the config names the rules file and promtool checked it too


def test_sample_config_scrapes_the_daemon_as_job_streamer() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamer"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9108"]
    assert config["rule_files"] == [RULES.name]


def test_the_expected_alerts_exist() -> None:
    assert set(ALERTS) == {"StreamerAnomaly", "StreamerNoMessagesScored", "StreamerConsumerLagGrowing",
                           "StreamerInvalidMessages", "StreamerDown", "StreamerAbsent"}


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    firing, quiet = set(), set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(ALERTS)
    assert quiet == set(ALERTS)


def test_rules_use_only_metrics_the_daemon_exposes() -> None:
    known = series_names(DAEMON_METRICS) | SCRAPE_SERIES
    recorded = {rule["record"]: frozenset({"topic", "outcome", "job", "instance"})
                for rule in _rules() if "record" in rule}
    problems = [p for rule in _rules() for p in check_selectors(rule["expr"], known | recorded)]
    assert problems == []


def _mutated_run(promtool: str, tmp_path: Path, alert: str, change: dict) -> str:
    doc = load_yaml(RULES)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule.update(change)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(used(RULE_TESTS), tmp_path / RULE_TESTS.name)
    proc = run([promtool, "test", "rules", RULE_TESTS.name], cwd=tmp_path, check=False)
    assert proc.returncode != 0, f"the unit tests did not notice a change to {alert}: {change}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", ALERTS)
def test_unit_tests_fail_if_an_alert_can_never_fire(promtool: str, tmp_path: Path, alert: str) -> None:
    out = _mutated_run(promtool, tmp_path, alert, {"expr": "vector(1) > 2"})
    assert f"alertname: {alert}" in out


@pytest.mark.parametrize("alert", ALERTS)
def test_unit_tests_fail_if_an_alert_fires_too_early(promtool: str, tmp_path: Path, alert: str) -> None:
    out = _mutated_run(promtool, tmp_path, alert, {"for": "0s"})
    assert f"alertname: {alert}" in out
