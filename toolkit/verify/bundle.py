"""Artifact parity and `toolkit verify BUNDLE`.

A bundle is checked in three steps: the manifest against its schema, every file against its
sha256, then every artifact whose runtime exists on this machine against the PyTorch model on the
cases `toolkit export` uses (golden-derived inputs, a typical input, each dynamic dimension at its
ends), restricted to the dimension ranges the artifact takes. The reference is the checkpoint the
bundle was built from: the embedded default is regenerated, another checkpoint must be given and
must hash to the manifest's weights digest. An artifact whose runtime is missing here (Core ML
off macOS; TensorRT engines, which are built on the device) is reported as pending with the
reason, never as passed.

fp16 artifacts are compared with `FP16_TOLERANCE` instead of the component's fp32 tolerance.
It is provisional: no fp16 artifact has run yet (Core ML needs macOS, TensorRT a Jetson).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import Tensor

from ..backends import BACKENDS
from ..components.registry import COMPONENTS, Component, Tolerance
from ..components.spec import linear_form
from ..convert import cache
from ..deploy.bundle import Bundle, BundleError, open_bundle, unpacked
from ..errors import ToolkitError
from ..pipeline.artifacts import artifact_runner
from .compare import Reference, compare, run_cases

FP16_TOLERANCE = Tolerance(atol=1e-3, rtol=2e-2, mask_iou=0.95, outliers=0.01)


def weights_digest(state: Mapping[str, Tensor]) -> str:
    return cache.digest_tensors(state)


def case_dims(comp: Component, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The dimension values a case's feeds have."""
    values = {}
    for spec in comp.inputs:
        for axis, expr in spec.dynamic_axes().items():
            name, scale, offset = linear_form(expr)
            values[name] = (np.asarray(feeds[spec.name]).shape[axis] - offset) // scale
    return values


def verify_artifact(comp: Component, entry: dict, path: Path, reference: Reference) -> dict:
    """Parity of one artifact (manifest entry: format, precision, I/O, dims) with the reference, or
    `pending` with the reason when its runtime is not here."""
    fmt, precision = entry["format"], entry["precision"]
    reason = BACKENDS[fmt].unavailable()
    if reason:
        return {"status": "pending", "runtime": None, "reason": reason}
    cases = reference.inputs(comp)
    inputs = {case: feeds for case, feeds in cases.items()
              if all(entry["dims"][d][0] <= v <= entry["dims"][d][2] for d, v in case_dims(comp, feeds).items())}
    outside = [case for case in cases if case not in inputs]
    if not inputs:  # a verification that ran no case proves nothing: it must not pass
        return {"status": "failed", "runtime": BACKENDS[fmt].runtime(), "cases": [], "cases_outside_ranges": outside,
                "failures": [f"{comp.name}: no verification case lies within the artifact's dimension ranges "
                             f"{entry['dims']}: nothing was checked"]}
    reference_outputs = reference.outputs(comp)
    start = time.perf_counter()
    try:
        runner = artifact_runner(fmt, path, entry["inputs"], entry["outputs"])
    except BundleError as e:  # reported as this artifact's failure; the other artifacts are still checked
        return {"status": "failed", "runtime": BACKENDS[fmt].runtime(), "cases": [], "failures": [f"{comp.name}: {e}"]}
    got = run_cases(runner, inputs)
    # Only Core ML computes in fp16 here; the TensorRT-ready ONNX runs in fp32 (its precision is the engine's).
    checked = replace(comp, tolerance=FP16_TOLERANCE) if precision == "fp16" and fmt == "coreml" else comp
    result = compare(checked, fmt, inputs, reference_outputs, got).summary()
    out = {"status": "passed" if result.pop("ok") else "failed", "runtime": BACKENDS[fmt].runtime(), **result,
           "tolerance": vars(checked.tolerance), "seconds": round(time.perf_counter() - start, 2)}
    if outside:
        out["cases_outside_ranges"] = outside
    if fmt == "tensorrt":
        out["engine"] = (f"the {precision} engine's parity is pending: engines are built and compared on the device, "
                         f"e.g. polygraphy run {entry['file']} --trt --{precision} --onnxrt with the shapes of "
                         "engines/build_engines.sh")
    return out


@dataclass
class VerifyReport:
    bundle: str
    target: str
    files: int
    bytes: int
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f for row in self.rows if row["status"] == "failed" for f in row.get("failures", [])]

    @property
    def ok(self) -> bool:
        return not any(row["status"] == "failed" for row in self.rows)

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "target": self.target, "files": self.files, "bytes": self.bytes,
                "ok": self.ok, "failures": self.failures, "rows": self.rows, "notes": self.notes}


def reference_state(bundle: Bundle, checkpoint_path: str | Path | None, progress) -> dict[str, Tensor]:
    """The weights the bundle was built from (its manifest's digest must match): parity's reference."""
    model = bundle.manifest["model"]
    if checkpoint_path is None and not model["embedded_default"]:
        raise ToolkitError(f"bundle {bundle.root} was built from {model['weights']!r}; parity needs that checkpoint: "
                           "pass --checkpoint (or --no-parity)")
    from ..checkpoint.loader import resolve_weights
    if checkpoint_path is None:
        progress("generating the embedded default weights (the bundle was built from them)")
    state = resolve_weights(checkpoint_path).state
    if weights_digest(state) != model["weights_sha256"]:
        raise ToolkitError(f"the reference weights do not match the bundle's (weights digest differs from "
                           f"{model['weights_sha256'][:12]}...): pass the checkpoint the bundle was built from")
    return state


def _is_quantized(entry: dict) -> bool:
    q = entry.get("quantization")
    return bool(q) and entry["precision"] == q["chosen"] and "alone" in q


def calibration_for(manifest: dict, names: list[str], graphs, directory, progress):
    """The build's calibration set and settings again (the digest must match), or (None, why)."""
    from ..quantize import CalibrationSet
    from ..quantize.gate import QuantSettings
    from ..quantize.session import Calibration
    section = manifest["quantization"] or {}
    settings_table = dict(section.get("settings") or {})
    settings_table["gate"] = {k: v for k, v in (settings_table.get("gate") or {}).items() if v is not None}
    settings = QuantSettings.from_dict(settings_table)
    recorded = section.get("calibration", {}).get("digest")
    candidates = [directory] if directory is not None else \
        [d for d in (section.get("calibration", {}).get("directory"), None) if d is None or Path(d).is_dir()]
    for candidate in candidates:
        try:
            found = CalibrationSet.load(candidate)
        except ToolkitError:
            continue
        without_gate = {k: v for k, v in settings.to_dict().items() if k != "gate"}  # as Calibration.digest
        if found.digest(without_gate) == recorded:
            return Calibration(settings, names, graphs, candidate, progress=progress), None
    return None, ("the calibration set the bundle was quantized with (digest "
                  f"{str(recorded)[:12]}...) is not here: pass --calibration DIR to re-measure the gate")


def verify_quantized(comp: Component, entry: dict, path: Path, reference: Reference, calibration) -> dict:
    """A quantized artifact against the manifest's recorded gate: its alone figures measured again on the
    evaluation part (the same metrics as the build's); the end-to-end figures are the build's, said so."""
    from ..quantize.gate import Gate
    fmt = entry["format"]
    reason = BACKENDS[fmt].unavailable()
    if reason:
        return {"status": "pending", "runtime": None, "reason": reason}
    recorded = entry["verification"].get("gate") or {}
    gate = Gate(**{k: recorded.get(k) for k in Gate().to_dict()})
    try:
        runner = artifact_runner(fmt, path, entry["inputs"], entry["outputs"])
    except BundleError as e:
        return {"status": "failed", "runtime": BACKENDS[fmt].runtime(), "cases": [], "failures": [f"{comp.name}: {e}"]}
    alone = calibration.alone(comp.name, reference.runner(comp.name), runner, comp.masks)
    failures = [f"{comp.name}: alone: {f}" for f in gate.check(alone["figures"])]
    return {"status": "failed" if failures else "passed", "runtime": BACKENDS[fmt].runtime(),
            "checked": f"accuracy gate (alone, {alone['samples']} evaluation samples), re-measured here",
            "failures": failures, "figures": alone["figures"], "gate": recorded,
            "max_abs_error": alone["figures"].get("max_abs"),
            "end_to_end": "recorded by the build (not re-run by verify): "
                          + ", ".join(f"{k} {v:.4g}" for k, v in entry["verification"].get("end_to_end_figures",
                                                                                           {}).items())}


def verify_bundle(path: str | Path, checkpoint_path: str | Path | None = None, parity: bool = True,
                  components: list[str] | None = None, golden: bool | None = None,
                  progress: Callable[[str], None] = lambda message: None,
                  calibration: str | Path | None = None) -> VerifyReport:
    """Schema and checksums (BundleError on the first problem), then parity per artifact (`golden`:
    include the golden-derived case; default: when the fixture is on this machine)."""
    with unpacked(path) as root:
        try:
            bundle = open_bundle(root)
        except BundleError as e:
            if Path(root) == Path(path):
                raise
            # name the archive the user gave, not the temporary directory it was extracted to
            raise BundleError(str(e).replace(f"bundle {root}", f"archive {path}")) from e
        manifest = bundle.manifest
        entries = manifest["components"]
        names = list(components or entries)
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise BundleError(f"bundle {root} has no component(s) {unknown}")
        report = VerifyReport(str(path), bundle.target, len(manifest["files"]),
                              sum(f["bytes"] for f in manifest["files"]))
        progress(f"{path}: schema {manifest['schema']} and {report.files} checksums ok")
        on_device = bundle.on_device_files()
        if on_device:
            report.notes.append(f"{len(on_device)} on-device file(s) not covered by checksums: {', '.join(on_device)}")
        reference = None
        if parity and any(BACKENDS[entries[n]["format"]].unavailable() is None for n in names):
            reference = Reference(reference_state(bundle, checkpoint_path, progress), golden, progress, names)
        quantized = [n for n in names if _is_quantized(entries[n])]
        cal, no_cal = (None, None)
        if reference is not None and quantized:
            cal, no_cal = calibration_for(manifest, quantized, reference.graphs, calibration, progress)
        for name in names:
            entry = entries[name]
            row = {"component": name, "format": entry["format"], "precision": entry["precision"],
                   "file": entry["file"]}
            if reference is None:
                reason = BACKENDS[entry["format"]].unavailable() or "parity not requested (--no-parity)"
                row.update(status="pending", runtime=None, reason=reason)
            elif name in quantized:  # never judged with the fp32 tolerance, never passed unmeasured
                if cal is None:
                    row.update(status="pending", runtime=None, reason=no_cal)
                else:
                    progress(f"{name} [{entry['format']} {entry['precision']}]: accuracy gate")
                    row.update(verify_quantized(COMPONENTS[name], entry, bundle.path(entry["file"]), reference, cal))
            else:
                progress(f"{name} [{entry['format']}]: parity")
                row.update(verify_artifact(COMPONENTS[name], entry, bundle.path(entry["file"]), reference))
                reference.forget(COMPONENTS[name])
            report.rows.append(row)
            reason = f" ({row['reason']})" if row.get("reason") else ""
            progress(f"{name} [{entry['format']}]: {row['status']}{reason}")
        if cal is not None:
            cal.close()
        if manifest.get("engines"):
            report.notes.append(f"TensorRT engines: {manifest['engines']['status']}")
    return report


def write_report(report: VerifyReport, path: str | Path) -> Path:
    """`report` as JSON at `path`, written under a temporary name and renamed (never half a file).
    Only a previous report is replaced: any other existing file or directory is refused."""
    import json
    import os
    path = Path(path)
    if path.is_dir() or path.is_symlink():
        raise ToolkitError(f"--report {path} is a directory or a link; give a new file path")
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            previous = None
        if not (isinstance(previous, dict) and {"bundle", "rows", "failures"} <= set(previous)):
            raise ToolkitError(f"--report {path} exists and is not a verify report; give a new file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        from ..machine import cpu
        document = {**report.to_json(), "cpu": cpu()}  # parity figures depend on the CPU they ran on
        tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def format_rows(rows: list[dict]) -> str:
    head = ["component", "format", "precision", "parity", "runtime", "cases", "max abs err", "mask IoU", "note"]
    lines = [head]
    for r in rows:
        iou = r.get("min_mask_iou")
        err = r.get("max_abs_error")
        lines.append([r["component"], r["format"], r["precision"], r["status"], r.get("runtime") or "-",
                      str(len(r.get("cases", []))) if r.get("cases") else "-",
                      "-" if err is None else f"{err:.2e}", "-" if iou is None else f"{iou:.4f}",
                      r.get("reason") or ("engine parity pending (on the device)" if r.get("engine") else "")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
