"""What the daemon (`streamer run`) does at run time, condensed, to run inside the emulated sandbox of
streamer.service.

Imports the daemon's run loop (and so every module `streamer run` imports; torch is not among them: only
`streamer train` imports it), loads the bundled model, scores ticks with the detector (whose kernel numba
compiles at start-up: LLVM JIT code in writable-then-executable memory), saves a checkpoint of the
detector's state through the daemon's own `LocalStore` into the state directory ($STATE_DIR: a temporary
file, fsync, atomic replace, fsync of the directory), twice, and reads it back; serves Prometheus metrics
with the daemon's `MetricsServer` and scrapes itself, connects a non-blocking TCP socket through a
selector (as kafka-python does), sends the daemon's sd_notify datagram, handles SIGTERM and uses threads.
Prints "WORKLOAD OK" at the end.

With --mdwe-probe it only does what needs no JIT: numpy arithmetic (one LSTM step of the bundled model's
weights, a BLAS matrix product and an SVD), importing nothing from numba (nor torch); this shows that the
sandbox emulation itself lets ordinary code run, so that a failure of the full workload is the JIT's.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import urllib.request

import numpy as np
from prometheus_client import CollectorRegistry

if "--mdwe-probe" in sys.argv:  # precompiled code only (numpy, OpenBLAS): works under MemoryDenyWriteExecute
    from streamer.core.model import Forecaster  # numpy only: no numba

    model = Forecaster.load()
    w = model.weights
    hidden = model.hidden_size
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32)[:, None]
    h = c = np.zeros((64, hidden), dtype=np.float32)

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    for _ in range(3):  # torch's LSTMCell, gates i, f, g, o
        gates = x @ w["cell.weight_ih"].T + h @ w["cell.weight_hh"].T + w["cell.bias_ih"] + w["cell.bias_hh"]
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
    out = h @ w["head.weight"].T + w["head.bias"]
    assert out.shape == (64, 2) and np.isfinite(out).all()
    np.linalg.svd(np.random.default_rng(0).normal(size=(64, 64)))
    assert "numba" not in sys.modules and "torch" not in sys.modules, sorted(sys.modules)
    print("WORKLOAD OK")
    sys.exit(0)

import streamer.daemon.loop  # noqa: E402,F401 - what `streamer run` imports (after the probe, which must not)
from streamer.config import DetectorSettings  # noqa: E402
from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.core.ticks import Tick  # noqa: E402
from streamer.daemon import systemd  # noqa: E402
from streamer.daemon.checkpoint import Checkpoint, LocalStore  # noqa: E402
from streamer.daemon.metrics import Health, Metrics, MetricsServer  # noqa: E402

model = Forecaster.load()
detector = Detector(model, DetectorSettings())
result = detector.process([Tick(f"s{i % 8}", 1.7e9 + 60.0 * i, float(i % 5)) for i in range(400)])
assert np.isfinite(result.score).all() and (result.outcome == 0).all()
streams = [f"s{i}" for i in range(8)]
np.linalg.svd(np.random.default_rng(0).normal(size=(64, 64)))

with tempfile.TemporaryDirectory(dir=os.environ.get("STATE_DIR")) as state:
    store = LocalStore(state, "streamer", model.fingerprint())  # as Daemon._open_store makes it
    assert store.load("ticks", 0) is None
    for offset in (200, 400):  # the second save replaces the first
        store.save(Checkpoint("ticks", 0, offset, store.model, detector.export(streams)))
    loaded = store.load("ticks", 0)
    assert loaded is not None and loaded.offset == 400 and loaded.states.names == streams
    assert np.array_equal(loaded.states.h, detector.export(streams).h)
    restored = Detector(model, DetectorSettings())
    restored.restore(loaded.states)
    assert np.array_equal(restored.export(streams).c, detector.export(streams).c)
    assert sorted(os.listdir(os.path.join(state, "streamer", "ticks"))) == ["0.ckpt"]  # no temporary left

registry = CollectorRegistry()
Metrics(registry, model_name="bundled")  # registers the daemon's metrics in it
health = Health()
health.ready = True
server = MetricsServer(registry, health, "127.0.0.1", 0).start()
try:
    base = f"http://127.0.0.1:{server.port}"
    body = urllib.request.urlopen(f"{base}/metrics", timeout=10).read()
    assert b"streamer_" in body, body[:500]
    assert urllib.request.urlopen(f"{base}/readyz", timeout=10).status == 200
finally:
    server.stop()

listener = socket.create_server(("127.0.0.1", 0))
client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
client.setblocking(False)
client.connect_ex(listener.getsockname())
with selectors.DefaultSelector() as sel:
    sel.register(client, selectors.EVENT_WRITE)
    assert sel.select(timeout=10)
conn, _ = listener.accept()
client.send(b"x")
assert conn.recv(1) == b"x"

name = f"streamer-sandbox-{os.getpid()}"
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.bind("\0" + name)
    assert systemd.ready("scoring", env={"NOTIFY_SOCKET": "@" + name})  # the daemon's sd_notify client
    assert notify.recv(64) == b"READY=1\nSTATUS=scoring"

got = []
signal.signal(signal.SIGTERM, lambda *_: got.append("TERM"))
os.kill(os.getpid(), signal.SIGTERM)
assert got == ["TERM"]

worker = threading.Thread(target=lambda: got.append(detector.export(streams).h.shape))
worker.start()
worker.join(timeout=10)
assert got[-1] == (8, model.hidden_size)

assert "torch" not in sys.modules, "the daemon's workload imported torch"
print("WORKLOAD OK")
