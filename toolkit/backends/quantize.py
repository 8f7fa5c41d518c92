"""The quantization stage, one implementation for every format that quantizes; what differs per format
is how a rung is made and run (`_Rungs` subclasses, `RUNGS`):

- onnx, ort (ONNX Runtime QDQ / dynamic / 4-bit / fp16) and tensorrt (explicit-quantization Q/DQ):
  a quantized ONNX file made from the verified ONNX export, measured with ONNX Runtime;
- ptl: the quantized TorchScript-lite file (`toolkit.quantize.ptl`: static int8 where torch.fx
  traces the graph, QNNPACK kernels; dynamic int8 Linear) measured in the lite interpreter with the
  QNNPACK engine (what arm phones run);
- coreml: Core ML prediction needs macOS, so a rung is the PyTorch *simulation* of the precision
  (`toolkit.quantize.coreml.simulate`: W8A8 LinearQuantizer, weight-only linear 8-bit or k-means
  palettization, fp16 compute), measured with a TorchRunner; the Core ML convert stage then converts
  the chosen precision once (`simulation_for` hands it the W8A8 module).

For each component the target plans at a quantized precision, the format's ladder (its backend's
`ladder`) is walked with `toolkit.quantize.choose_precision`: each rung is made (calibrated on the
feeds the fp32 pipelines really pass the component, recorded once per build by `job.calibration`),
measured alone against the fp32 reference on the evaluation part, and gated. Then the components of
this format that kept a quantized precision are measured together, end to end through the real
pipelines (`settle_end_to_end` steps the most sensitive one down until the pipelines pass the gate).
A file artifact replaces the export as the source of the next stages (copy, the .ort conversion, the
TensorRT-ready ONNX), and `job.quantization[name]` is what the manifest records: every rung with its
figures and why it stepped down, the end-to-end figures.

Cache (`<export cache>/quantized/`), keyed by what the rung starts from (the export's own key; for
Core ML, which starts from the PyTorch graph, the export key's ingredients: code, declaration,
weights), the precision, the format's flavour, the settings and the calibration set's digest (so a
changed photo, prompt or setting makes them again): quantized ONNX and .ptl files with their alone
figures; Core ML rungs' alone figures (a small JSON record); end-to-end figures, keyed by the
artifacts measured together. Not cached: Core ML simulations (PyTorch modules as large as the fp32
graph, and loading a pickled module is not safe): a cache hit does not need one, a miss of the
end-to-end record or a W8A8 conversion makes it again (weight-only in seconds; W8A8 recalibrates).
"""
from __future__ import annotations

import json
import os
import weakref
from abc import ABC, abstractmethod
from importlib import metadata
from pathlib import Path

from ..components.registry import COMPONENTS, weights
from . import base

CALIBRATED = ("int8", "mixed-weights")  # made from the calibration feeds (activation ranges; which weights go int8)


def unquantized(backend: base.Backend) -> tuple[str, ...]:
    """Precisions the format makes without a quantization stage: fp32 (the export), and its default
    (fp16: Core ML's compute, TensorRT's engine flag)."""
    return tuple(dict.fromkeys(("fp32", backend.precisions[0])))


def _graph_key(job, name: str) -> str:
    """What `toolkit export` keys a component's artifacts by (code, declaration, weights), for a format
    that starts from the PyTorch graph itself (Core ML); computed once per build and component."""
    keys = _GRAPH_KEYS.setdefault(job, {})
    if name not in keys:
        from ..convert import cache
        from ..deploy.export import code_digest, tool_versions
        comp = COMPONENTS[name]
        keys[name] = cache.digest_json({"code": code_digest(), "versions": tool_versions(),
                                        "declaration": comp.declaration(),
                                        "weights": cache.digest_tensors(weights(job.state, comp))})
    return keys[name]


_GRAPH_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# what a flavour's rungs start from, and the library whose version decides what they are
_SOURCES = {"ort": ("onnx", "onnxruntime"), "tensorrt": ("onnx", "onnxruntime"), "ptl": ("ptl", "torch"),
            "coreml": (None, "coremltools")}
# the quantizer's own code, in the key of the flavours added with it (the ONNX flavours' keys, older, leave
# it out: adding it would make every cached ONNX artifact again)
_CODE = {"ptl": "ptl.py", "coreml": "coreml.py"}


def _key(job, name: str, precision: str, flavour: str) -> str:
    from ..convert import cache
    fmt, library = _SOURCES[flavour]
    if fmt is None:
        source_key = _graph_key(job, name)
    else:
        source, _ = base.exported_source(job, name, fmt)
        source_key = json.loads(cache.record_path(source).read_text())["key"]
    component = job.target.quantization.for_component(name)
    settings = component.to_dict()
    settings.pop("gate")  # see Calibration.digest
    if precision == "mixed-weights":  # its choice depends on the gate's SQNR floor
        settings["mixed_target_db"] = component.mixed_target_db
    code = {}
    if flavour in _CODE:
        code["code"] = cache.file_sha256(Path(__file__).resolve().parents[1] / "quantize" / _CODE[flavour])
    return cache.digest_json({"source": source_key, "precision": precision, "flavour": flavour,
                              "settings": settings, "calibration": job.calibration.digest(name),
                              library: metadata.version(library), **code})


class _Rungs(ABC):
    """Make-and-measure of one component, per precision, memoised (the ladder and the end-to-end settling
    may both need a rung). A subclass says how its format makes a rung (`_make`: the record with the alone
    figures) and runs it (`_open`)."""

    flavour = ""  # names the cached files and keys them

    def __init__(self, job, backend: base.Backend, plan):
        self.job, self.backend, self.plan = job, backend, plan
        self.comp = COMPONENTS[plan.component]
        self.settings = job.target.quantization.for_component(plan.component)
        self.made: dict[str, dict] = {}
        self.errors: dict[str, str] = {}

    def attempt(self, precision: str):
        """(artifact record, alone figures); raises when the quantizer cannot make `precision`."""
        if precision in unquantized(self.backend):
            return None, {}  # the export itself (fp32) or the device runtime's own precision: nothing to make here
        if precision not in self.made:
            try:
                self.made[precision] = self._make(precision)
            except Exception as e:
                self.errors[precision] = str(e)
                raise
        return self.made[precision], self.made[precision]["alone"]["figures"]

    def calibration_feeds(self, precision: str):
        """The recorded calibration feeds (a fresh stream per call) where the precision is chosen on them:
        int8 calibrates its activations, mixed-weights picks its int8 weights."""
        return self.job.calibration.feeds("calibration", self.comp.name) if precision in CALIBRATED else None

    def runner(self, precision: str):
        """The runner of `precision`'s rung for the end-to-end pipelines (None: fp32 / not made)."""
        try:
            made, _ = self.attempt(precision)
        except Exception:  # noqa: BLE001 - recorded in self.errors; measured as fp32
            return None
        return None if made is None else self._open(precision, made)

    @abstractmethod
    def _make(self, precision: str) -> dict:
        """Make and measure `precision`'s rung: its record (key, stage, alone, path)."""

    def _cache_entry(self, precision: str, filename: str) -> tuple[str, Path]:
        """The cache key of `precision`'s rung and its file in the build's quantized cache."""
        folder = self.job.cache_dir / "quantized"
        folder.mkdir(exist_ok=True)
        return _key(self.job, self.comp.name, precision, self.flavour), folder / filename

    @abstractmethod
    def _open(self, precision: str, made: dict):
        """A runner of a made rung, as the gate measures it."""


class _FileRungs(_Rungs):
    """A rung that is a file (quantized ONNX, .ptl): cached with its alone figures (convert/cache.py)."""

    suffix = ""

    def _make(self, precision: str) -> dict:
        from ..convert import cache
        job, name = self.job, self.comp.name
        key, dst = self._cache_entry(precision, f"{name}.{precision}.{self.flavour}{self.suffix}")
        found = cache.lookup(dst, key)
        if found.hit:
            job.progress(f"{name}: {precision} ({self.flavour}) from the cache")
            return {**found.record, "path": dst}
        job.progress(f"{name}: quantizing to {precision} ({self.flavour})")
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        try:
            result = self.produce(precision, tmp)
            alone = job.calibration.alone(name, job.torch_runner(name), self.open(tmp), self.comp.masks)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        stage = {**result.to_dict(), "file": dst.name}
        record = cache.store(dst, key, {"stage": stage, "alone": alone, "calibration": job.calibration.digest(name)})
        return {**record, "path": dst}

    def _open(self, precision: str, made: dict):
        return self.open(made["path"])

    @abstractmethod
    def produce(self, precision: str, path: Path):
        """Write `precision`'s artifact to `path`; returns the quantizer's StageResult."""

    @abstractmethod
    def open(self, path: Path):
        """A runner of the artifact at `path`."""


class _OnnxRungs(_FileRungs):
    """onnx, ort: ONNX Runtime QDQ / dynamic / 4-bit / fp16; tensorrt: symmetric Q/DQ (toolkit.quantize.ort)."""

    suffix = ".onnx"

    def __init__(self, job, backend, plan):
        super().__init__(job, backend, plan)
        self.flavour = "tensorrt" if backend.name == "tensorrt" else "ort"

    def produce(self, precision: str, path: Path):
        from ..quantize.ort import quantize_onnx
        source, _ = base.exported_source(self.job, self.comp.name, "onnx")
        feeds = self.calibration_feeds(precision)
        return quantize_onnx(source, path, precision, self.settings, feeds, self.flavour,
                             runs_on=self.job.calibration.feeds("evaluation", self.comp.name))

    def open(self, path: Path):
        from ..runners.ort_runner import OrtRunner
        return OrtRunner(path)


def _qnnpack_runner(path: Path):
    """A lite-interpreter runner whose calls run with the QNNPACK engine (what the artifact was packed for,
    what arm phones run)."""
    from ..quantize.ptl import use_qnnpack
    from ..runners.ptl_runner import PtlRunner

    class QnnpackRunner(PtlRunner):
        def _infer(self, feeds):
            with use_qnnpack():
                return super()._infer(feeds)
    return QnnpackRunner(path)


class _PtlRungs(_FileRungs):
    """TorchScript lite: static int8 (FX, QNNPACK) where torch.fx traces the graph, dynamic int8 Linear
    (toolkit.quantize.ptl), from the PyTorch graph the .ptl export traces."""

    flavour, suffix = "ptl", ".ptl"

    def produce(self, precision: str, path: Path):
        from ..quantize.ptl import quantize_ptl
        comp, feeds = self.comp, self.calibration_feeds(precision)
        return quantize_ptl(self.job.reference.exported_graph(comp), comp.input_names, comp.output_names,
                            comp.example(), path, precision, self.settings, feeds() if feeds else None)

    def open(self, path: Path):
        return _qnnpack_runner(path)


class _CoreMLRungs(_Rungs):
    """Core ML: a rung is the PyTorch simulation of the precision (toolkit.quantize.coreml.simulate),
    measured here; the package is converted once, for the chosen precision, by the convert stage.
    The record (alone figures, method) is cached; the simulation is not (see the module doc)."""

    flavour = "coreml"

    def __init__(self, job, backend, plan):
        super().__init__(job, backend, plan)
        self.simulations: dict = {}

    def simulation(self, precision: str):
        from ..quantize.coreml import simulate
        if precision not in self.simulations:
            comp, feeds = self.comp, self.calibration_feeds(precision)
            self.job.progress(f"{comp.name}: Core ML {precision} simulation (PyTorch)")
            self.simulations[precision] = simulate(self.job.reference.exported_graph(comp), comp.inputs,
                                                   comp.example(), precision, feeds() if feeds else None)
        return self.simulations[precision]

    def _make(self, precision: str) -> dict:
        job, name = self.job, self.comp.name
        key, memo = self._cache_entry(precision, f"{name}.{precision}.coreml-simulation.json")
        try:
            record = json.loads(memo.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("key") == key:
            job.progress(f"{name}: {precision} (coreml) gate figures from the cache")
            return {**record, "path": None}
        simulation = self.simulation(precision)
        runner = self.comp.torch_runner(simulation.module)
        alone = job.calibration.alone(name, job.torch_runner(name), runner, self.comp.masks)
        alone["measured_on"] = ("the PyTorch simulation of the Core ML precision (Core ML prediction needs macOS; "
                                "the package's own parity is pending a macOS run)")
        stage = {"format": "coreml", "precision": precision, "method": simulation.method,
                 "settings": simulation.settings, "file": None,
                 "notes": ["figures measured on the PyTorch simulation, not the package"]}
        record = {"key": key, "stage": stage, "alone": alone, "calibration": job.calibration.digest(name)}
        tmp = memo.with_name(f".{memo.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2, default=float))
        os.replace(tmp, memo)
        return {**record, "path": None}

    def _open(self, precision: str, made: dict):
        return self.comp.torch_runner(self.simulation(precision).module)


RUNGS = {"onnx": _OnnxRungs, "ort": _OnnxRungs, "tensorrt": _OnnxRungs, "ptl": _PtlRungs, "coreml": _CoreMLRungs}
# this build's Core ML rungs, so that the convert stage converts the very W8A8 module the gate measured
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def simulation_for(job, backend: base.Backend, plan, precision: str):
    """The Core ML simulation of `precision` the gate measured in this build (made again after a cache hit)."""
    rungs = _LIVE.get(job, {}).get(plan.component) or _CoreMLRungs(job, backend, plan)
    return rungs.simulation(precision)


def _end_to_end(job, rungs: dict[str, _Rungs], chosen: dict[str, str], floor: tuple[str, ...]):
    """settle_end_to_end over the components of this stage; end-to-end figures cached by the artifacts'
    keys. Returns (final precisions, rounds)."""
    from ..convert import cache
    from ..quantize.gate import settle_end_to_end
    gate = job.target.quantization.gate

    def measure(current):
        made = {n: rungs[n].attempt(p)[0] if p not in floor and p not in rungs[n].errors else None
                for n, p in current.items() if p not in floor}
        candidates = {n: m for n, m in made.items() if m is not None}
        if not candidates:
            return {}
        key = cache.digest_json({n: m["key"] for n, m in sorted(candidates.items())})
        memo = job.cache_dir / "quantized" / f"end_to_end-{key[:24]}.json"
        if memo.is_file():
            return json.loads(memo.read_text())["figures"]
        result = job.calibration.end_to_end({n: rungs[n].runner(current[n]) for n in candidates})
        memo.write_text(json.dumps(result, default=float))
        return result["figures"]

    sensitivity = {n: r.made.get(chosen[n], {}).get("alone", {}).get("figures", {}).get("sqnr_db", float("inf"))
                   for n, r in rungs.items()}
    formats = {n: r.backend.name for n, r in rungs.items()}
    from ..quantize.session import components_behind
    return settle_end_to_end(chosen, formats, sensitivity, measure, gate, behind=components_behind)


def quantize(job, backend: base.Backend, plans: list) -> base.Failures:
    """The precision ladder of every component planned at a quantized precision (see the module doc)."""
    from ..quantize.gate import choose_precision
    floor = unquantized(backend)
    todo = [p for p in plans if p.precision not in floor]
    if not todo:
        return {}
    failures: base.Failures = {}
    rungs: dict[str, _Rungs] = {}
    ladders = {}
    for plan in todo:
        try:
            if backend.export_from is not None:
                base.exported_source(job, plan.component, backend.export_from)
        except base.StageFailed as e:
            failures[plan.component] = str(e)
            continue
        rungs[plan.component] = RUNGS[backend.name](job, backend, plan)
        gate = rungs[plan.component].settings.gate
        ladders[plan.component] = choose_precision(plan.component, backend.name, plan.precision,
                                                   rungs[plan.component].attempt, gate)
        for step in ladders[plan.component].steps:
            job.progress(f"gate: {step}")
    _LIVE.setdefault(job, {}).update(rungs)
    chosen = {n: ladder.chosen for n, ladder in ladders.items()}
    final, rounds = _end_to_end(job, rungs, chosen, floor) if any(p not in floor for p in chosen.values()) \
        else (chosen, [])
    for round_ in rounds:
        if round_.get("step"):
            job.progress(f"gate: {round_['step']}")
    for name, ladder in ladders.items():
        precision = final[name]
        while precision not in floor and precision in rungs[name].errors:  # a rung the quantizer could not make
            precision = backend.ladder[precision]
        made = rungs[name].made.get(precision)
        record = ladder.to_dict()
        for rung in record["rungs"]:
            if rung["precision"] in floor:
                rung["measured"] = False
                rung["note"] = ("the export (verified against PyTorch), not gated" if rung["precision"] == "fp32" else
                                f"{backend.name} {rung['precision']} is the device runtime's precision: measured "
                                "on the device, not here")
        record.update({"chosen": precision, "settings": rungs[name].settings.to_dict(),
                       "calibration_digest": job.calibration.digest(name),
                       "end_to_end": {"rounds": rounds,
                                      "figures": rounds[-1]["figures"] if rounds else {},
                                      "failures": rounds[-1]["failures"] if rounds else []}})
        if made is not None:
            record.update({"stage": made["stage"], "alone": made["alone"]})
            if made["path"] is not None:  # a file the next stages start from (Core ML converts in its own stage)
                job.quantized_sources[name] = Path(made["path"])
        job.quantization[name] = record
        job.set_precision(name, precision)
        if precision != ladder.requested:
            job.progress(f"{name}: {ladder.requested} -> {precision} (gate; the reasons are in the manifest)")
    return failures


quantize.quantizes = True  # Backend.buildable: this format's build makes every precision it lists
