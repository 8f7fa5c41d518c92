"""ONNX Runtime sessions over a bundle's artifacts, chosen for memory, loaded when needed.

Memory choices (measured: benchmarks/results/2026-12-02-runtime-memory.md):
- the CPU arena shrinks at the end of every run (run option `memory.enable_memory_arena_shrinkage`):
  within a run freed buffers are reused (as fast as the default arena), between runs the memory goes
  back to the process instead of staying reserved for the session's lifetime. Without any arena,
  every large tensor is a fresh mmap (page faults: 10-25 % slower per call, measured);
- one arena for the whole process (registered in ONNX Runtime's environment, `session.use_env_allocators`),
  not one per session: the pipelines run their components one after another, and a per-session arena
  keeps the regions its outputs live in after the session is released, so the next component's
  session grew its own beside them. Measured on the int8 android bundle (AMD EPYC, 2 threads, one run
  in a fresh process): image + text 885 -> 689 MiB peak, 8-frame click tracking 1490 -> 1050 MiB, at
  the same speed (2.63-2.76 vs 2.72-2.73 s; 27.5 s both);
- no memory pattern: the pattern pre-allocates one block for all intermediates of a shape, which
  holds the peak even where buffers could have been released earlier;
- `.ort` files: ORT keeps the file's bytes and points the initializers into them
  (`session.use_ort_model_bytes_directly` / `..._for_initializers`): no second copy of the weights;
- sessions are created on first use and released by the pipelines as soon as a component is not
  needed any more (`release`), so one run never holds every component at once.

At the boundary, feeds are converted to the artifact's tensor types (int32 for bool / int64, (1,)
for a scalar, as the manifest records per artifact) and outputs back to the declared ones.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .errors import RuntimeInputError

ORT_FORMATS = ("onnx", "ort", "tensorrt")  # tensorrt: the TensorRT-ready ONNX, runnable on ONNX Runtime


@functools.cache
def _share_one_arena() -> None:
    """Register one CPU arena (ONNX Runtime's default arena configuration) in its environment, once per
    process (cached)."""
    import onnxruntime as ort
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def session_options(threads: int | None = None, lean: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if lean:
        so.enable_mem_pattern = False
        _share_one_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so


def run_options(lean: bool = True):
    import onnxruntime as ort
    options = ort.RunOptions()
    if lean:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class Sessions:
    """Component name -> ONNX Runtime session, created on first `run`, dropped by `release`."""

    def __init__(self, bundle: Bundle, threads: int | None = None, lean: bool = True):
        self.bundle, self.threads, self.lean = bundle, threads, lean
        self._open: dict[str, object] = {}
        self.run_options = run_options(lean)
        self.loads: list[str] = []  # every session creation, in order (tests and benchmarks read it)

    def _entry(self, name: str) -> dict:
        entries = self.bundle.manifest["components"]
        if name not in entries:
            raise RuntimeInputError(f"bundle {self.bundle.root} has no component {name!r} (a partial build?)")
        entry = entries[name]
        if entry["format"] not in ORT_FORMATS:
            raise RuntimeInputError(f"bundle {self.bundle.root}: {name} is a {entry['format']} artifact; this "
                                    f"runtime runs ONNX Runtime artifacts ({', '.join(ORT_FORMATS)})")
        return entry

    def _load(self, name: str):
        import onnxruntime as ort
        entry = self._entry(name)
        path: Path = self.bundle.path(entry["file"])
        so = session_options(self.threads, self.lean)
        try:
            if path.suffix == ".ort" and self.lean:
                so.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
                so.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeInputError(f"bundle {self.bundle.root}: {entry['file']} does not load in ONNX Runtime: "
                                    f"{' '.join(str(e).split())[:200]}") from e
        have = sorted(i.name for i in session.get_inputs()), sorted(o.name for o in session.get_outputs())
        want = sorted(e["name"] for e in entry["inputs"]), sorted(e["name"] for e in entry["outputs"])
        if have != want:
            raise RuntimeInputError(f"bundle {self.bundle.root}: {entry['file']} has tensors {have}, the manifest "
                                    f"lists {want}")
        self.loads.append(name)
        return session

    def run(self, name: str, **feeds) -> dict[str, np.ndarray]:
        if name not in self._open:
            self._open[name] = self._load(name)
        entry = self._entry(name)
        converted = {}
        for e in entry["inputs"]:
            x = np.asarray(feeds[e["name"]]).astype(e["artifact_dtype"], copy=False)
            converted[e["name"]] = x.reshape(1) if not e["shape"] and e["artifact_shape"] == [1] else x
        values = self._open[name].run([e["name"] for e in entry["outputs"]], converted, self.run_options)
        out = {}
        for e, y in zip(entry["outputs"], values):
            y = y != 0 if e["dtype"] == "bool" and y.dtype != bool else y.astype(e["dtype"], copy=False)
            out[e["name"]] = y.reshape(()) if not e["shape"] else y
        return out

    def release(self, *names: str) -> None:
        """Drop sessions (their weights and buffers) that the rest of the run does not need."""
        for name in names:
            self._open.pop(name, None)

    @property
    def open_names(self) -> list[str]:
        return list(self._open)
