import csv

from streamer.cli import main


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
    assert set(rows[0]) == {"timestamp", "stream", "value", "anomaly_score", "error", "forecast", "note"}
    assert [r["note"] for r in rows if r["note"]] == ["reset", "reset"]  # the segment change, once per stream
    assert len({(r["stream"], r["timestamp"]) for r in rows}) == 240
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
    assert png.stat().st_size > 10_000
    assert "scored 240 of 240 rows" in capsys.readouterr().out


def test_score_names_the_bad_line_or_skips_it(tmp_path, capsys):
    src, out = tmp_path / "rec.csv", tmp_path / "scores.csv"
    write_recording(src, bad_row=True)
    assert main(["score", str(src), "--output", str(out)]) == 2
    assert "rec.csv:64"  # header, then 31 ticks of two streams, then the bad row in capsys.readouterr().err
    assert main(["score", str(src), "--output", str(out), "--skip-invalid"]) == 0
    assert "'unreadable': 1" in capsys.readouterr().out
    assert sum(1 for _ in csv.DictReader(out.open())) == 240
