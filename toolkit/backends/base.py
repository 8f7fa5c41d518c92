"""What a backend is, and the build stages every backend shares (export, copy, verify).

A backend owns one artifact format: its name (the one word used in target files, on the command line
and in every report), its artifact suffix, the precisions it can produce, the settings table a target
file gives it (with defaults), the export it starts from, its build stages in order, how to run an
artifact here and why it cannot. A build stage is a function `stage(job, backend, plans) -> failures`
over the components the target gives this backend: it writes manifest entries into `job.entries` and
returns {component: reason} for those that failed (they move to the target's fallback).

Imports: errors, runners, components/spec (declarations), convert (lazily, inside stages).
"""
from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..components.registry import COMPONENTS, Component
from ..runners import Runner

Failures = dict[str, str]


class Stage(Protocol):
    """`job`: the build (`toolkit.deploy.build._Job`: root, target settings, exports, entries, verify);
    `plans`: the target's `ComponentPlan`s this backend makes."""

    def __call__(self, job, backend: Backend, plans: list) -> Failures: ...


@dataclass(frozen=True)
class Exporter:
    """How `toolkit export` makes this format straight from a PyTorch graph (onnx, ort, ptl)."""

    make: Callable  # (component, graph, example args, path) -> record (exporter, opset, export_seconds, ...)
    params: Callable[[Component], dict]  # what the artifact depends on besides the graph (cache key)
    reason: Callable[[Component], str]  # why this exporter, for the report


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    suffix: str  # the artifact's file (or package) suffix in a bundle
    precisions: tuple[str, ...]  # everything the format can produce, first = its default
    settings: Mapping[str, object]  # the target file's [<name>] table and its defaults
    export_from: str | None  # the export a build starts from ("onnx", "ptl"); None: the PyTorch graph
    stages: tuple[Stage, ...]  # the build, in order
    packages: tuple[str, ...]  # Python packages running an artifact needs
    open_runner: Callable[..., Runner]  # (path, threads=None, providers=None) -> Runner
    runtime: Callable[[], str]  # what runs the artifacts here, with its version
    platform_problem: Callable[[], str | None] = lambda: None  # beyond packages: why it cannot run here
    exporter: Exporter | None = None
    options: Mapping[str, str] = field(default_factory=dict)  # extra per-component choices (Core ML compression)
    # The precision ladder: the next precision tried when one fails the accuracy gate (fp32, the floor
    # of every format, has none). toolkit.quantize.gate and the targets read it from here.
    ladder: Mapping[str, str] = field(default_factory=dict)

    def buildable(self) -> tuple[str, ...]:
        """The precisions `toolkit build` makes in this format: all of them where its stages quantize
        (or its converter takes the precision itself), else its default and fp32."""
        if any(getattr(stage, "quantizes", False) for stage in self.stages):
            return self.precisions
        return tuple(dict.fromkeys((self.precisions[0], "fp32")))

    def rungs(self, requested: str) -> list[str]:
        """The precisions tried for `requested`, in order, ending with the floor (fp32)."""
        rungs = [requested]
        while rungs[-1] in self.ladder:
            rungs.append(self.ladder[rungs[-1]])
        return rungs

    def unavailable(self) -> str | None:
        """Why artifacts of this format cannot run on this machine, or None."""
        for package in self.packages:
            if importlib.util.find_spec(package) is None:
                return f"{package} is not installed"
        return self.platform_problem()

    def runner(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Runner:
        return self.open_runner(Path(path), threads=threads, providers=providers)


class StageFailed(Exception):
    """One component's stage failed: the message is the reason recorded in the manifest."""


# --- manifest entry helpers --------------------------------------------------------------------

def io_entries(comp: Component, changed: Mapping | None = None) -> tuple[list[dict], list[dict]]:
    """The manifest's I/O entries: declared name, dtype, shape, doc, range, and how the artifact
    takes each tensor (`changed`: {"inputs"|"outputs": {name: {dtype?, shape?}}})."""
    changed = changed or {}

    def entries(specs, kind):
        out = []
        for s in specs:
            diff = changed.get(kind, {}).get(s.name, {})
            out.append({"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "doc": s.doc,
                        "range": list(s.range) if s.range else None,
                        "artifact_dtype": diff.get("dtype", s.dtype),
                        "artifact_shape": diff.get("shape", list(s.shape))})
        return out
    return entries(comp.inputs, "inputs"), entries(comp.outputs, "outputs")


def declared_dims(comp: Component) -> dict[str, list[int]]:
    return {d.name: [d.min, d.typical, d.max] for d in comp.dims()}


def per_component(convert: Callable[..., dict]) -> Stage:
    """A stage from a one-component conversion `convert(job, backend, plan) -> manifest entry`
    (raising StageFailed)."""
    def stage(job, backend: Backend, plans: list) -> Failures:
        failures = {}
        for plan in plans:
            try:
                job.entries[plan.component] = convert(job, backend, plan)
            except StageFailed as e:
                failures[plan.component] = str(e)
        return failures
    stage.__name__ = convert.__name__
    stage.__doc__ = convert.__doc__
    return stage


# --- the shared stages -------------------------------------------------------------------------

def export(job, backend: Backend, plans: list) -> Failures:
    """`toolkit export`'s job (verified against PyTorch, cached) for the format the backend starts from."""
    job.export([p.component for p in plans], backend.export_from)
    return {}


def exported_source(job, name: str, fmt: str) -> tuple[Path, dict]:
    source, row = job.exported(name, fmt)
    if source is None:
        raise StageFailed("; ".join(row["failures"]) or f"the {fmt} export failed")
    return source, row


def source(job, name: str, fmt: str) -> tuple[Path, dict]:
    """What the next stages start from: the quantize stage's artifact where it chose a quantized
    precision, else the verified export."""
    path, row = exported_source(job, name, fmt)
    quantized = job.quantized_sources.get(name)
    return (quantized, row) if quantized is not None else (path, row)


@per_component
def copy(job, backend: Backend, plan) -> dict:
    """The verified export (or the quantize stage's gated artifact) itself is the artifact: copied, with
    the export's verification (a quantized one is verified by the gate, in `verify`)."""
    from . import BACKENDS
    comp = COMPONENTS[plan.component]
    source_path, row = source(job, comp.name, backend.export_from)
    rel = f"models/{comp.name}{backend.suffix}"
    shutil.copyfile(source_path, job.root / rel)
    inputs, outputs = io_entries(comp)
    if comp.name in job.quantized_sources:  # verified by the gate's figures in `verify`, not the fp32 tolerance
        return {"file": rel, "inputs": inputs, "outputs": outputs, "dims": declared_dims(comp),
                "provenance": {"stages": [f"torch -> {backend.export_from} ({row['exporter']})",
                                          f"quantize ({plan.precision})", "copy"], "opset": row["opset"]}}
    verification = {"status": "passed", "runtime": BACKENDS[backend.export_from].runtime(),
                    "verified_by": f"toolkit export (this exact file, {row['file']} in the export cache)",
                    **{k: row[k] for k in ("cases", "max_abs_error", "max_rel_error", "min_mask_iou",
                                           "max_outlier_fraction")}}
    return {"file": rel, "inputs": inputs, "outputs": outputs, "dims": declared_dims(comp),
            "verification": verification,
            "provenance": {"stages": [f"torch -> {plan.format} ({row['exporter']})", "copy"],
                           "opset": row["opset"], "export_seconds": row["export_seconds"]}}


def verify(job, backend: Backend, plans: list) -> Failures:
    """Every artifact not yet verified is checked against the PyTorch component where its runtime
    exists here (else recorded as pending, with why); a quantized one by the accuracy gate (its figures
    measured again on this very file), never with the fp32 tolerance; a failed one is removed."""
    failures = {}
    for plan in plans:
        entry = job.entries.get(plan.component)
        if entry is None or "verification" in entry:
            continue
        check = job.verify_quantized if plan.component in job.quantized_sources else job.verify
        entry["verification"] = check(plan.component, {**entry, "format": plan.format, "precision": plan.precision})
        if entry["verification"]["status"] == "failed":
            failures[plan.component] = "; ".join(entry["verification"]["failures"][:3])
            artifact = job.root / job.entries.pop(plan.component)["file"]
            shutil.rmtree(artifact) if artifact.is_dir() else artifact.unlink(missing_ok=True)
    return failures
