"""`streamer evaluate` on a small labelled corpus: the printed NAB scores are the sweep of the offline scores;
rows the daemon would skip (late, repeated, unparseable) and files or labels it cannot use never stop a run."""

import csv
import gzip
import json
import math
import re
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from streamer.cli import main
from streamer.config import load_settings
from streamer.core.detector import OUT_OF_ORDER, Detector
from streamer.core.ticks import InvalidTick, Tick, TickDecoder
from streamer.offline import nab
from streamer.offline.evaluate import file_series
from streamer.offline.score import score_file, score_files
from tests.conftest import NAB, require_shared

FILES = ["realAdExchange/exchange-3_cpc_results.csv", "realTraffic/speed_7578.csv"]


@pytest.fixture
def corpus(tmp_path):
    require_shared(NAB)
    windows = json.loads((NAB / "windows.json").read_text())
    for name in FILES:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB / "data" / name, tmp_path / "data" / name)
    (tmp_path / "windows.json").write_text(json.dumps({k: windows[k] for k in FILES}))
    return tmp_path


def test_evaluate_prints_the_sweep_of_offline_scores(corpus, capsys, model):
    code = main(["evaluate", str(corpus / "data"), "--labels", str(corpus / "windows.json"),
                 "--output", str(corpus / "out")])
    out = capsys.readouterr().out
    assert code == 0
    table = re.findall(r"^(standard|reward_low_\w+)\s+(-?[\d.]+)\s+[\d.]+\s+(-?[\d.]+)$", out, re.M)
    printed = {name: float(score) for name, score, _ in table}
    chance = {name: float(random) for name, _, random in table}
    assert set(printed) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}

    windows = nab.load_windows(corpus / "windows.json")
    series = [file_series(k, score_file(corpus / "data" / k, load_settings(None), model)[0], windows[k]) for k in FILES]
    standard = nab.Profile("standard", 1.0, 0.11, 1.0)
    assert printed["standard"] == pytest.approx(nab.sweep(series, standard).normalised, abs=0.01)
    # beside it, the random detector's figure on the same rows and windows
    assert chance["standard"] == pytest.approx(nab.random_baseline(series, standard), abs=0.01)
    assert chance["standard"] < printed["standard"]
    assert all((corpus / "out" / k).is_file() for k in FILES)


def test_scoring_files_together_gives_each_file_its_own_fresh_scores(tmp_path, model):
    """Same stream names in different files stay apart; rows come back per file, names unprefixed."""
    import orjson

    rng = np.random.default_rng(5)
    paths = []
    for n, length in enumerate((300, 120, 260)):
        values = rng.normal(n, 1, length)
        lines = [{"stream": "cpu", "ts": 1.7e9 + 60 * i, "value": float(v)} for i, v in enumerate(values)]
        if n == 2:  # multivariate, and a second stream
            lines = [{"stream": "m", "ts": r["ts"], "values": {"a": r["value"], "b": -r["value"]}} for r in lines]
            lines += [{"stream": "cpu", "ts": 1.7e9 + 60 * i, "value": float(i % 7)} for i in range(200)]
        paths.append(tmp_path / f"f{n}.jsonl")
        paths[-1].write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    settings = load_settings(None)
    together = score_files(paths, settings, model)
    for path, (rows, summary) in zip(paths, together):
        alone, alone_summary = score_file(path, settings, model)
        assert (summary.rows, summary.scored, summary.out_of_order) == (
            alone_summary.rows, alone_summary.scored, alone_summary.out_of_order)
        assert [(r.line, r.stream, r.note) for r in rows] == [(r.line, r.stream, r.note) for r in alone]
        # Equal up to float32 rounding: the LSTM's matrix product rounds differently for other batch sizes.
        np.testing.assert_allclose([r.score for r in rows], [r.score for r in alone], rtol=0, atol=1e-6)


# --- rows the daemon skips never stop a run ------------------------------------------------------------------

T0 = datetime(2015, 3, 1)
LATE_AFTER = datetime(2015, 3, 2, 2, 55)  # then 02:00 .. 02:55 again (12 rows), then 03:00


def late_hour_rows(n: int = 600, spike: int = 450, late: bool = True) -> list[tuple[datetime, float]]:
    """Five-minute rows with one spike; after 2015-03-02 02:55 the hour 02:00..02:55 comes again, values
    far off (stepping them would change every later score), then 03:00 as if nothing happened."""
    rng = np.random.default_rng(13)
    rows = []
    for i in range(n):
        t = T0 + timedelta(minutes=5 * i)
        rows.append((t, 10 + 3 * math.sin(2 * math.pi * i / 288) + rng.normal(0, 0.3) + (25 if i == spike else 0)))
        if late and t == LATE_AFTER:
            rows += [(t.replace(minute=0) + timedelta(minutes=5 * k), 60.0 + k) for k in range(12)]
    return rows


def write_csv(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{v!r}\n" for t, v in rows))


def daemon_scores(stream: str, rows, model) -> tuple[np.ndarray, np.ndarray]:
    """What the daemon's detector gives these ticks (Detector.process is the daemon's core, pure)."""
    settings = load_settings(None)
    ticks = [Tick(stream, t.replace(tzinfo=timezone.utc).timestamp(), v) for t, v in rows]
    result = Detector(model, settings.detector).process(ticks, settings.resets.for_topic(""))
    return result.score, result.outcome


def evaluate(tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["evaluate", str(tmp_path / "data"), "--labels", str(tmp_path / "windows.json"),
                 "--output", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: str) -> dict[str, list[str]]:
    """The per-file table: name -> [rows, windows, out of order, invalid, max score, raw]."""
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.endswith(tuple("0123456789"))
            and "/" in line.split()[0]}


def printed_scores(out: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r"^(standard|reward_low_\w+)\s+(-?[\d.]+)", out, re.M)}


def test_evaluate_scores_a_corpus_with_a_late_hour(tmp_path, capsys, model):
    late, plain = late_hour_rows(), late_hour_rows(500, spike=300, late=False)
    assert [t for t, _ in late[323:338]] == [LATE_AFTER] + [LATE_AFTER.replace(minute=5 * k) for k in range(12)] \
        + [LATE_AFTER.replace(hour=3, minute=0), LATE_AFTER.replace(hour=3, minute=5)]
    write_csv(tmp_path / "data" / "realX" / "late.csv", late)
    write_csv(tmp_path / "data" / "realY" / "plain.csv", plain)
    labels = {"realX/late.csv": [["2015-03-02 02:00:00", "2015-03-02 03:30:00"],  # holds the late hour
                                 ["2015-03-02 12:40:00", "2015-03-02 15:10:00"]],  # the spike, row 450 + 12
              "realY/plain.csv": [["2015-03-01 23:40:00", "2015-03-02 02:10:00"]]}
    (tmp_path / "windows.json").write_text(json.dumps(labels))

    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    files = table(out)
    assert set(files) == {"realX/late.csv", "realY/plain.csv"}
    assert files["realX/late.csv"][:4] == ["612", "2", "12", "0"]  # rows, windows, out of order, invalid
    assert files["realY/plain.csv"][:4] == ["500", "1", "0", "0"]
    assert "12 out of order, 0 invalid" in out

    written = list(csv.DictReader((tmp_path / "out" / "realX" / "late.csv").open()))
    assert [r["timestamp"] for r in written] == [f"{t:%Y-%m-%d %H:%M:%S}" for t, _ in late]
    notes = [r["note"] for r in written]
    assert notes[324:336] == ["out_of_order"] * 12 and "out_of_order" not in notes[:324] + notes[336:]
    assert all(r["anomaly_score"] == "" for r in written[324:336])

    # Every other row: the daemon's detector's score for the same ticks, late ones skipped there too.
    expected, outcome = daemon_scores("late", late, model)
    assert np.flatnonzero(outcome == OUT_OF_ORDER).tolist() == list(range(324, 336))
    kept = [i for i in range(len(late)) if not 324 <= i < 336]
    np.testing.assert_allclose([float(written[i]["anomaly_score"]) for i in kept], expected[kept], rtol=0, atol=1e-6)
    assert expected[kept].max() > 0.3  # real scores, not only zeros

    # The NAB score: late rows score 0; windows start at the first 02:00 row (312), not at the late one (324).
    plain_scores, _ = daemon_scores("plain", plain, model)
    corpus = [nab.Series("realX/late.csv", np.nan_to_num(expected, nan=0.0), [(312, 342), (452, 482)]),
              nab.Series("realY/plain.csv", plain_scores, [(284, 314)])]
    for profile in (nab.Profile("standard", 1.0, 0.11, 1.0), nab.Profile("reward_low_FN_rate", 1.0, 0.11, 2.0)):
        assert printed_scores(out)[profile.name] == pytest.approx(nab.sweep(corpus, profile).normalised, abs=0.006)


def test_score_command_keeps_late_rows_with_a_note(tmp_path, capsys, model):
    late = late_hour_rows()
    write_csv(tmp_path / "late.csv", late)
    assert main(["score", str(tmp_path / "late.csv"), "--output", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "scored 600 of 612 rows" in out and "out of order: 12," in out
    written = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [i for i, r in enumerate(written) if r["note"] == "out_of_order"] == list(range(324, 336))


def clean_corpus(tmp_path, labels: dict | None = None) -> list[tuple[datetime, float]]:
    """realY/good.csv, a clean file with one labelled window, for the tests below to add trouble beside."""
    good = late_hour_rows(400, spike=300, late=False)
    write_csv(tmp_path / "data" / "realY" / "good.csv", good)
    windows = {"realY/good.csv": [["2015-03-01 23:40:00", "2015-03-02 02:10:00"]], **(labels or {})}
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    return good


def good_only_score(good, model) -> float:
    scores, _ = daemon_scores("good", good, model)
    return nab.sweep([nab.Series("realY/good.csv", scores, [(284, 314)])],
                     nab.Profile("standard", 1.0, 0.11, 1.0)).normalised


def test_evaluate_counts_and_skips_unparseable_cells(tmp_path, capsys, model):
    """Rows the daemon would reject as messages are counted by its reasons, kept with a note, score 0, and
    leave every other score as it is without them."""
    clean_corpus(tmp_path)
    clean = late_hour_rows(400, spike=300, late=False)
    lines = [f"{t:%Y-%m-%d %H:%M:%S},{v!r}" for t, v in clean]
    bad = {100: ("2015-03-01 08:20:00,abc", "bad_type"), 150: ("2015-03-01 12:30:00,", "bad_type"),
           200: ("2015-13-45 00:00:00,10.5", "bad_timestamp"), 250: ("2015-03-01 20:50:00", "malformed_csv"),
           300: ("2015-03-02 01:00:00,nan", "non_finite"), 350: ("2031-01-01 00:00:00,abc", "bad_type"),
           380: ("2015-03-02 07:40:00,1\xe9", "malformed_csv")}  # \xe9 written as Latin-1: not UTF-8
    for at in sorted(bad, reverse=True):
        lines.insert(at, bad[at][0])
    path = tmp_path / "data" / "realX" / "cells.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(("timestamp,value\n" + "\n".join(lines) + "\n").encode("latin-1"))
    labels = json.loads((tmp_path / "windows.json").read_text())
    labels["realX/cells.csv"] = [["2015-03-02 05:00:00", "2015-03-02 06:00:00"]]  # holds the 2031 row
    (tmp_path / "windows.json").write_text(json.dumps(labels))

    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    assert table(out)["realX/cells.csv"][:4] == ["407", "1", "0", "7"]
    assert "0 out of order, 7 invalid {'bad_type': 3, 'bad_timestamp': 1, 'malformed_csv': 2, 'non_finite': 1}" in out
    assert f"{path}:102: column 'value' is not a number: 'abc'" in out  # file and line (header is line 1)

    written = list(csv.DictReader((tmp_path / "out" / "realX" / "cells.csv").open()))
    rows_at = [at + sorted(bad).index(at) for at in sorted(bad)]  # where each bad line ended up
    assert [written[i]["note"] for i in rows_at] == [f"invalid:{bad[at][1]}" for at in sorted(bad)]
    assert all(written[i]["anomaly_score"] == "" for i in rows_at)
    others = [r for i, r in enumerate(written) if i not in rows_at]
    expected, _ = daemon_scores("cells", clean, model)
    np.testing.assert_allclose([float(r["anomaly_score"]) for r in others], expected, rtol=0, atol=1e-6)
    # A skipped row's own timestamp (2031, a time the daemon never went by) does not move a window edge.
    stamps = [r["timestamp"] for r in written]
    located = file_series("realX/cells.csv", score_file(path, load_settings(None), model)[0],
                      nab.load_windows(tmp_path / "windows.json")["realX/cells.csv"]).windows
    assert located == ((stamps.index("2015-03-02 05:00:00"), stamps.index("2015-03-02 06:00:00")),)

    code, out, err = evaluate(tmp_path, capsys, "--strict")
    assert code == 2 and f"{path}:102: column 'value' is not a number" in err and "Traceback" not in err


def test_offline_rejects_json_lines_for_the_daemons_reasons(tmp_path, model):
    """Each JSON line scored offline gets the answer the daemon's decoder gives the same bytes."""
    lines = [b'{"stream": "a", "ts": 1700000000, "value": 1.5}', b'{"stream": "a", "ts": 1700000060, "value": NaN}',
             b'{broken', b'[1, 2]', b'{"stream": "a", "ts": "yesterday", "value": 1}', b'{"stream": "a", "value": 1}',
             b'{"stream": "a", "ts": 1700000120, "value": "7"}', b'{"stream": "", "ts": 1700000180, "value": 1}',
             b'{"stream": "a", "ts": 1700000240, "value": 2, "extra": Infinity}',  # orjson rejects, the daemon not
             b'{"stream": "a", "ts": 1700000300, "value": 3}', b'{"stream": "a", "ts": 1700000300, "value": 4}',
             b'{"stream": "a", "ts": 1700000360, "value": 1e999}']
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = load_settings(None)
    decoder = TickDecoder(settings.ticks)

    def daemon_note(payload: bytes) -> str:
        try:
            decoder.decode(payload)
        except InvalidTick as bad:
            return f"invalid:{bad.reason}"
        return ""

    for paths in ([path], [tmp_path / "other.jsonl", path]):
        paths[0].write_bytes(path.read_bytes())
        rows, summary = score_files(paths, settings, model)[-1]
        notes = [r.note for r in rows]
        assert notes == [daemon_note(line) for line in lines[:10]] + ["out_of_order", "invalid:non_finite"]
        assert notes.count("") == 3 and [r.stream for r in rows if not r.note] == ["a"] * 3
        assert sum(summary.invalid.values()) == 8 and summary.out_of_order == 1 and summary.scored == 3
    rows, _ = score_file(path, settings, model)
    assert [r.note for r in rows] == notes


def test_evaluate_leaves_out_empty_files(tmp_path, capsys, model):
    good = clean_corpus(tmp_path, {"realX/empty.csv": [["2015-03-01 00:00:00", "2015-03-01 01:00:00"]],
                                   "realX/header.csv": [], "realX/blank.jsonl": []})
    (tmp_path / "data" / "realX").mkdir()
    (tmp_path / "data" / "realX" / "empty.csv").write_bytes(b"")
    (tmp_path / "data" / "realX" / "header.csv").write_text("timestamp,value\n")
    (tmp_path / "data" / "realX" / "blank.jsonl").write_text("\n\n")
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    assert set(table(out)) == {"realY/good.csv"}
    assert "not scored: realX/blank.jsonl (no rows; 0 windows); realX/empty.csv (no rows; 1 windows); " \
           "realX/header.csv (no rows; 0 windows)" in out
    assert printed_scores(out)["standard"] == pytest.approx(good_only_score(good, model), abs=0.006)
    assert (tmp_path / "out" / "realX" / "header.csv").read_text().startswith("timestamp,stream,value")


def test_evaluate_leaves_out_unreadable_files(tmp_path, capsys, model):
    good = clean_corpus(tmp_path, {"realX/latin1.csv": [], "realX/broken.csv.gz": [], "realX/nots.csv": []})
    (tmp_path / "data" / "realX").mkdir()
    (tmp_path / "data" / "realX" / "latin1.csv").write_bytes(b"timestamp,t\xe9\n2015-03-01 00:00:00,1\n")
    whole = gzip.compress((tmp_path / "data" / "realY" / "good.csv").read_bytes())
    (tmp_path / "data" / "realX" / "broken.csv.gz").write_bytes(whole[:len(whole) // 2])  # cut short
    (tmp_path / "data" / "realX" / "nots.csv").write_text("time,value\n1,2\n")
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    assert set(table(out)) == {"realY/good.csv"}
    left_out = out.split("not scored: ")[1].splitlines()[0]
    assert "realX/broken.csv.gz (" in left_out and "broken.csv.gz:" in left_out and "cannot read the file" in left_out
    assert "realX/latin1.csv (" in left_out and "latin1.csv:1: the header is not UTF-8 text" in left_out
    assert "realX/nots.csv (" in left_out and "nots.csv:1: no 'ts' or 'timestamp' column" in left_out
    assert printed_scores(out)["standard"] == pytest.approx(good_only_score(good, model), abs=0.006)

    code, out, err = evaluate(tmp_path, capsys, "--strict")
    assert code == 2 and re.match(r"streamer evaluate: \S+/(broken\.csv\.gz|latin1\.csv|nots\.csv):\d+: ", err)
    assert "Traceback" not in err


def test_evaluate_reports_label_mismatches(tmp_path, capsys, model):
    good = clean_corpus(tmp_path, {f"realX/gone{k}.csv": [] for k in range(12)})
    write_csv(tmp_path / "data" / "realX" / "unlabelled.csv", late_hour_rows(50, spike=10, late=False))
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    assert set(table(out)) == {"realY/good.csv"}
    assert "not in the labels, skipped: realX/unlabelled.csv" in out
    assert (f"in the labels but not under {tmp_path / 'data'}, not scored: 12 files: realX/gone0.csv, "
            "realX/gone1.csv, realX/gone10.csv") in out and "(2 more)" in out
    assert printed_scores(out)["standard"] == pytest.approx(good_only_score(good, model), abs=0.006)

    (tmp_path / "windows.json").write_text(json.dumps({"realX/other.csv": []}))
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 2 and "has labels in" in err and "'realX/other.csv'" in err


def test_evaluate_leaves_out_a_window_that_holds_no_row(tmp_path, capsys, model):
    good = clean_corpus(tmp_path)
    labels = json.loads((tmp_path / "windows.json").read_text())
    labels["realY/good.csv"].append(["2016-01-01 00:00:00", "2016-01-02 00:00:00"])  # after the last row
    (tmp_path / "windows.json").write_text(json.dumps(labels))
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 0, err
    assert table(out)["realY/good.csv"][1] == "1"
    assert "windows that hold no row, not scored: realY/good.csv: window 2016-01-01 00:00:00 .. " in out
    assert printed_scores(out)["standard"] == pytest.approx(good_only_score(good, model), abs=0.006)
    code, out, err = evaluate(tmp_path, capsys, "--strict")
    assert code == 2 and "realY/good.csv: window 2016-01-01 00:00:00" in err and "holds no row" in err


@pytest.mark.parametrize("labels, message", [
    ('{"realY/good.csv": [["2015-03-01", ', "windows.json: not JSON"),
    ('{"realY/good.csv": [["2015-03-01", "soon"]]}', "windows.json: 'realY/good.csv': not an ISO-8601 time: 'soon'"),
    (None, "labels file not found"),
])
def test_evaluate_names_a_bad_labels_file(tmp_path, capsys, labels, message):
    clean_corpus(tmp_path)
    if labels is None:
        (tmp_path / "windows.json").unlink()
    else:
        (tmp_path / "windows.json").write_text(labels)
    code, out, err = evaluate(tmp_path, capsys)
    assert code == 2 and message in err and "Traceback" not in err
