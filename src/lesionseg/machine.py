"""What machine a figure was measured on: one description for every benchmark's JSON, and the native-bf16
test that `trainer.precision=auto` decides with."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The CPU features that decide which kernels run (bf16 and int8 paths among them).
WATCHED_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"}


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(WATCHED_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's own test); emulated bf16 is several times slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_machine(with_torch: bool = True) -> dict:
    """cpu, cores, CPU flags and Python; with torch also its version, threads and native bf16."""
    out = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "cpu_flags": cpu_flags(), "python": platform.python_version()}
    if with_torch:
        import torch

        out.update(torch=torch.__version__, threads=torch.get_num_threads(), native_bf16=native_bf16())
    return out
