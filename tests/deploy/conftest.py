"""tests/deploy: checks of the deploy/ artefacts with the tools of their ecosystems.

The helper modules next to this file (deploytools, kustomize_lite) are imported by plain name; pytest's
default (prepend) import mode puts this directory on sys.path, and this keeps that true under
``--import-mode=importlib`` as well.

The hooks below feed `deploytools.LOADS`, from which test_coverage_of_deploy.py tells whether every file under
deploy/ was loaded by a test that passed: which test is running (the loaders record files against it), which
passed or was skipped, which deploy tests were selected or deselected. They also order that coverage test
after every other test of this directory.
"""

import sys
from pathlib import Path

import pytest

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

from deploytools import LOADS  # noqa: E402 - needs the path above

HERE = Path(_here)
COVERAGE_TEST = "test_every_deploy_file_is_loaded_by_a_passing_test"


def _in_deploy(item: pytest.Item) -> bool:
    return Path(item.path).resolve().parent == HERE


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The coverage test right after the last other test of tests/deploy: it judges what they loaded."""
    last = [item for item in items if _in_deploy(item) and item.name == COVERAGE_TEST]
    if not last:
        return
    items.remove(last[0])
    position = max((i for i, item in enumerate(items) if _in_deploy(item)), default=len(items) - 1)
    items.insert(position + 1, last[0])


def pytest_deselected(items: list[pytest.Item]) -> None:
    LOADS.deselected |= {item.nodeid for item in items if _in_deploy(item)}


def pytest_collection_finish(session: pytest.Session) -> None:
    LOADS.selected = [item.nodeid for item in session.items if _in_deploy(item)]
    LOADS.modules = {Path(item.path).name for item in session.items if _in_deploy(item)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    LOADS.running = item.nodeid if _in_deploy(item) else None
    try:
        yield
    finally:
        LOADS.running = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        LOADS.passed.add(report.nodeid)
    if report.skipped:
        LOADS.skipped.add(report.nodeid)
    LOADS.ran.add(report.nodeid)
