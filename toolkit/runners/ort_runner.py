"""ONNX Runtime runner (CPU execution provider unless told otherwise)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .base import Runner, TensorMeta

# ONNX Runtime's type strings -> numpy dtype names.
_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(bool)": "bool", "tensor(float16)": "float16"}


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        super().__init__([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        return {i.name: TensorMeta(tuple(i.shape), _DTYPES.get(i.type, i.type)) for i in self.session.get_inputs()}

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)
