"""The `toolkit export` job: selected components to ONNX and TorchScript lite, every artifact verified.

Per component and format a cache key is computed from the component's declaration, the weights
under its prefixes, the code that builds and checks graphs, the tool versions and the exporter
parameters. A hit reuses the artifact and its recorded verification. A miss exports to a
temporary name and verifies the artifact against the PyTorch graph on the component's cases
(golden-derived, typical, each dynamic dimension at both ends); only a verified artifact takes its
final name, a failed one is kept as `<component>.failed.<ext>` and fails the job.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import __version__
from ..backends import Backend, exporters
from ..components.registry import COMPONENTS, Component, parameter_count, weights
from ..convert import cache
from ..errors import ToolkitError, keep_interrupts
from ..files.outputs import error_text, is_write_error, make_dirs, remove_empty, writing_to
from ..machine import cpu
from ..verify.compare import Reference, compare, run_cases

REPORT_NAME = "export_report.json"
REPORT_SCHEMA = "toolkit.export_report/1"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour codes in exporter messages
# Sources that decide what a graph computes or how it is checked: a change re-exports everything.
# Named file by file (other converters and runners live beside these and do not touch these artifacts).
_ROOT = Path(__file__).resolve().parents[1]  # toolkit/
_SOURCES = ("model", "components/registry.py", "components/spec.py", "verify/compare.py", "pipeline/preprocess.py",
            "verify/golden.py",
            "convert/onnx_export.py", "convert/ort_mobile.py", "convert/ptl_export.py", "convert/reparam.py",
            "backends/base.py", "backends/onnx.py", "backends/ort.py", "backends/ptl.py",
            "runners/base.py", "runners/ort_runner.py", "runners/ptl_runner.py", "runners/torch_runner.py")
_TOOLS = ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "numpy")


# The formats `toolkit export` makes straight from a PyTorch graph, by their backends (toolkit/backends).
FORMATS: dict[str, Backend] = exporters()


def tool_versions() -> dict[str, str]:
    return {"toolkit": __version__, **{name: metadata.version(name) for name in _TOOLS}}


def code_digest() -> str:
    paths = [p for name in _SOURCES for p in ([_ROOT / name] if name.endswith(".py") else (_ROOT / name).rglob("*.py"))]
    return cache.digest_files(paths, _ROOT)


def machine() -> dict:
    return {"platform": platform.platform(), "cpu": cpu(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


@dataclass
class ExportReport:
    out: str
    weights: str
    rows: list[dict]
    seconds: float
    versions: dict = field(default_factory=tool_versions)
    machine: dict = field(default_factory=machine)

    @property
    def ok(self) -> bool:
        return all(row["ok"] for row in self.rows)

    @property
    def failures(self) -> list[str]:
        return [f for row in self.rows for f in row["failures"]]

    def to_json(self) -> dict:
        return {"schema": REPORT_SCHEMA, "out": self.out, "weights": self.weights, "ok": self.ok,
                "wall_seconds": round(self.seconds, 2), "machine": self.machine, "versions": self.versions,
                "artifacts": self.rows}


@contextmanager
def _quiet_exporters():
    """The exporters log every skipped optional op and folding decision; keep the job's stderr readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxslim")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _row(comp: Component, fmt: Backend, artifact: Path, state: Mapping[str, Tensor], record: dict, cache_state: str) -> dict:
    v = record.get("verification", {})
    return {
        "component": comp.name, "format": fmt.name, "file": artifact.name,
        "exporter": record.get("exporter"), "exporter_reason": fmt.exporter.reason(comp), "opset": record.get("opset"),
        "size_bytes": record.get("size_bytes"), "parameters": parameter_count(state, comp),
        "dynamic_axes": {d.name: [d.min, d.max] for d in comp.dims()},
        "max_abs_error": v.get("max_abs_error"), "max_rel_error": v.get("max_rel_error"),
        "min_mask_iou": v.get("min_mask_iou"), "max_outlier_fraction": v.get("max_outlier_fraction"),
        "threshold_flips": v.get("threshold_flips", 0),
        "cases": v.get("cases", []),
        "export_seconds": record.get("export_seconds"), "verify_seconds": record.get("verify_seconds"),
        "seconds": record.get("seconds"), "cache": cache_state, "ok": bool(v.get("ok")),
        "failures": v.get("failures", []),
    }


def _produce(comp: Component, fmt: Backend, graph: nn.Module, inputs: dict, reference: dict, out: Path,
             progress: Callable[[str], None], failed_key: str) -> tuple[Path, dict]:
    """Export one artifact, verify it, move it to its final (or failed) name; returns (path, record).

    An interrupt or a write error (disk full) stops the job, leaving no temporary file behind."""
    final = out / f"{comp.name}{fmt.suffix}"
    tmp = out / f".{comp.name}.partial{fmt.suffix}"
    start = time.perf_counter()
    args = tuple(torch.from_numpy(x) for x in comp.example().values())
    try:
        try:
            with keep_interrupts(), _quiet_exporters():
                info = fmt.exporter.make(comp, graph, args, tmp)
        except Exception as e:  # noqa: BLE001 - an exporter failure fails this artifact, not the job
            if is_write_error(e, out):
                raise
            tmp.unlink(missing_ok=True)
            # the whole message goes to the report (without colour codes); the CLI prints one line
            message = f"{comp.name} [{fmt.name}]: export failed: {type(e).__name__}: {_ANSI.sub('', str(e)).strip()}"
            return final, {"verification": {"ok": False, "failures": [message[:4000]]},
                           "seconds": time.perf_counter() - start}
        progress(f"{comp.name}.{fmt.name}: exported in {info['export_seconds']:.1f} s, verifying on {len(inputs)} cases")
        verify_start = time.perf_counter()
        got = run_cases(fmt.runner(tmp), inputs)
        verification = compare(comp, fmt.name, inputs, reference, got)
        record = {**info, "size_bytes": tmp.stat().st_size, "verify_seconds": time.perf_counter() - verify_start,
                  "seconds": time.perf_counter() - start, "verification": verification.summary()}
        if not verification.ok:
            failed = out / f"{comp.name}.failed{fmt.suffix}"
            os.replace(tmp, failed)
            cache.store(failed, failed_key, record)  # the record marks the file as the export's own
            cache.record_path(final).unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            return failed, record
        os.replace(tmp, final)
        return final, record
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_record(path: Path, artifact: str) -> bool:
    """A cache record (written by `cache.store`) of the file named `artifact`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("file") == artifact and "key" in record and "sha256" in record


def _is_own(path: Path) -> bool:
    """Whether the export wrote `path`: its report, a cache record, or an artifact with its record."""
    if path.name == REPORT_NAME:
        try:
            return json.loads(path.read_text()).get("schema") == REPORT_SCHEMA
        except (OSError, ValueError, AttributeError):
            return False
    if path.name.endswith(".json"):
        return _is_record(path, path.name[:-len(".json")])
    return _is_record(cache.record_path(path), path.name)


def foreign_files(out: Path, names: Iterable[str], formats: Iterable[str]) -> list[str]:
    """Files in `out` an export of `names` x `formats` would replace or delete but did not write."""
    paths = [out / REPORT_NAME]
    for name in names:
        for fmt in (FORMATS[f] for f in formats):
            for artifact in (out / f"{name}{fmt.suffix}", out / f"{name}.failed{fmt.suffix}"):
                paths += [artifact, cache.record_path(artifact)]
    listed = set()  # failed artifacts of earlier versions have no record, but the export's report names them
    if (out / REPORT_NAME).is_file() and _is_own(out / REPORT_NAME):
        rows = json.loads((out / REPORT_NAME).read_text()).get("artifacts", [])
        listed = {row.get("file") for row in rows if isinstance(row, dict)}
    return [p.name for p in paths if (p.exists() or p.is_symlink()) and not (_is_own(p) or p.name in listed)]


def check_selection(names: Iterable[str] | None, formats: Iterable[str]) -> list[str]:
    """The component names to export (all when none are given); raises on unknown names or formats."""
    names = list(names or COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ToolkitError(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")
    bad_formats = [f for f in formats if f not in FORMATS]
    if bad_formats:
        raise ToolkitError(f"unknown formats {bad_formats}; known: {', '.join(FORMATS)}")
    return names


def check_out(out: str | Path, names: Iterable[str], formats: Iterable[str]) -> None:
    """The folder is a cache that later runs reuse, so it may hold other files: the export only ever
    replaces or deletes files it wrote itself (its report, an artifact with its cache record), and
    refuses a folder where it would have to replace anything else, whatever --force says."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"{out} exists and is not a directory")
    if out.is_dir():
        foreign = foreign_files(out, names, formats)
        if foreign:
            raise ToolkitError(f"{out} holds {', '.join(foreign)}, not written by an export; the export would "
                               "replace them: move them or choose another folder")


def run_export(out: str | Path, state: Mapping[str, Tensor], weights_label: str,
               names: Iterable[str] | None = None, formats: Iterable[str] = ("onnx", "ptl"), force: bool = False,
               progress: Callable[[str], None] = lambda message: None,
               reference: Reference | None = None) -> ExportReport:
    """`reference`: the PyTorch model and cases to check against (a build passes its own, so the
    model is built and the golden feeds are computed once); by default one for `state`."""
    start = time.perf_counter()
    names = check_selection(names, formats)
    out = Path(out)
    check_out(out, names, formats)
    try:
        created = make_dirs(out)
    except OSError as err:  # under /proc, /sys or a regular file, no permission, ...
        raise ToolkitError(f"cannot create {out}: {error_text(err, out)}") from err
    try:
        with writing_to(out):
            return _run_export(out, state, weights_label, names, formats, force, progress, reference, start)
    except BaseException:
        remove_empty(created)  # a folder this run made and left empty (interrupted early)
        raise


def _run_export(out: Path, state, weights_label, names, formats, force, progress, reference, start) -> ExportReport:
    reference = reference or Reference(state, progress=progress, components=names)
    shared = {"code": code_digest(), "versions": tool_versions(), "golden_case": reference.golden}
    rows = []
    for name in names:
        comp = COMPONENTS[name]
        base = {**shared, "declaration": comp.declaration(), "weights": cache.digest_tensors(weights(state, comp))}
        plan = []
        for fmt in (FORMATS[f] for f in formats):
            artifact = out / f"{comp.name}{fmt.suffix}"
            key = cache.digest_json({**base, "format": fmt.name, "params": fmt.exporter.params(comp)})
            found = cache.Lookup(None, "forced") if force else cache.lookup(artifact, key)
            plan.append((fmt, artifact, key, found))
        if not all(found.hit for *_, found in plan):
            inputs, outputs = reference.inputs(comp), reference.outputs(comp)
            broken = {case: r for case, r in outputs.items() if isinstance(r, Exception)}
            if broken:
                case, error = next(iter(broken.items()))
                raise ToolkitError(f"{comp.name}: the PyTorch graph fails on case '{case}': {error}")
            exported = reference.exported_graph(comp)
        for fmt, artifact, key, found in plan:
            if found.hit:
                progress(f"{comp.name}.{fmt.name}: cache hit")
                rows.append(_row(comp, fmt, artifact, state, found.record, "hit"))
                continue
            progress(f"{comp.name}.{fmt.name}: exporting ({found.reason})")
            path, record = _produce(comp, fmt, exported, inputs, outputs, out, progress, f"failed:{key}")
            if record["verification"]["ok"]:
                record = cache.store(path, key, record)
            rows.append(_row(comp, fmt, path, state, record, f"miss ({found.reason})"))
            summary = rows[-1]
            progress(f"{comp.name}.{fmt.name}: " + ("ok" if summary["ok"] else "FAILED") +
                     f", max abs error {_fmt(summary['max_abs_error'])}, {summary['seconds']:.1f} s")
        reference.forget(comp)  # the reference outputs of the big components are ~100 MB per case
    report = ExportReport(str(out), weights_label, rows, time.perf_counter() - start)
    tmp = out / f".{REPORT_NAME}.partial-{os.getpid()}"
    try:  # whole or not at all: an interrupted write must not leave a truncated report
        tmp.write_text(json.dumps(report.to_json(), indent=2, default=str))
        os.replace(tmp, out / REPORT_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}e}" if isinstance(x, float) else str(x)


def _count(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M', 1800 -> '1.8k' (with `unit`, e.g. 'B' for bytes)."""
    if n is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{prefix}{unit}"
    return f"{n:.0f}{unit}"


def format_table(rows: list[dict]) -> str:
    head = ["component", "format", "exporter", "opset", "size", "params", "dynamic axes", "max abs err",
            "max rel err", "beyond tol", "mask IoU", "flips at 0", "cases", "time s", "cache", "ok"]
    lines = [head]
    for r in rows:
        dyn = ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in r["dynamic_axes"].items()) or "-"
        lines.append([
            r["component"], r["format"], r["exporter"] or "-", _fmt(r["opset"]),
            _count(r["size_bytes"], "B"), _count(r["parameters"]),
            dyn, _fmt(r["max_abs_error"]), _fmt(r["max_rel_error"]),
            "-" if r["max_outlier_fraction"] is None else f"{r['max_outlier_fraction']:.2%}",
            "-" if r["min_mask_iou"] is None else f"{r['min_mask_iou']:.4f}",
            "-" if r["min_mask_iou"] is None else str(r.get("threshold_flips", 0)), str(len(r["cases"])),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}", r["cache"].split(" ")[0],
            "yes" if r["ok"] else "NO"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
