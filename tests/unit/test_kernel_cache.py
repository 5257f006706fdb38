"""The compiled kernel is cached on disk only where NUMBA_CACHE_DIR points (the deploy files set it)."""

import os
import subprocess
import sys
from pathlib import Path

import streamer

BUILD_A_DETECTOR = ("from streamer.config import DetectorSettings; from streamer.core.detector import Detector; "
                    "from streamer.core.model import Forecaster; Detector(Forecaster.load(), DetectorSettings())")


def test_the_kernel_is_cached_where_numba_cache_dir_points_and_nowhere_without_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    subprocess.run([sys.executable, "-c", BUILD_A_DETECTOR], env=dict(env, NUMBA_CACHE_DIR=str(tmp_path)),
                   check=True, timeout=120)
    assert [p.name for p in tmp_path.rglob("kernel.advance-*.nbi")]  # the index of advance's machine code

    package = Path(streamer.__file__).parent
    before = set(package.rglob("*.nb[ic]"))
    subprocess.run([sys.executable, "-c", BUILD_A_DETECTOR], env=env, check=True, timeout=120)
    assert set(package.rglob("*.nb[ic]")) == before == set()  # nothing written beside the package
