"""What the daemon does at run time, condensed, to run inside the emulated sandbox of streamer.service.

Loads the bundled model, scores ticks with the detector (whose kernel numba compiles at start-up: LLVM
JIT code in writable-then-executable memory), writes and atomically replaces a checkpoint in the state
directory, serves Prometheus metrics over HTTP and scrapes itself, connects a non-blocking TCP socket
through a selector (as kafka-python does), sends an sd_notify datagram, handles SIGTERM and uses threads.
Prints "WORKLOAD OK" at the end. With --sequence-lstm it also runs torch.nn.LSTM, which uses oneDNN; with
--mdwe-probe it only steps a torch LSTMCell (precompiled GEMMs, no JIT).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import tempfile
import urllib.request

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Gauge, start_http_server

if "--mdwe-probe" in sys.argv:  # torch's precompiled path alone (no JIT): works under MemoryDenyWriteExecute
    with torch.no_grad():
        torch.nn.LSTMCell(1, 32)(torch.ones(64, 1), (torch.zeros(64, 32), torch.zeros(64, 32)))
    print("WORKLOAD OK")
    sys.exit(0)

from streamer.config import DetectorSettings  # noqa: E402 - after the probe, which must not import numba
from streamer.core.detector import Detector  # noqa: E402
from streamer.core.model import Forecaster  # noqa: E402
from streamer.core.ticks import Tick  # noqa: E402

detector = Detector(Forecaster.load(), DetectorSettings())
result = detector.process([Tick(f"s{i % 8}", 1.7e9 + 60.0 * i, float(i % 5)) for i in range(400)])
assert np.isfinite(result.score).all() and (result.outcome == 0).all()
h = c = torch.from_numpy(detector.export(["s0"]).h)
if "--sequence-lstm" in sys.argv:
    torch.nn.LSTM(1, 32, batch_first=True)(torch.zeros(8, 20, 1))
np.linalg.svd(np.random.default_rng(0).normal(size=(64, 64)))

with tempfile.TemporaryDirectory(dir=os.environ.get("STATE_DIR")) as state:
    path = os.path.join(state, "checkpoint.pt")
    torch.save({"h": h, "c": c}, path + ".tmp")
    with open(path + ".tmp", "rb+") as f:
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    assert torch.load(path, weights_only=True)["h"].shape == h.shape

registry = CollectorRegistry()
Gauge("sandbox_probe", "probe", registry=registry).set(1)
server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10).read()
assert b"sandbox_probe 1.0" in body
server.shutdown()

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

address = f"\0streamer-sandbox-{os.getpid()}"
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.bind(address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"READY=1", address)
    assert notify.recv(64) == b"READY=1"

got = []
signal.signal(signal.SIGTERM, lambda *_: got.append("TERM"))
os.kill(os.getpid(), signal.SIGTERM)
assert got == ["TERM"]
print("WORKLOAD OK")
