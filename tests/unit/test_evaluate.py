"""`streamer evaluate` on a small labelled corpus: the printed NAB scores are the sweep of the offline scores."""

import json
import re
import shutil

import pytest

from streamer import nab
from streamer.cli import main
from streamer.config import load_settings
from streamer.evaluate import _series
from streamer.offline import score_file, score_files
from tests.conftest import NAB

FILES = ["realAdExchange/exchange-3_cpc_results.csv", "realTraffic/speed_7578.csv"]


@pytest.fixture
def corpus(tmp_path):
    if not NAB.is_dir():
        pytest.skip(f"NAB data not found at {NAB}")
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
    printed = {m[0]: float(m[1]) for m in re.findall(r"^(standard|reward_low_\w+)\s+(-?[\d.]+)", out, re.M)}
    assert set(printed) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}

    windows = nab.load_windows(corpus / "windows.json")
    series = [_series(k, score_file(corpus / "data" / k, load_settings(None), model)[0], windows[k]) for k in FILES]
    expected = nab.sweep(series, nab.Profile("standard", 1.0, 0.11, 1.0)).normalised
    assert printed["standard"] == pytest.approx(expected, abs=0.01)
    assert all((corpus / "out" / k).is_file() for k in FILES)


def test_scoring_files_together_gives_each_file_its_own_fresh_scores(tmp_path, model):
    """Same stream names in different files stay apart; rows come back per file, names unprefixed."""
    import numpy as np
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
    for path, rows in zip(paths, together):
        alone, _ = score_file(path, settings, model)
        assert [(r.line, r.stream, r.note) for r in rows] == [(r.line, r.stream, r.note) for r in alone]
        # Equal up to float32 rounding: the LSTM's matrix product rounds differently for other batch sizes.
        np.testing.assert_allclose([r.score for r in rows], [r.score for r in alone], rtol=0, atol=1e-6)
