import csv
import gzip
import json
import math

import pytest

from streamer.cli import main
from streamer.core.kernel import DECADES


def write_recording(path, bad_row=False):
    lines = ["stream,ts,value,segment"]
    for i in range(120):
        for stream in ("a", "b"):
            segment = "one" if i < 60 else "two"
            value = (i % 7) * 1.0 + (50 if stream == "b" and i == 110 else 0)
            lines.append(f"{stream},{1_700_000_000 + 60 * i},{value},{segment}")
        if bad_row and i == 30:
            lines.append("a,1700001800.5,not-a-number,one")
    path.write_text("\n".join(lines) + "\n")


def test_score_writes_every_row_and_a_plot(tmp_path, capsys):
    src, out, png = tmp_path / "rec.csv", tmp_path / "scores.csv", tmp_path / "plot.png"
    write_recording(src)
    assert main(["score", str(src), "--output", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 240
    assert set(rows[0]) == {"timestamp", "stream", "value", "anomaly_score", "error", "forecast", "note", "device",
                            "device_score", "evidence"}
    assert {r["evidence"] for r in rows if float(r["anomaly_score"]) == 0} == {""}
    assert {r["evidence"] for r in rows if float(r["anomaly_score"]) > 0} <= {"forecast", "time_of_day", "range"}
    assert {(r["device"], r["device_score"]) for r in rows} == {("", "")}  # univariate ticks: no device
    assert [r["note"] for r in rows if r["note"]] == ["reset:segment"] * 2  # the segment change, once per stream
    assert len({(r["stream"], r["timestamp"]) for r in rows}) == 240
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
    assert png.stat().st_size > 10_000
    assert "scored 240 of 240 rows" in capsys.readouterr().out


def test_score_plot_resolution_and_palette(tmp_path, capsys):
    from PIL import Image

    src, out = tmp_path / "rec.csv", tmp_path / "scores.csv"
    write_recording(src)
    sizes = {}
    for name, extra in {"default": [], "dpi60": ["--dpi", "60"], "palette": ["--dpi", "60", "--colors", "64"]}.items():
        png = tmp_path / f"{name}.png"
        assert main(["score", str(src), "--output", str(out), "--plot", str(png), *extra]) == 0
        with Image.open(png) as image:
            sizes[name] = (image.size, image.mode, png.stat().st_size)
    (width, height), mode, default_bytes = sizes["default"]
    assert width == 14 * 90 and mode == "RGBA"  # the default is unchanged: 14 inches at 90 dpi, full colour
    assert sizes["dpi60"][:2] == ((14 * 60, round(height * 60 / 90)), "RGBA")
    assert sizes["dpi60"][2] < default_bytes
    with Image.open(tmp_path / "palette.png") as image:
        assert image.size == (14 * 60, round(height * 60 / 90)) and image.mode == "P"
        assert len(image.getcolors(256)) <= 64
    assert sizes["palette"][2] < sizes["dpi60"][2] / 2
    for bad in (["--dpi", "0"], ["--colors", "1"], ["--colors", "257"]):
        with pytest.raises(SystemExit):
            main(["score", str(src), "--output", str(out), "--plot", str(tmp_path / "bad.png"), *bad])
        assert "error: argument" in capsys.readouterr().err


def test_score_skips_and_reports_the_bad_line_or_stops_there_when_strict(tmp_path, capsys):
    src, out, clean = tmp_path / "rec.csv", tmp_path / "scores.csv", tmp_path / "clean.csv"
    write_recording(src, bad_row=True)
    assert main(["score", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scored 240 of 241 rows" in printed and "invalid: {'bad_type': 1}" in printed
    # header, then 31 ticks of two streams, then the bad row: line 64
    assert f"{src}:64: column 'value' is not a number: 'not-a-number'" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 241 and [i for i, r in enumerate(rows) if r["note"].startswith("invalid")] == [62]
    assert rows[62] == {"timestamp": "1700001800.5", "stream": "a", "value": "", "anomaly_score": "", "error": "",
                        "forecast": "", "note": "invalid:bad_type", "device": "", "device_score": "", "evidence": ""}
    # The other rows score as if the bad one were not there, as in the daemon, which skips it.
    write_recording(clean)
    assert main(["score", str(clean), "--output", str(tmp_path / "clean_scores.csv")]) == 0
    assert rows[:62] + rows[63:] == list(csv.DictReader((tmp_path / "clean_scores.csv").open()))

    capsys.readouterr()
    assert main(["score", str(src), "--output", str(out), "--strict"]) == 2
    assert f"{src}:64: column 'value' is not a number" in capsys.readouterr().err
    assert main(["score", str(src), "--output", str(out), "--skip-invalid"]) == 0  # the old flag: the default


def test_score_of_a_multivariate_file_gives_each_reading_its_device_score(tmp_path):
    src, out, png = tmp_path / "pump.csv", tmp_path / "scores.csv", tmp_path / "plot.png"
    lines = ["stream,ts,flow,temp"]
    for i in range(200):
        spike = 30 if i == 170 else 0
        lines.append(f"pump,{1_700_000_000 + i},{10 + (i % 5) + spike},{40 + (i % 3) * 0.5}")
    src.write_text("\n".join(lines) + "\n")
    assert main(["score", str(src), "--output", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 400 and {r["device"] for r in rows} == {"pump"}
    for flow, temp in zip(rows[::2], rows[1::2]):  # the two channels of one reading
        assert (flow["stream"], temp["stream"]) == ("pump/flow", "pump/temp")
        best = max(float(flow["anomaly_score"]), float(temp["anomaly_score"]))
        assert float(flow["device_score"]) == float(temp["device_score"]) == pytest.approx(
            max(0.0, best - math.log10(2) / DECADES), abs=1e-8)
    assert float(rows[340]["device_score"]) > 0.3  # the flow spike at reading 170
    assert png.stat().st_size > 10_000


def test_score_of_an_empty_file_scores_nothing(tmp_path, capsys):
    for content in (b"", b"stream,ts,value\n"):
        src, out = tmp_path / "empty.csv", tmp_path / "scores.csv"
        src.write_bytes(content)
        assert main(["score", str(src), "--output", str(out), "--plot", str(tmp_path / "p.png")]) == 0
        printed = capsys.readouterr().out
        assert "scored 0 of 0 rows" in printed and "no plot written" in printed
        assert out.read_text().splitlines() == [
            "timestamp,stream,value,anomaly_score,error,forecast,note,device,device_score,evidence"]


def test_score_names_a_file_it_cannot_read(tmp_path, capsys):
    src = tmp_path / "rec.csv.gz"
    write_recording(tmp_path / "rec.csv")
    whole = gzip.compress((tmp_path / "rec.csv").read_bytes())
    src.write_bytes(whole[:len(whole) // 2])
    assert main(["score", str(src), "--output", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"streamer score: {src}:") and "cannot read the file" in err
    assert main(["score", str(tmp_path), "--output", str(tmp_path / "s.csv")]) == 2  # a folder
    assert f"{tmp_path}: unknown file type" in capsys.readouterr().err


def test_naive_local_times_meet_the_session_rule_in_their_own_zone(tmp_path, capsys):
    """Exchange-local times without an offset: with ``ticks.timezone`` the trading day starts at local
    midnight (one session reset); read as UTC, 22:00-01:00 would cross no local midnight at all."""
    src = tmp_path / "spy.csv"
    hours = [f"2013-10-0{8 + (h >= 24)} {h % 24:02d}:{m:02d}:00" for h in range(22, 25) for m in range(0, 60, 5)]
    src.write_text("stream,ts,value\n" + "".join(f"SPY,{t},{169 + i % 3}\n" for i, t in enumerate(hours)))
    config = tmp_path / "c.toml"
    for zone, resets in (("America/New_York", [("2013-10-09 00:00:00", "reset:session")]), ("", [])):
        config.write_text(f"[ticks]\ntimezone = '{zone}'\n[resets]\nsession_timezone = 'America/New_York'\n")
        assert main(["--config", str(config), "score", str(src), "--output", str(tmp_path / "s.csv")]) == 0
        rows = list(csv.DictReader((tmp_path / "s.csv").open()))
        assert [(r["timestamp"], r["note"]) for r in rows if r["note"]] == resets
    capsys.readouterr()


def test_a_reset_row_names_its_reason(tmp_path, capsys):
    """The note says why a stream was reset: an explicit ``reset`` or a new ``segment`` starts a new stream
    (its next ``detector.warmup`` ticks score 0 again), a session or a gap restarts the LSTM's state only
    (the stream is scored on at once)."""
    src, config, out = tmp_path / "rec.jsonl", tmp_path / "c.toml", tmp_path / "s.csv"
    t0 = 1_381_240_800  # 2013-10-08 10:00 New York
    ticks = [{"stream": "a", "ts": t0 + 60 * i, "value": 10.0 + i % 5} for i in range(40)]
    ticks[10]["ts"] = ticks[9]["ts"] + 7200  # a gap of 2 h: later ticks move with it
    for i in range(11, 40):
        ticks[i]["ts"] = ticks[i - 1]["ts"] + 60 if i != 20 else ticks[19]["ts"] + 86400  # the next day
    ticks[25]["reset"] = True
    for i in range(30, 40):
        ticks[i]["segment"] = "two"
    src.write_text("".join(json.dumps(t) + "\n" for t in ticks))
    config.write_text("[detector]\nwarmup = 5\n[resets]\nsession_timezone = 'America/New_York'\n"
                      "max_gap_seconds = 3600\n")
    assert main(["--config", str(config), "score", str(src), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {i: r["note"] for i, r in enumerate(rows) if r["note"]} == {
        10: "reset:gap", 20: "reset:session", 25: "reset:explicit", 30: "reset:segment"}
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(math.isfinite(float(rows[i]["forecast"])) for i in (10, 20))  # scored on: the forecast survived
    assert all(not rows[i]["forecast"] for i in (25, 30))  # a new stream: no forecast yet
    assert scores[25:30] == [0.0] * 5 and scores[30:35] == [0.0] * 5  # ... and a warm-up
    capsys.readouterr()
