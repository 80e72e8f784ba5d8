"""The peak resident memory of this process, for memory benchmarks and bounds in tests."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's own peak RSS in MB: Linux's VmHWM where /proc has it. `ru_maxrss` is the fallback only:
    Linux carries it across fork + exec, so a child started by a large process reports at least the parent's
    size at the fork."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
