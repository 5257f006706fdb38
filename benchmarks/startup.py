"""What starting `streamer run` costs: importing the daemon, the time to its first commit, its peak RSS.

    python -m benchmarks.startup [--streams 10000] [--messages 100000] [--repeat 3] [--env MALLOC_ARENA_MAX=2]

1. *import*: ``import streamer.daemon.loop`` in a fresh interpreter, ``--repeat`` times: wall time of the
   import statement, the process's RSS after it (VmRSS) and whether torch was imported with it.
2. *first commit*: ``--messages`` ticks over ``--streams`` streams are produced to a fresh local Tansu broker;
   then the real ``streamer run`` (a subprocess, default settings plus a fresh group, ``--from earliest``, a free
   metrics port and the bench's Tansu-friendly group timings) is timed from its start to the group's first
   committed offset and to every offset committed (read by a separate client every 10 ms), and its peak RSS
   (VmHWM) is read then, before it is stopped. Its log gives the steps in between: ``metrics listening``
   (imports, model and kernel loaded, `Daemon` built) and the first ``partitions assigned`` (group joined).
   With a checkpoint store (local, a temporary directory) the first commit follows the first checkpoint, right
   after a partition's first batch; without one, right after the first batch (then every
   ``kafka.commit_interval_ms``, and at every empty poll).
   ``NUMBA_CACHE_DIR`` points at a directory of its own: the first run compiles the kernel into it (reported as
   cold), the ``--repeat`` runs per store after it load it (warm), as a restart under systemd or in the image
   does. Likewise the package's bytecode: ``PYTHONDONTWRITEBYTECODE`` is left out of the daemon's environment,
   so the first run writes it and the others read it, as an installed package does (pip compiles it at install);
   compiling the sources at every start costs peak RSS that an installed daemon does not spend
   (docs/perf-history.md, "Peak RSS and the 0.7 x ratio").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from math import nan
from pathlib import Path

from benchmarks.bench import FAST_GROUP, REPO, produce

TARGET_FIRST_COMMIT_S = 4.0
TARGET_PEAK_RSS_MIB = 200.0

IMPORT_PROBE = """
import os, sys, time
started = time.perf_counter()
import streamer.daemon.loop
took = time.perf_counter() - started
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(took, rss * 1024, "torch" in sys.modules)
"""


def import_cost(repeat: int) -> dict:
    """Median wall time and RSS of ``import streamer.daemon.loop`` in fresh interpreters (after a first,
    unmeasured one that writes the bytecode caches)."""
    runs = []
    for i in range(repeat + 1):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.split()
        if i:
            runs.append((float(out[0]), int(out[1]), out[2] == "True"))
    return {"seconds": [r[0] for r in runs], "rss": [r[1] for r in runs], "torch": any(r[2] for r in runs)}


def _status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (VmHWM, VmRSS) in bytes, 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def first_commit(bootstrap: str, topic: str, counts: dict[str, int], cache: Path, store: Path | None,
                 log_path: Path, extra_env: dict[str, str] | None = None) -> dict:
    """One ``streamer run`` from its start to every offset of ``topic`` committed (``counts`` per partition)."""
    from kafka import KafkaConsumer, TopicPartition

    group = f"startup-{uuid.uuid4().hex[:10]}"
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # see the module docstring
    env = {**inherited, "NUMBA_CACHE_DIR": str(cache), "STREAMER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
           "STREAMER_KAFKA__TOPICS": json.dumps([topic]), "STREAMER_KAFKA__GROUP_ID": group,
           "STREAMER_KAFKA__CONSUMER": json.dumps(FAST_GROUP), "STREAMER_METRICS__PORT": "0",
           "STREAMER_LOG__LEVEL": "INFO", "STREAMER_LOG__FORMAT": "json", **(extra_env or {})}
    if store is not None:
        env["STREAMER_CHECKPOINT__PATH"] = str(store)
    checker = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    parts = {TopicPartition(topic, int(p)): n for p, n in counts.items()}
    with open(log_path, "wb") as log:
        wall, started = time.time(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamer", "run", "--from", "earliest"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    first = done = None
    try:
        deadline = started + 180
        while done is None:
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"streamer run stopped or timed out before committing, log {log_path}")
            committed = {tp: checker.committed(tp) or 0 for tp in parts}
            now = time.perf_counter() - started
            if first is None and any(committed.values()):
                first = now
            if all(committed[tp] >= n for tp, n in parts.items()):
                done = now
            time.sleep(0.01)
        peak = _status(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        checker.close()
    return {"first_commit_s": first, "all_committed_s": done, "peak_rss": peak, **_log_marks(log_path, wall)}


def _log_marks(log_path: Path, wall: float) -> dict:
    """Seconds from the start to the daemon's first ``metrics listening`` and ``partitions assigned`` lines."""
    marks = {"metrics listening": "built_s", "partitions assigned": "assigned_s"}
    out: dict = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        key = marks.get(entry.get("msg")) if isinstance(entry, dict) else None
        if key and key not in out:
            out[key] = entry["ts"] - wall
    return out


def _median_range(values: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    values = [v / scale for v in values]
    text = fmt.format(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000, help="streams the ticks are spread over")
    parser.add_argument("--messages", type=int, default=100_000, help="ticks produced before the daemon starts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per figure (median and range)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write every result as JSON here")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="also in the daemon's environment, e.g. the unit's MALLOC_ARENA_MAX=2 (repeatable)")
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)

    from streamer.devtools.broker import LocalBroker, create_topic

    results: dict = {"import": import_cost(args.repeat), "runs": {}}
    imp = results["import"]
    print(f"import streamer.daemon.loop: {_median_range(imp['seconds'])} s, RSS after it "
          f"{_median_range(imp['rss'], 2**20, '{:.0f}')} MiB, torch imported: {imp['torch']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="streamer-startup-") as tmp, LocalBroker() as broker:
        topic = f"startup-{uuid.uuid4().hex[:6]}"
        create_topic(broker.bootstrap, topic, partitions=args.partitions)
        counts = produce(broker.bootstrap, topic, args.messages, args.streams, "kafka-python")["counts"]
        cache = Path(tmp) / "numba-cache"
        print(f"streamer run over {args.messages:,} ticks of {args.streams:,} streams, {args.partitions} partitions:")
        for name, with_store in (("checkpoint store (local)", True), ("no checkpoint store", False)):
            runs = results["runs"][name] = []
            for _ in range(args.repeat + (0 if cache.exists() else 1)):
                store = Path(tmp) / f"store-{uuid.uuid4().hex[:6]}" if with_store else None
                if store is not None:
                    store.mkdir()
                cold = not cache.exists()
                log_path = Path(tmp) / f"run-{len(runs)}-{'store' if with_store else 'none'}.log"
                run = {**first_commit(broker.bootstrap, topic, counts, cache, store, log_path, extra_env),
                       "cold_cache": cold}
                runs.append(run)
                print(f"  {name}, {'cold' if cold else 'warm'} kernel cache: built {run.get('built_s', nan):.2f} s, "
                      f"assigned {run.get('assigned_s', nan):.2f} s, first commit {run['first_commit_s']:.2f} s, "
                      f"all committed {run['all_committed_s']:.2f} s, peak RSS {run['peak_rss'] / 2**20:.0f} MiB",
                      flush=True)
    print("Targets (warm kernel cache, as under systemd and in the image; median (range) of the runs):")
    for name, runs in results["runs"].items():
        warm = [r for r in runs if not r["cold_cache"]]
        first = [r["first_commit_s"] for r in warm]
        peak = [r["peak_rss"] for r in warm]
        own = [r["built_s"] + r["first_commit_s"] - r["assigned_s"] for r in warm if "assigned_s" in r]
        print(f"  [{'PASS' if statistics.median(first) <= TARGET_FIRST_COMMIT_S else 'FAIL'}] first commit <= "
              f"{TARGET_FIRST_COMMIT_S:g} s after start, {name}: {_median_range(first)} s"
              + (f"; the daemon's own part (start -> built, assigned -> first commit): {_median_range(own)} s"
                 if own else ""))
        print(f"  [{'PASS' if max(peak) / 2**20 <= TARGET_PEAK_RSS_MIB else 'FAIL'}] peak RSS <= "
              f"{TARGET_PEAK_RSS_MIB:.0f} MiB at {args.streams:,} streams, {name}: "
              f"{_median_range(peak, 2**20, '{:.0f}')} MiB")
    if args.json_path:
        args.json_path.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
