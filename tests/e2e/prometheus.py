"""A real Prometheus server for end-to-end tests (Debian package ``prometheus``: /usr/bin/prometheus).

Usage in a test module::

    from prometheus import PrometheusServer, prometheus_server   # the fixture factory, see below

    def test_alert_fires(tmp_path):
        with PrometheusServer(tmp_path, targets=["127.0.0.1:9108"],
                              rule_files=[REPO / "deploy/prometheus/streamer-rules.yml"]) as prom:
            prom.wait_for(lambda: prom.query('up{job="streamer"} == 1'))
            prom.wait_for(lambda: [a for a in prom.alerts() if a["state"] == "firing"], timeout=180)

or as a pytest fixture: ``server = prometheus_server(tmp_path, targets=[...])`` inside a fixture that
stops it. Prometheus listens on a free loopback port, scrapes every second and evaluates rules every
second (``for:`` durations still apply as written), stores its TSDB in a temporary directory, and is
stopped with SIGTERM (then SIGKILL after a timeout). The HTTP API is used through urllib only.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["PrometheusError", "PrometheusServer", "free_port", "prometheus_binary", "prometheus_server"]


class PrometheusError(RuntimeError):
    pass


def prometheus_binary() -> str | None:
    """The prometheus executable, or None (tests should skip: ``apt-get install prometheus``)."""
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """Start with ``start()`` (or ``with``), query with ``query()``/``alerts()``, stop with ``stop()``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        rule_files: Iterable[Path] = (),
        job: str = "streamer",
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        binary: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.binary = binary or prometheus_binary()
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.config_path = self.workdir / "prometheus.yml"
        self.storage = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.evaluation_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }

    def start(self, timeout: float = 60) -> PrometheusServer:
        if self.binary is None:
            raise PrometheusError("prometheus is not installed (Debian: apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        # JSON is YAML: no YAML library needed.
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.storage}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
               "--storage.tsdb.retention.time=1d", *self.extra_args]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        try:
            self.wait_for(self._ready, timeout=timeout, what="Prometheus /-/ready")
        except Exception:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 20) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP API ---------------------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its ``data``; raises PrometheusError for an error status."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: a list of ``{"metric": {...labels}, "value": [ts, "value"]}`` (empty if none)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        data = self.api("query", **params)
        if data["resultType"] != "vector":
            return [{"metric": {}, "value": data["result"]}]  # scalar or string
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing): ``{"labels", "annotations", "state", "activeAt", "value"}``."""
        return self.api("alerts")["alerts"]

    def targets_health(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60, interval: float = 0.25,
                 what: str | None = None) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that; raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except PrometheusError:
                raise
            except Exception as exc:  # e.g. a connection refused while a target starts
                last_error = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}"
                                   f" (last error: {last_error!r})\n--- prometheus log\n{self.log()[-4000:]}")
            time.sleep(interval)


def prometheus_server(workdir: Path, targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
    """Start a server for a fixture: ``yield prometheus_server(tmp_path, [...])`` then ``.stop()``."""
    return PrometheusServer(workdir, targets, **kwargs).start()
