"""peak_rss_mb (lesionseg/memory.py) measures the process itself: a child of a large process is not charged
with its parent's memory, as ru_maxrss charges it on Linux."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM needs Linux /proc")
def test_a_child_of_a_large_process_reports_its_own_peak():
    ballast = np.ones(600 * 2**20 // 8)  # 600 MB resident in this (parent) process
    code = "from lesionseg.memory import peak_rss_mb\nprint(peak_rss_mb())"
    own = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert ballast.sum() > 0
    assert own < 300  # an interpreter and a light import: tens of MB (ru_maxrss here says ≥ 600)
