"""tests/deploy: checks of the deploy/ artefacts with the tools of their ecosystems.

The helper modules next to this file (deploytools, kustomize_lite) are imported by plain name; pytest's
default (prepend) import mode puts this directory on sys.path, and this keeps that true under
``--import-mode=importlib`` as well.
"""

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
