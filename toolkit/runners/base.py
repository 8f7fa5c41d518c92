"""The runner interface (after Polygraphy's runners: `infer(feed_dict)`, `last_inference_time()`)."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    """What a runner says about one of its inputs: shape entries are ints or symbolic names
    (None where a backend does not say)."""

    shape: tuple[int | str | None, ...] | None
    dtype: str | None


class Runner(ABC):
    """Runs one component. Subclasses implement `_infer`; `infer` checks the feeds and times it."""

    name: str = "runner"

    def __init__(self, input_names: list[str], output_names: list[str]):
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.last_inference_time: float | None = None

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        return {name: TensorMeta(None, None) for name in self.input_names}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        start = time.perf_counter()
        outputs = self._infer({n: np.asarray(feeds[n], order="C") for n in self.input_names})
        self.last_inference_time = time.perf_counter() - start
        return dict(zip(self.output_names, outputs))

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in `output_names` order."""
