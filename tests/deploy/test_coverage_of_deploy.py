"""Every file under deploy/ is loaded and checked by some test here, and the operator notes name only files
that exist.

"Loaded" is recorded, not guessed from test source: the tests read deploy files only through deploytools'
loaders, or mark a deploy path they hand to a tool with `deploytools.used` (`deploytools.run` marks its
arguments); each load is recorded against the running test, and a file counts once a test that loaded it has
passed (a file named in a comment, or loaded by a test that failed or skipped, does not). conftest.py runs the
coverage test after every other test of this directory; it judges only a run of the whole directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploytools import DEPLOY, LOADS, deploy_files, read_text

HERE = Path(__file__).resolve().parent


def test_every_deploy_file_is_loaded_by_a_passing_test(request: pytest.FixtureRequest) -> None:
    why_not = LOADS.incomplete((p.name for p in HERE.glob("test_*.py")), request.node.nodeid)
    if why_not is not None:
        pytest.skip(f"coverage of deploy/ is judged on a run of all of tests/deploy: {why_not}")
    checked = LOADS.checked()
    unchecked = [str(p.relative_to(DEPLOY)) for p in deploy_files() if p not in checked]
    loaded_by_failures = {str(p.relative_to(DEPLOY)): sorted(LOADS.loads[p]) for p in deploy_files()
                          if p not in checked and p in LOADS.loads}
    assert unchecked == [], (f"files under deploy/ that no passing test loaded: {unchecked} (loaded only by "
                             f"tests that did not pass: {loaded_by_failures})")


def test_readme_mentions_only_existing_paths() -> None:
    text = read_text(DEPLOY / "README.md")
    paths = set(re.findall(r"`((?:systemd|k8s|prometheus|grafana)/[\w./-]+)`", text))
    assert paths
    missing = [p for p in paths if not (DEPLOY / p.rstrip("/")).exists() and "*" not in p]
    assert missing == []
