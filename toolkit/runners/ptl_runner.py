"""TorchScript-lite runner: a `.ptl` loaded with the mobile (lite) interpreter.

The tensor names travel inside the artifact (extra file `io.json`, written by
`toolkit.convert.ptl_export`), so a `.ptl` is self-describing like an ONNX file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.jit.mobile import _load_for_lite_interpreter

from .base import Runner

IO_FILE = "io.json"


def read_io_names(path: str | Path) -> dict[str, list[str]]:
    """{"inputs": [...], "outputs": [...]} stored in a `.ptl` archive."""
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(f"/extra/{IO_FILE}")), None)
        if name is None:
            raise ValueError(f"{path}: no extra/{IO_FILE} with the tensor names")
        return json.loads(archive.read(name))


class PtlRunner(Runner):
    name = "lite-interpreter"

    def __init__(self, path: str | Path):
        names = read_io_names(path)
        super().__init__(names["inputs"], names["outputs"])
        self.module = _load_for_lite_interpreter(str(path))

    @torch.inference_mode()
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.module(*(torch.from_numpy(feeds[n]) for n in self.input_names))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return [t.detach().numpy() for t in outputs]
