"""The quantization stage, one function for every format that quantizes from the verified ONNX export
(onnx, ort: ONNX Runtime QDQ / dynamic / 4-bit / fp16; tensorrt: explicit-quantization Q/DQ).

For each component the target plans at a quantized precision, the format's ladder (its backend's
`ladder`) is walked with `toolkit.quantize.choose_precision`: each rung is quantized from the export
(calibrated on the feeds the fp32 pipelines really pass the component, recorded once per build by
`job.calibration`), measured alone against the fp32 reference on the evaluation part, and gated.
Then the components of this format that kept a quantized precision are measured together, end to
end through the real pipelines (`settle_end_to_end` steps the most sensitive one down until the
pipelines pass the gate). The chosen artifact replaces the export as the source of the next stages
(copy, the .ort conversion, the TensorRT-ready ONNX), and `job.quantization[name]` is what the
manifest records: every rung with its figures and why it stepped down, the end-to-end figures.

Quantized artifacts are cached beside the exports (`<cache>/quantized/`), keyed by the export's own
key, the precision, the flavour, the settings and the calibration set's digest (so a changed photo,
prompt or setting makes them again); their alone figures are kept in the record, the end-to-end
figures in a record keyed by the artifacts measured together.
"""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from ..components import COMPONENTS
from . import base


def unquantized(backend: base.Backend) -> tuple[str, ...]:
    """Precisions the format makes without a quantization stage: fp32 (the export), and its default
    (fp16: Core ML's compute, TensorRT's engine flag)."""
    return tuple(dict.fromkeys(("fp32", backend.precisions[0])))


def _key(job, name: str, precision: str, flavour: str) -> str:
    from ..convert import cache
    source, _ = base.exported_source(job, name, "onnx")
    record = json.loads(cache.record_path(source).read_text())
    settings = job.target.quantization.for_component(name).to_dict()
    settings.pop("gate")  # see Calibration.digest
    return cache.digest_json({"source": record["key"], "precision": precision, "flavour": flavour,
                              "settings": settings, "calibration": job.calibration.digest(name),
                              "onnxruntime": metadata.version("onnxruntime")})


class _Rungs:
    """Quantize-and-measure of one component, per precision, memoised (the ladder and the end-to-end
    settling may both need a rung)."""

    def __init__(self, job, backend: base.Backend, plan):
        self.job, self.backend, self.plan = job, backend, plan
        self.comp = COMPONENTS[plan.component]
        self.settings = job.target.quantization.for_component(plan.component)
        self.flavour = "tensorrt" if backend.name == "tensorrt" else "ort"
        self.made: dict[str, dict] = {}
        self.errors: dict[str, str] = {}

    def attempt(self, precision: str):
        """(artifact record, alone figures); raises when the quantizer cannot make `precision`."""
        if precision in unquantized(self.backend):
            return None, {}  # the export itself (fp32) or the engine's own precision: nothing to make here
        if precision not in self.made:
            try:
                self.made[precision] = self._make(precision)
            except Exception as e:
                self.errors[precision] = str(e)
                raise
        return self.made[precision], self.made[precision]["alone"]["figures"]

    def _make(self, precision: str) -> dict:
        from ..convert import cache
        from ..quantize.ort import quantize_onnx
        from ..runners.ort_runner import OrtRunner
        job, name = self.job, self.comp.name
        source, _ = base.exported_source(job, name, "onnx")
        key = _key(job, name, precision, self.flavour)
        folder = job.cache_dir / "quantized"
        folder.mkdir(exist_ok=True)
        dst = folder / f"{name}.{precision}.{self.flavour}.onnx"
        found = cache.lookup(dst, key)
        if found.hit:
            job.progress(f"{name}: {precision} ({self.flavour}) from the cache")
            return {**found.record, "path": dst}
        job.progress(f"{name}: quantizing to {precision} ({self.flavour} flavour)")
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        try:
            feeds = job.calibration.feeds("calibration", name) if precision == "int8" else None
            result = quantize_onnx(source, tmp, precision, self.settings, feeds, self.flavour)
            alone = job.calibration.alone(name, job.torch_runner(name), OrtRunner(tmp), self.comp.masks)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        stage = {**result.to_dict(), "file": dst.name}
        record = cache.store(dst, key, {"stage": stage, "alone": alone, "calibration": job.calibration.digest(name)})
        return {**record, "path": dst}

    def runner(self, precision: str):
        """The runner of `precision`'s artifact for the end-to-end pipelines (None: fp32 / not made)."""
        from ..runners.ort_runner import OrtRunner
        try:
            made, _ = self.attempt(precision)
        except Exception:  # noqa: BLE001 - recorded in self.errors; measured as fp32
            return None
        return None if made is None else OrtRunner(made["path"])


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
    return settle_end_to_end(chosen, formats, sensitivity, measure, gate)


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
            base.exported_source(job, plan.component, "onnx")
        except base.StageFailed as e:
            failures[plan.component] = str(e)
            continue
        rungs[plan.component] = _Rungs(job, backend, plan)
        gate = rungs[plan.component].settings.gate
        ladders[plan.component] = choose_precision(plan.component, backend.name, plan.precision,
                                                   rungs[plan.component].attempt, gate)
        for step in ladders[plan.component].steps:
            job.progress(f"gate: {step}")
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
            job.quantized_sources[name] = Path(made["path"])
        job.quantization[name] = record
        job.set_precision(name, precision)
        if precision != ladder.requested:
            job.progress(f"{name}: {ladder.requested} -> {precision} (gate; the reasons are in the manifest)")
    return failures


quantize.quantizes = True  # Backend.buildable: this format's build makes every precision it lists
