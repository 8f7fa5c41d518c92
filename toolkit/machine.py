"""The CPU a figure was measured or a check was run on: float rounding (and int8 speed) differ
between CPUs, so every export report, bench result and bundle manifest records it."""
from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

# Vector extensions that change kernels (and so rounding or int8 speed), as /proc/cpuinfo names
# them: x86 (SSE4.2 .. AVX-512, VNNI, AMX) and arm (NEON = asimd, dot product, int8 matmul, SVE).
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
                "asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2")


def _cpuinfo_field(text: str, *names: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


@cache
def cpu() -> dict:
    """{'model', 'vector_extensions', 'cores'} of this machine (model from /proc/cpuinfo where there is one)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    model = _cpuinfo_field(text, "model name", "Hardware", "Model") or platform.processor() or platform.machine()
    flags = set((_cpuinfo_field(text, "flags", "Features") or "").split())
    return {"model": model, "vector_extensions": [f for f in VECTOR_FLAGS if f in flags], "cores": os.cpu_count()}


def cpu_line() -> str:
    """One line for reports: 'AMD EPYC (2 cores; avx2 fma ...)'."""
    info = cpu()
    return f"{info['model']} ({info['cores']} cores; {' '.join(info['vector_extensions']) or 'no vector flags seen'})"
