"""What the benchmark runs: the runner kinds, and the weights / artifacts they are built from.

A runner kind turns a component into a `toolkit.runners.Runner`, or says why it cannot run
here (no artifact of that kind, package or execution provider missing on this device). A kind
that cannot run is reported as skipped with that reason, never left out.

  torch       the component's PyTorch graph, eager (the baseline of every ratio)
  ort         ONNX Runtime, CPU execution provider, `<component>.onnx`
  ort-mobile  ONNX Runtime, CPU execution provider, `<component>.ort` (the mobile format)
  ptl         TorchScript lite interpreter, `<component>.ptl`
  ort-cuda    ONNX Runtime, CUDA execution provider, `<component>.onnx` (GPU devices)

ONNX Runtime sessions keep the library defaults an application gets (CPU memory arena on, all
graph optimisations), with `threads` intra-op threads.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..components import COMPONENTS, Component

EAGER = "torch"


def _missing(package: str) -> str | None:
    return None if importlib.util.find_spec(package) else f"{package} is not installed on this device"


class Sources:
    """Weights, PyTorch graphs and artifact files, loaded on first need."""

    def __init__(self, checkpoint: str | None, artifacts: str | None, threads: int,
                 progress: Callable[[str], None] = lambda message: None):
        self.checkpoint = checkpoint
        self.artifacts = Path(artifacts) if artifacts else None
        self.threads = threads
        self.progress = progress
        self._graphs: dict = {}

    @cached_property
    def weights(self):
        from ..checkpoint import resolve_weights
        self.progress(f"loading {self.checkpoint}" if self.checkpoint else "generating the embedded default weights")
        return resolve_weights(self.checkpoint)

    @property
    def state(self) -> dict:
        return self.weights.state

    @property
    def weights_label(self) -> str:
        return self.weights.label

    @cached_property
    def models(self):
        from ..components import load_models
        self.progress("building the PyTorch model")
        return load_models(self.state)

    def graph(self, name: str):
        from ..components import build_graph
        if name not in self._graphs:
            self._graphs[name] = build_graph(self.models, COMPONENTS[name])
        return self._graphs[name]

    def artifact(self, name: str, suffix: str) -> Path | None:
        if self.artifacts is None:
            return None
        path = self.artifacts / f"{name}{suffix}"
        return path if path.is_file() else None

    def no_artifact(self, name: str, suffix: str) -> str:
        if self.artifacts is None:
            return f"no artifacts given (--artifacts DIR, made by `toolkit export`): no {name}{suffix}"
        failed = self.artifacts / f"{name}.failed{suffix}"
        if failed.is_file():
            return f"{name}{suffix} failed verification at export ({failed.name} in {self.artifacts})"
        return f"no {name}{suffix} in {self.artifacts}"

    def weight_bytes(self, comp: Component) -> int:
        from ..components import weights
        return sum(t.numel() * t.element_size() for t in weights(self.state, comp).values())


@dataclass(frozen=True)
class RunnerKind:
    name: str
    doc: str
    suffix: str | None  # artifact file suffix; None: built from the PyTorch graph
    packages: tuple[str, ...]
    providers: tuple[str, ...] = ()

    def unavailable(self, comp: Component, sources: Sources) -> str | None:
        """Why this kind cannot run `comp` here, or None."""
        for package in self.packages:
            if reason := _missing(package):
                return reason
        if self.providers:
            import onnxruntime as ort
            present = ort.get_available_providers()
            lacking = [p for p in self.providers if p not in present]
            if lacking:
                return f"{', '.join(lacking)} not available (this onnxruntime has {', '.join(present)})"
        if self.suffix and sources.artifact(comp.name, self.suffix) is None:
            return sources.no_artifact(comp.name, self.suffix)
        return None

    def build(self, comp: Component, sources: Sources):
        if self.suffix is None:
            from ..runners.torch_runner import TorchRunner
            return TorchRunner(sources.graph(comp.name), comp.input_names, comp.output_names)
        path = sources.artifact(comp.name, self.suffix)
        if self.name == "ptl":
            from ..runners.ptl_runner import PtlRunner
            return PtlRunner(path)
        from ..runners.ort_runner import OrtRunner
        runner = OrtRunner(path, providers=list(self.providers) or None, threads=sources.threads)
        used = runner.session.get_providers()
        if self.providers and self.providers[0] not in used:
            raise RuntimeError(f"onnxruntime fell back to {used} instead of {self.providers[0]}")
        return runner

    def size_bytes(self, comp: Component, sources: Sources) -> int:
        if self.suffix is None:
            return sources.weight_bytes(comp)
        return sources.artifact(comp.name, self.suffix).stat().st_size


RUNNER_KINDS: dict[str, RunnerKind] = {k.name: k for k in (
    RunnerKind("torch", "PyTorch eager (component graph)", None, ("torch",)),
    RunnerKind("ort", "ONNX Runtime CPU, .onnx", ".onnx", ("onnxruntime",)),
    RunnerKind("ort-mobile", "ONNX Runtime CPU, .ort", ".ort", ("onnxruntime",)),
    RunnerKind("ptl", "TorchScript lite interpreter, .ptl", ".ptl", ("torch",)),
    RunnerKind("ort-cuda", "ONNX Runtime CUDA, .onnx", ".onnx", ("onnxruntime",), ("CUDAExecutionProvider",)),
)}
