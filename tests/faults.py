"""The fault matrix registry: every row is a parametrized test case and a FAULTS.md line.

Each tests/test_faults_*.py module defines a module-level list FAULTS of Row and
parametrizes its matrix test with `rows(FAULTS)`, so a row cannot exist in FAULTS.md
without a test that checks it. tests/test_faults_md.py renders FAULTS.md from the
rows and fails when the file differs; `python3 tests/test_faults_md.py` rewrites it.
"""
from __future__ import annotations

from typing import Any
from typing import List
from typing import NamedTuple
from typing import Tuple

import pytest


class Row(NamedTuple):
    area: str       # "crash points", "downloads", "admin socket", "children", "signals"
    id: str         # the pytest id of the case, e.g. "tag-404"
    fault: str      # what is injected, in words
    expected: str   # what the operator sees: exit code, log line, what is on disk
    case: Tuple[Any, ...] = ()  # the test's own parameters (not rendered)


def rows(table: List[Row]) -> List[Any]:
    """pytest.param per row, id = row.id, values = (row,) + row.case."""
    return [pytest.param(row, *row.case, id=row.id) for row in table]
