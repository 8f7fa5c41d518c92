"""`toolkit quantize-report BUNDLE`: the sensitivity report of a quantized bundle.

Per component, every precision its ladder tried with the gate's figures and verdict comes from the
manifest (what the build measured: nothing is re-run for it). For one component - by default the
worst, the quantized ONNX component whose requested precision measured the lowest SQNR - the damage
per operator type is measured (`report.op_type_sensitivity`: one operator type quantized at a time)
on the fp32 export (from the export cache) and the build's calibration set, recorded again by the
fp32 pipelines; this needs the bundle's weights (the embedded default, or --checkpoint).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ToolkitError

ONNX_FORMATS = ("onnx", "ort", "tensorrt")  # quantized by onnxruntime's tools: per-operator-type rows apply


def ladders_of(manifest: dict) -> list[dict]:
    """The quantization record of every component that had a quantized precision planned, named."""
    return [{"component": name, **entry["quantization"]} for name, entry in manifest["components"].items()
            if entry.get("quantization")]


def _requested_sqnr(ladder: dict) -> float:
    rung = next((r for r in ladder["rungs"] if r["precision"] == ladder["requested"]), None)
    return (rung or {}).get("figures", {}).get("sqnr_db", float("inf"))


def worst_component(ladders: list[dict]) -> str | None:
    """The ONNX-quantized component whose requested precision measured the lowest SQNR alone."""
    measured = [ladder for ladder in ladders if ladder["format"] in ONNX_FORMATS and
                _requested_sqnr(ladder) != float("inf")]
    return min(measured, key=_requested_sqnr)["component"] if measured else None


def header(manifest: dict, bundle: Path) -> str:
    from ..machine import cpu_line
    model, section = manifest["model"], manifest.get("quantization") or {}
    calibration = section.get("calibration", {})
    lines = [f"# Quantization sensitivity: bundle {bundle.name} (target {manifest['target']['name']})", "",
             f"- weights: {model['weights']}",
             f"- calibration set: {calibration.get('directory', '-')} (digest `{str(calibration.get('digest'))[:16]}`)",
             f"- figures: measured by the build on the evaluation part (per operator type: measured now on {cpu_line()})"]
    if model.get("embedded_default"):
        lines.append("- **the embedded default weights are deterministic, NOT trained**: their activation statistics "
                     "are not the trained model's, so these figures say how the quantizers treat these activations, "
                     "not how the trained model quantizes")
    return "\n".join(lines) + "\n"


def op_type_rows(bundle, name: str, checkpoint_path, calibration_dir, cache_dir,
                 progress: Callable[[str], None]) -> list[dict]:
    """Per operator type figures of component `name` of the bundle (see the module doc)."""
    from ..components.registry import COMPONENTS
    from ..deploy.build import default_cache_dir
    from ..deploy.export import run_export
    from ..verify.bundle import calibration_for, reference_state, weights_digest
    from ..verify.compare import Reference
    from .report import op_type_sensitivity
    state = reference_state(bundle, checkpoint_path, progress)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(weights_digest(state))
    reference = Reference(state, None, progress, [name])
    report = run_export(cache, state, bundle.manifest["model"]["weights"], [name], ["onnx"], progress=progress,
                        reference=reference)
    if not report.ok:
        raise ToolkitError(f"{name}: the fp32 export failed: {report.failures[0].splitlines()[0]}")
    calibration, why = calibration_for(bundle.manifest, [name], reference.graphs, calibration_dir, progress)
    if calibration is None:
        raise ToolkitError(f"{name}: {why}")
    try:
        progress(f"{name}: quantizing one operator type at a time and measuring each against fp32")
        return op_type_sensitivity(cache / f"{name}.onnx", calibration.feeds("calibration", name),
                                   calibration.feeds("evaluation", name),
                                   calibration.settings.for_component(name), COMPONENTS[name].masks)
    finally:
        calibration.close()


def quantize_report(bundle_dir: str | Path, out: Path, op_types: str = "worst", checkpoint_path=None,
                    calibration_dir=None, cache_dir=None,
                    progress: Callable[[str], None] = lambda message: None) -> tuple[list[dict], dict, list[Path]]:
    """Write report.md and sensitivity.png of the bundle into `out`; `op_types`: a component name,
    "worst" or "none". Returns (ladders, {component: per-operator-type rows}, files)."""
    from ..deploy.bundle import open_bundle
    from .report import write_report
    bundle = open_bundle(bundle_dir)
    ladders = ladders_of(bundle.manifest)
    if not ladders:
        raise ToolkitError(f"bundle {bundle_dir} has no quantized component (every component was planned at its "
                           "format's own precision): nothing to report; build with --precision int8")
    name = worst_component(ladders) if op_types == "worst" else None if op_types == "none" else op_types
    if op_types not in ("worst", "none"):
        ladder = next((ladder for ladder in ladders if ladder["component"] == op_types), None)
        if ladder is None:
            raise ToolkitError(f"--op-types {op_types}: not a quantized component of the bundle; quantized: "
                               + ", ".join(ladder["component"] for ladder in ladders))
        if ladder["format"] not in ONNX_FORMATS:
            raise ToolkitError(f"--op-types {op_types}: its format {ladder['format']} is not quantized by onnxruntime; "
                               "per-operator-type figures exist for " + ", ".join(ONNX_FORMATS))
    rows = {name: op_type_rows(bundle, name, checkpoint_path, calibration_dir, cache_dir, progress)} if name else {}
    md, png = write_report(ladders, out, rows, header(bundle.manifest, Path(bundle_dir)))
    return ladders, rows, [md, png]
