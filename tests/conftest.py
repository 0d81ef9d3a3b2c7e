"""Test-wide setup: ``tests/`` is importable (``helpers``, ``official_refs``) from every subfolder."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
