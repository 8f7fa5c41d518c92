"""torch module -> TorchScript lite (`.ptl`): trace, freeze, save for the lite interpreter.

`optimize_for_mobile` is not applied: it fails on this CPU wheel (built without XNNPACK). The
tensor names are stored in the archive (`extra/io.json`), which `PtlRunner` reads back.
Sizes that the graph derives from input shapes stay symbolic under tracing as long as the
module computes them with tensor ops; verification at the extremes of every dynamic dimension
is what proves it.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..runners.ptl_runner import IO_FILE


@dataclass
class PtlInfo:
    path: str
    size_bytes: int
    seconds: float


def export_ptl(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
               output_names: list[str], path: str | Path) -> PtlInfo:
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream: every call warns
        traced = torch.jit.trace(module.eval(), args, check_trace=False)
        frozen = torch.jit.freeze(traced)
        names = json.dumps({"inputs": list(input_names), "outputs": list(output_names)})
        frozen._save_for_lite_interpreter(str(path), _extra_files={IO_FILE: names})
    return PtlInfo(str(path), Path(path).stat().st_size, time.perf_counter() - start)
