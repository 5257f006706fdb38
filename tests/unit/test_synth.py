"""The synthetic stream generator and the `streamer synth` command."""

import argparse
import json
from collections import defaultdict
from importlib.resources import files

import numpy as np
import pytest

from streamer.config import Settings, TickSettings
from streamer.core.ticks import TickDecoder, read_records
from streamer.devtools.synth import (
    ANOMALY_KINDS,
    DEMO,
    DEMO_COMMAND,
    add_arguments,
    demo_series,
    generate,
    run,
    write_jsonl_gz,
)


def _same(a, b):
    assert [s.name for s in a] == [s.name for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.timestamps, y.timestamps)
        np.testing.assert_array_equal(x.values, y.values)
        assert x.anomalies == y.anomalies and x.kinds == y.kinds
        assert (x.segments is None) == (y.segments is None)
        if x.segments is not None:
            np.testing.assert_array_equal(x.segments, y.segments)


def test_same_seed_same_streams_and_other_seed_differs():
    _same(generate(12, 500, seed=3, anomalies=True, segment_fraction=0.2),
          generate(12, 500, seed=3, anomalies=True, segment_fraction=0.2))
    a, b = generate(4, 300, seed=1), generate(4, 300, seed=2)
    assert not all(np.array_equal(x.values, y.values) for x, y in zip(a, b))


def test_streams_are_valid_and_varied():
    series = generate(60, 600, seed=5, segment_fraction=0.1)
    for s in series:
        assert len(s.values) == len(s.timestamps) == 600
        assert np.all(np.isfinite(s.values))
        assert np.all(np.diff(s.timestamps) > 0)
        assert not s.anomalies
    spacing = [float(np.median(np.diff(s.timestamps))) for s in series]
    nearest = [min((60, 300, 3600), key=lambda i: abs(i - x)) for x in spacing]  # up to jitter
    assert set(nearest) == {60, 300, 3600} and all(abs(x / i - 1) < 0.2 for x, i in zip(spacing, nearest))
    levels = np.array([np.median(np.abs(s.values)) for s in series])
    assert levels.max() / max(levels[levels > 0].min(), 1e-12) > 1e4  # offsets/scales over many decades
    assert sum(s.segments is not None for s in series) == 6
    assert len({s.name.split("-", 2)[2] for s in series}) >= 8  # many combinations of components


def test_anomalies_are_labelled_injections_into_the_clean_streams():
    n, length, after = 20, 800, 500
    clean = generate(n, length, seed=9, anomalies=False, anomaly_after=after)
    dirty = generate(n, length, seed=9, anomalies=True, anomaly_fraction=0.25, anomaly_after=after)
    anomalous = [s for s in dirty if s.anomalies]
    assert len(anomalous) == 5
    assert sorted(k for s in anomalous for k in s.kinds) == sorted(ANOMALY_KINDS[:5])
    for c, d in zip(clean, dirty):
        assert c.name == d.name
        np.testing.assert_array_equal(c.timestamps, d.timestamps)
        if not d.anomalies:
            np.testing.assert_array_equal(c.values, d.values)
            continue
        (start, end), = d.anomalies
        assert after <= start < end <= length
        assert d.labels().sum() == end - start
        np.testing.assert_array_equal(c.values[:start], d.values[:start])  # untouched before the anomaly
        assert not np.array_equal(c.values[start:end], d.values[start:end]) or d.kinds == ["dropout"]


def test_wire_file_round_trips_interleaved_by_time(tmp_path):
    series = generate(5, 200, seed=4, anomalies=True, segment_fraction=0.4)
    path = tmp_path / "s.jsonl.gz"
    assert write_jsonl_gz(series, path, TickSettings()) == 1000
    decoder = TickDecoder(TickSettings())
    got = defaultdict(list)
    last = -np.inf
    for record in read_records(path, TickSettings()):
        (tick,) = decoder.decode_obj(record.obj)
        assert tick.ts >= last
        last = tick.ts
        got[tick.stream].append((tick.ts, tick.value, tick.segment))
    for s in series:
        ts, values, segments = zip(*got[s.name])
        np.testing.assert_array_equal(ts, s.timestamps)
        np.testing.assert_array_equal(values, s.values)
        assert list(segments) == ([None] * 200 if s.segments is None else s.segments.tolist())
    again = tmp_path / "again.jsonl.gz"
    write_jsonl_gz(series, again, TickSettings())
    assert again.read_bytes() == path.read_bytes()  # byte-reproducible (no gzip timestamp)


def test_custom_field_names(tmp_path):
    fields = TickSettings(stream_field="sensor", ts_field="time", value_field="v")
    path = tmp_path / "s.jsonl"
    write_jsonl_gz(generate(2, 10, seed=0), path, fields)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"sensor", "time", "v"}


def test_demo_recording_matches_its_recipe(tmp_path):
    series = demo_series()
    assert len(series) == 20 and all(len(s.values) == 1500 for s in series)
    anomalous = [s for s in series if s.anomalies]
    assert sorted(k for s in anomalous for k in s.kinds) == sorted(["spike_burst", "level_shift",
                                                                    "variance_change"])
    assert all(start >= 800 for s in anomalous for start, _ in s.anomalies)
    assert any(s.segments is not None for s in series)
    assert all(np.all(np.diff(s.timestamps) == 60) and s.timestamps[0] == DEMO["start"] for s in series)
    bundled = files("streamer").joinpath("data", "demo.jsonl.gz")
    assert bundled.is_file(), f"regenerate it with: {DEMO_COMMAND}"
    fresh = tmp_path / "demo.jsonl.gz"
    write_jsonl_gz(series, fresh, TickSettings())
    assert fresh.read_bytes() == bundled.read_bytes(), f"stale demo file; regenerate it with: {DEMO_COMMAND}"
    assert len(fresh.read_bytes()) < 1_000_000


def test_synth_command(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, labels = tmp_path / "out.jsonl.gz", tmp_path / "labels.json"
    args = parser.parse_args(["--output", str(out), "--streams", "6", "--length", "120", "--seed", "2",
                              "--anomalies", "--anomaly-fraction", "0.5", "--start", "2026-01-01T00:00:00Z",
                              "--interval", "60", "--regular", "--labels", str(labels)])
    assert run(args, Settings()) == 0
    expected = generate(6, 120, 2, True, interval=60.0, start=1767225600.0, anomaly_fraction=0.5, regular=True)
    reference = tmp_path / "ref.jsonl.gz"
    write_jsonl_gz(expected, reference, TickSettings())
    assert out.read_bytes() == reference.read_bytes()
    windows = json.loads(labels.read_text())
    assert sum(len(w) for w in windows.values()) == 3
    for s in expected:
        for w, (a, b), kind in zip(windows[s.name], s.anomalies, s.kinds):
            assert (w["start"], w["end"], w["kind"]) == (s.timestamps[a], s.timestamps[b - 1], kind)


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        generate(3, 1, seed=0)
