"""The README's first command: a whole upgrade simulated with the fakes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.timeout(120)
def test_simulate_upgrade_brings_core_and_data_node_back_on_v2():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate_upgrade.py")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # With prefetch on (the default) the release is staged long before the block.
    order = ["upgrade to v2 accepted for block 40", "v2 downloaded", "v2 installed",
             "core ready to upgrade at block 40", "core genesis stopped", "current -> ",
             "core v2 up", "data node v2 up", "vegavisor stopped cleanly"]
    positions = [next(i for i, line in enumerate(lines) if words in line) for words in order]
    assert positions == sorted(positions), done.stdout
    assert lines[-1].startswith("OK: core and data node upgraded from v1 to v2; current -> v2")
