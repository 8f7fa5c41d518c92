"""What the benchmark runs: the runner kinds, and the weights / artifacts they are built from.

A runner kind is an artifact format (its backend, toolkit/backends: the same names as in target files)
on an execution provider, or PyTorch eager; it turns a component into a `toolkit.runners.Runner`, or
says why it cannot run here (no artifact of that kind, package or execution provider missing on this
device). A kind that cannot run is reported as skipped with that reason, never left out.

  torch       the component's PyTorch graph, eager (the baseline of every ratio)
  onnx        ONNX Runtime, CPU execution provider, `<component>.onnx`
  ort         ONNX Runtime, CPU execution provider, `<component>.ort` (the mobile format)
  ptl         TorchScript lite interpreter, `<component>.ptl`
  onnx-cuda   ONNX Runtime, CUDA execution provider, `<component>.onnx` (GPU devices)

Earlier spellings (`ort-mobile`, `ort-cuda`) are accepted (RUNNER_ALIASES); `ort` used to mean the
.onnx file and now means the .ort file, as it does in target files.

ONNX Runtime sessions keep the library defaults an application gets (CPU memory arena on, all
graph optimisations), with `threads` intra-op threads.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..backends import BACKENDS, Backend
from ..components.registry import COMPONENTS, Component

EAGER = "torch"


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
        from ..checkpoint.loader import resolve_weights
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
        from ..components.registry import load_models
        self.progress("building the PyTorch model")
        return load_models(self.state)

    def graph(self, name: str):
        from ..components.registry import build_graph
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
        from ..components.registry import weights
        return sum(t.numel() * t.element_size() for t in weights(self.state, comp).values())


@dataclass(frozen=True)
class RunnerKind:
    name: str
    doc: str
    format: str | None  # the artifact format (its backend); None: the PyTorch graph
    providers: tuple[str, ...] = ()

    @property
    def backend(self) -> Backend | None:
        return BACKENDS[self.format] if self.format else None

    @property
    def suffix(self) -> str | None:
        return self.backend.suffix if self.backend else None

    def unavailable(self, comp: Component, sources: Sources) -> str | None:
        """Why this kind cannot run `comp` here, or None."""
        if self.backend is None:
            return None if importlib.util.find_spec("torch") else "torch is not installed on this device"
        if reason := self.backend.unavailable():
            return f"{reason} on this device"
        if self.providers:
            import onnxruntime as ort
            present = ort.get_available_providers()
            lacking = [p for p in self.providers if p not in present]
            if lacking:
                return f"{', '.join(lacking)} not available (this onnxruntime has {', '.join(present)})"
        if sources.artifact(comp.name, self.suffix) is None:
            return sources.no_artifact(comp.name, self.suffix)
        return None

    def build(self, comp: Component, sources: Sources):
        if self.backend is None:
            return comp.torch_runner(sources.graph(comp.name))
        runner = self.backend.runner(sources.artifact(comp.name, self.suffix), threads=sources.threads,
                                     providers=list(self.providers) or None)
        used = runner.session.get_providers() if self.providers else []
        if self.providers and self.providers[0] not in used:
            raise RuntimeError(f"onnxruntime fell back to {used} instead of {self.providers[0]}")
        return runner

    def size_bytes(self, comp: Component, sources: Sources) -> int:
        if self.backend is None:
            return sources.weight_bytes(comp)
        return sources.artifact(comp.name, self.suffix).stat().st_size


RUNNER_KINDS: dict[str, RunnerKind] = {k.name: k for k in (
    RunnerKind("torch", "PyTorch eager (component graph)", None),
    RunnerKind("onnx", "ONNX Runtime CPU, .onnx", "onnx"),
    RunnerKind("ort", "ONNX Runtime CPU, .ort", "ort"),
    RunnerKind("ptl", "TorchScript lite interpreter, .ptl", "ptl"),
    RunnerKind("onnx-cuda", "ONNX Runtime CUDA, .onnx", "onnx", ("CUDAExecutionProvider",)),
)}
RUNNER_ALIASES = {"ort-mobile": "ort", "ort-cuda": "onnx-cuda"}
