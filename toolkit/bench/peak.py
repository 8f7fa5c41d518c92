"""This machine's fp32 matrix-multiply ceiling, measured in the same run as the benchmarks.

A square fp32 GEMM (`torch.mm`, n = 2048 unless told: large enough to run at the library's
best rate, small enough to take a fraction of a second) at the benchmark's thread count.
`peak_gflops` is the best of the timed runs (the ceiling the components are compared with);
`median_gflops` says what a run typically got on a shared machine.
"""
from __future__ import annotations

import statistics
import time


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10, warmup: int = 2) -> dict:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        rates = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds = time.perf_counter() - start
            if i >= warmup:
                rates.append(2 * n**3 / seconds / 1e9)
    finally:
        torch.set_num_threads(previous)
    return {"peak_gflops": round(max(rates), 1), "median_gflops": round(statistics.median(rates), 1),
            "threads": threads, "dtype": "float32", "op": f"torch.mm {n}x{n} @ {n}x{n}", "runs": repeats}
