"""Core ML mlprogram (.mlpackage) for iOS: converted from the PyTorch graph with coremltools, the package
spec checked here (names, types, shape ranges, ops); prediction, and so parity, needs macOS.

Quantized precisions (int8 = W8A8, int8-weights, palette6, palette4) go through the shared quantize
stage (toolkit/backends/quantize.py), which gates the PyTorch simulation of each rung; `convert` then
converts the chosen precision once: weight-only precisions as the fp16 program compressed by
coremltools (linear8 / palettize6 / palettize4), W8A8 by converting the finalized simulation the gate
measured, and records the simulation's gate figures as the verification; the package's own parity
stays pending macOS.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from ..components.registry import COMPONENTS
from . import base
from .quantize import quantize, simulation_for, unquantized

SETTINGS = {"minimum_deployment_target": "iOS17", "compute_units": "ALL"}
# Weight compression a target may ask per component (`compression = ...`) at fp16 / fp32: applied
# without the gate. A quantized precision is gated weight compression; it replaces this key.
COMPRESSIONS = {"none": "weights as computed (fp16 or fp32)",
                "linear8": "8-bit linear (symmetric, per channel) weight quantization",
                "palettize4": "4-bit k-means palettization of the weights",
                "palettize6": "6-bit k-means palettization of the weights",
                "palettize8": "8-bit k-means palettization of the weights"}
PENDING = ("Core ML prediction needs macOS: the package's own parity is pending a macOS run "
           "(scripts/macos_parity.py, .github/workflows/macos-parity.yml); the package spec was checked here")


def _recipe(job, backend: base.Backend, plan) -> tuple[str, str, list[str]]:
    """(compute precision, compression, notes) of the conversion of `plan` at its (gated) precision."""
    from ..quantize.coreml import COMPRESSION
    gated = plan.component in job.quantization and job.quantization[plan.component]["format"] == "coreml"
    notes = []
    if gated and plan.compression != "none":
        notes.append(f"compression = {plan.compression} not applied: the requested precision "
                     f"{job.quantization[plan.component]['requested']} is gated weight compression, and the gate "
                     f"chose {plan.precision}")
    if plan.precision in COMPRESSION:
        return "fp16", COMPRESSION[plan.precision], notes
    if plan.precision == "int8":
        return "fp16", "none", notes
    return plan.precision, "none" if gated else plan.compression, notes


def _package_key(job, plan, compression: str) -> str | None:
    """The cache key of a gated precision's package (None: not cached, see `convert`)."""
    record = job.quantization.get(plan.component)
    if record is None or record["format"] != "coreml" or plan.precision in ("fp16", "fp32"):
        return None
    from ..convert import cache
    from .quantize import _key
    return cache.digest_json({"rung": _key(job, plan.component, plan.precision, "coreml"),
                              "compression": compression, "coreml": job.target.settings["coreml"]})


def _cached(folder: Path, key: str) -> bool:
    from ..convert import cache
    record = folder.with_name(folder.name + ".json")
    try:
        stored = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return folder.is_dir() and stored.get("key") == key and \
        stored.get("files") == cache.digest_files([p for p in folder.rglob("*") if p.is_file()], folder)


def _store(package: Path, folder: Path, key: str, io: dict) -> None:
    from ..convert import cache
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(package, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    files = cache.digest_files([p for p in folder.rglob("*") if p.is_file()], folder)
    folder.with_name(folder.name + ".json").write_text(json.dumps({"key": key, "files": files, "io": io}))


def _gate_verification(job, backend: base.Backend, plan) -> dict | None:
    """A gated quantized package's verification: the gate's figures of its PyTorch simulation (alone and
    end to end), `pending` for the package itself (macOS), `failed` where they fail the gate (the
    component then falls back). None for fp16 / fp32: `base.verify` records those (spec-checked here,
    parity pending macOS)."""
    record = job.quantization.get(plan.component)
    if record is None or record["format"] != "coreml" or plan.precision in unquantized(backend) \
            or "alone" not in record:
        return None
    gate, alone = job.target.quantization.for_component(plan.component).gate, record["alone"]
    problems = [f"alone: {f}" for f in gate.check(alone["figures"])]
    problems += [f"end to end: {f}" for f in record["end_to_end"]["failures"]]
    return {"status": "failed" if problems else "pending", "runtime": None, "failures": problems,
            "reason": f"the accuracy gate {'failed' if problems else 'passed'} on the PyTorch simulation; {PENDING}",
            "verified_by": f"accuracy gate on the PyTorch simulation of {plan.precision} ({alone['samples']} "
                           "evaluation samples alone; the pipelines end to end), not on the package",
            "gate": {k: v for k, v in gate.to_dict().items() if v is not None}, "figures": alone["figures"],
            "end_to_end_figures": record["end_to_end"]["figures"], "max_abs_error": alone["figures"].get("max_abs")}


@base.per_component
def convert(job, backend: base.Backend, plan) -> dict:
    """torch graph -> jit.trace -> coremltools mlprogram at the (gated) precision, then the spec check
    against the declaration; a gated precision's verification is its simulation's gate figures. Packages of a gated quantized precision are cached (a copy); fp16 / fp32
    packages are made each build, as before quantization existed (the export cache holds no Core ML)."""
    from ..convert.coreml import check_package, convert_coreml, inspect_package
    comp = COMPONENTS[plan.component]
    settings = job.target.settings["coreml"]
    rel = f"models/{comp.name}{backend.suffix}"
    compute, compression, notes = _recipe(job, backend, plan)
    for note in notes:
        job.progress(f"{comp.name}: {note}")
    key = _package_key(job, plan, compression)
    cached = job.cache_dir / "quantized" / f"{comp.name}.{plan.precision}{backend.suffix}"
    what = plan.precision + (f", {compression}" if compression != "none" else "")
    try:
        if key is not None and _cached(cached, key):
            job.progress(f"{comp.name}: Core ML package ({what}) from the cache")
            shutil.copytree(cached, job.root / rel)
            seconds = 0.0
            io = json.loads(cached.with_name(cached.name + ".json").read_text())["io"]
        else:
            job.progress(f"{comp.name}: Core ML conversion ({what}, {settings['minimum_deployment_target']})")
            graph = simulation_for(job, backend, plan, "int8").module if plan.precision == "int8" \
                else job.reference.exported_graph(comp)
            info = convert_coreml(graph, comp.inputs, comp.outputs, comp.example(), job.root / rel, compute,
                                  settings["minimum_deployment_target"], settings["compute_units"], compression)
            seconds, io = info.seconds, info.io
            if key is not None:
                _store(job.root / rel, cached, key, io)
    except Exception as e:
        shutil.rmtree(job.root / rel, ignore_errors=True)
        raise base.StageFailed(f"Core ML conversion failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    inputs, outputs = base.io_entries(comp, io)
    package = inspect_package(job.root / rel)
    problems = check_package(package, inputs, outputs, io["dims"])
    if problems:
        shutil.rmtree(job.root / rel, ignore_errors=True)
        raise base.StageFailed("the Core ML package does not match the declaration: " + "; ".join(problems))
    declared = base.declared_dims(comp)
    narrowed = [f"{d} {declared[d][0]} -> {v[0]}" for d, v in io["dims"].items() if v[0] != declared[d][0]]
    source = "the finalized W8A8 simulation" if plan.precision == "int8" else "torch"
    verification = _gate_verification(job, backend, plan)
    if verification is not None and verification["status"] == "failed":
        shutil.rmtree(job.root / rel, ignore_errors=True)
        raise base.StageFailed("; ".join(verification["failures"][:3]))
    return {**({"verification": verification} if verification is not None else {}), "file": rel, "inputs": inputs, "outputs": outputs, "dims": io["dims"],
            "checks": {"coreml_spec": {"passed": True, "specification_version": package["specification_version"],
                                       "opset": package["opset"], "op_count": package["op_count"],
                                       "ops": package["ops"], "size_bytes": package["size_bytes"],
                                       "io_names_types_ranges": "match the declaration",
                                       "narrowed_dims": narrowed}},
            "provenance": {"stages": [f"{source} -> jit.trace -> coremltools mlprogram ({compute} compute)"] +
                           ([f"weight compression {compression}"] if compression != "none" else []) + notes,
                           "seconds": round(seconds, 2)}}


def open_runner(path: Path, threads: int | None = None, providers: list[str] | None = None):
    from ..convert.coreml import CoreMLRunner
    return CoreMLRunner(path)


BACKEND = base.Backend(
    name="coreml", description="Core ML mlprogram (.mlpackage)", suffix=".mlpackage",
    # Core ML computes in fp16 or fp32; int8 = W8A8 (calibrated in PyTorch), the others compress weights
    precisions=("fp16", "fp32", "int8", "int8-weights", "palette6", "palette4"),
    ladder={"int8": "int8-weights", "palette4": "palette6", "palette6": "int8-weights", "int8-weights": "fp16",
            "fp16": "fp32"}, settings=SETTINGS, export_from=None, stages=(quantize, convert, base.verify),
    packages=("coremltools",), open_runner=open_runner,
    runtime=lambda: f"coremltools {metadata.version('coremltools')} (Core ML)",
    platform_problem=lambda: None if platform.system() == "Darwin" else "Core ML prediction needs macOS",
    options=COMPRESSIONS,
)
