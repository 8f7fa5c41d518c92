"""`toolkit build --target X`: a deployable bundle from a checkpoint, each artifact verified or its
pending check stated.

The job, reported step by step through `progress`:
1. the target file says what each component becomes (format, precision, fallback, settings);
2. `toolkit export`'s job makes the ONNX / .ptl the formats start from, verified against PyTorch,
   in a content-hash cache shared by all builds (default ~/.cache/esam3-toolkit/export/<weights>);
3. each format's backend runs its stages in order (toolkit/backends: export -> convert -> verify):
   copy (onnx, ptl), ONNX Runtime Mobile conversion (ort), TensorRT-ready ONNX with the operator
   check (tensorrt), Core ML conversion with the spec check (coreml); every artifact that is not a
   verified export's exact copy is checked against the PyTorch model where its runtime exists here
   (`toolkit.verify.bundle.verify_artifact`); Core ML parity (macOS) and the TensorRT engines (built on the
   device) are recorded as pending, with the command that does them. A stage that fails moves the
   component to the target's fallback format with the reason in the manifest; without a fallback
   the build fails;
4. tokenizer files, the prompt-embedding cache (`concepts`), pre/post-processing constants and the
   manifest, written last. Everything is written to a temporary sibling directory renamed at the
   end (`outputs.fresh_output_dir`): an interrupted build leaves no directory that verifies, and an
   existing bundle is replaced only with `force`.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..backends import BACKENDS
from ..checkpoint import layout
from ..components.registry import COMPONENTS
from ..components.spec import DIMS
from ..errors import ToolkitError
from ..files.outputs import fresh_output_dir
from ..machine import cpu
from ..pipeline import memory_bank
from ..pipeline.preprocess import IMAGE_SIZE
from ..pipeline.tokenizer import CONTEXT_LENGTH, VOCAB_FILE, Tokenizer
from ..runtime.video import MAX_PROMPT_POINTS, NO_OBJECT_SCORE, STABILITY_DELTA, STABILITY_THRESH
from ..verify.bundle import verify_artifact, weights_digest
from ..verify.compare import Reference
from .bundle import SCHEMA_ID, create_archive, file_entries, write_manifest
from .targets import ComponentPlan, Target

_TOOLS = ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "coremltools", "numpy")

PREPROCESS = {
    "image_size": IMAGE_SIZE, "channel_order": "RGB", "layout": "NCHW", "dtype": "float32", "scale": 1 / 255,
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "resize": {
        "image": "detector path (toolkit segment / run --image): the uint8 RGB image resized to 1008x1008 "
                 "(aspect ratio not kept) with bilinear interpolation, antialiasing and half-pixel centres, "
                 "rounded to uint8 (= torch interpolate(mode='bilinear', antialias=True, align_corners=False) "
                 "on uint8 = torchvision v2 Resize); then x * scale, (x - mean) / std",
        "video_frame": "tracker path (toolkit track / run --frames): PIL Image.resize((1008, 1008)) (bicubic), "
                       "x / 255 in float64, cast to float32, (x - mean) / std",
    },
}
POSTPROCESS = {
    "image": {
        "score": "sigmoid(pred_logits[0, q, 0]) * sigmoid(presence_logit[0, 0])",
        "default_threshold": 0.5, "keep": "queries with score > threshold, in query order",
        "boxes": "pred_boxes (normalised cx, cy, w, h) -> x0, y0, x1, y1 times (W, H, W, H) of the original image",
        "masks": "pred_masks logits (288x288) resized bilinearly with half-pixel centres to the original H x W, "
                 "sigmoid; a pixel is in the mask when the probability > mask_threshold",
        "mask_threshold": 0.5,
        "prompt": "prompt = text_features ++ geometry_tokens (sequence axis), prompt_mask = text_mask ++ "
                  "geometry_mask; boxes normalised cx, cy, w, h of the original image",
    },
    "tracker": {
        "frame_output": "the chosen 288x288 mask logits resized bilinearly (half-pixel centres) to the frame size; "
                        "a pixel is in the mask when the logit > 0; the object is present when its score logit > 0",
        "mask_choice": "mask_decoder gives 4 masks: with at most multimask_max_points prompt points (tracked "
                       "frames have none) the best predicted IoU among masks 1..3, else mask 0 (falling back to "
                       "the best of 1..3 when mask 0 is unstable); masks of an absent object are no_object_score",
        "memory_encoder_input": "mask_probability: the chosen 288x288 mask logits resized bilinearly (half-pixel "
                                "centres) to 1008x1008, then 1.0 where > 0 else 0.0 on a prompted (clicked) frame, "
                                "sigmoid on a tracked frame",
        "multimask_max_points": memory_bank.MULTIMASK_MAX_POINTS, "no_object_score": NO_OBJECT_SCORE,
        "num_maskmem": memory_bank.NUM_MASKMEM, "max_conditioning_frames": memory_bank.MAX_COND_FRAMES,
        "max_object_pointers": memory_bank.MAX_OBJ_PTRS, "selection_threshold": memory_bank.SELECTION_THRESHOLD,
        "max_prompt_points": MAX_PROMPT_POINTS, "memory_storage_dtype": "bfloat16",
        # mask 0 is unstable (single-mask output) when its areas above +delta and above -delta differ by
        # more than 1 - threshold (float32 comparisons); read by runtimes/js
        "stability_delta": STABILITY_DELTA, "stability_threshold": STABILITY_THRESH,
        "memory_bank_rules": "toolkit/pipeline/memory_bank.py (plain Python over frame indices)",
    },
}
TOKENIZER_LICENSE = "LICENSE-open_clip-bpe.txt"


@dataclass
class BuildReport:
    out: str
    target: str
    weights: str
    seconds: float
    bytes: int
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    archive: str | None = None


def tool_versions() -> dict[str, str]:
    versions = {"toolkit": __version__, "python": sys.version.split()[0]}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def default_cache_dir(state_digest: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "esam3-toolkit" / "export" / state_digest[:16]


def read_concepts(path: str | Path) -> list[str]:
    """One concept per line; blank lines and '#' comments skipped, duplicates dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ToolkitError(f"cannot read --concepts {path}: {e}") from e
    concepts = list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not concepts:
        raise ToolkitError(f"--concepts {path} holds no concept (one per line)")
    return concepts


class _Job:
    """One build: the target, the weights, the export cache, the bundle being written."""

    def __init__(self, target: Target, state: Mapping[str, Tensor], label: str, root: Path, cache_dir: Path,
                 golden: bool | None, progress: Callable[[str], None], names: list[str],
                 calibration_dir: str | Path | None = None):
        self.target, self.state, self.label, self.root, self.cache_dir = target, state, label, root, cache_dir
        self.progress = progress
        self.calibration_dir = calibration_dir
        self._calibration = None
        self.quantized_sources: dict[str, Path] = {}  # component -> the gated quantized artifact the stages start from
        self.quantization: dict[str, dict] = {}  # component -> its ladder, figures and settings (manifest)
        self.reference = Reference(state, golden, progress, names)
        self.export_rows: dict[tuple[str, str], dict] = {}
        self.entries: dict[str, dict] = {}
        self.final_plans: dict[str, ComponentPlan] = {}
        self.fallbacks: dict[str, tuple[str, str]] = {}  # component -> (format it failed in, why)
        self.warned_newer_list = False
        (root / "models").mkdir(parents=True)

    # --- exports -----------------------------------------------------------------------------
    def export(self, names: Iterable[str], fmt: str) -> None:
        """Run `toolkit export` for the components whose `fmt` artifact is not there yet."""
        from .export import run_export
        todo = [n for n in names if (n, fmt) not in self.export_rows]
        if not todo:
            return
        self.progress(f"export: {fmt} of {', '.join(todo)} (cache {self.cache_dir})")
        report = run_export(self.cache_dir, self.state, self.label, todo, [fmt], progress=self.progress,
                            reference=self.reference)
        for row in report.rows:
            self.export_rows[row["component"], row["format"]] = row

    def exported(self, name: str, fmt: str) -> tuple[Path | None, dict]:
        row = self.export_rows[name, fmt]
        return (self.cache_dir / row["file"] if row["ok"] else None), row

    # --- quantization ------------------------------------------------------------------------------
    @property
    def calibration(self):
        """The build's calibration (toolkit.quantize.session): the set loaded, the feeds recorded by the
        fp32 pipelines on first need, streamed to a temporary folder under the export cache."""
        if self._calibration is None:
            import tempfile

            from ..quantize.session import Calibration
            quantized = [n for n, p in self.final_plans.items()
                         if p.precision not in ("fp32", BACKENDS[p.format].precisions[0])]
            work = tempfile.mkdtemp(prefix=".calibration-", dir=self.cache_dir)
            self._calibration = Calibration(self.target.quantization, quantized, self.reference.graphs,
                                            self.calibration_dir, work, self.progress)
            self._calibration._own_work = True  # removed with the build (close)
        return self._calibration

    def torch_runner(self, name: str):
        """The fp32 PyTorch reference of a component, as a runner (what the gate compares with)."""
        return self.reference.runner(name)

    def set_precision(self, name: str, precision: str) -> None:
        """The precision the gate chose: what the next stages and the manifest see."""
        from dataclasses import replace
        self.final_plans[name] = replace(self.final_plans[name], precision=precision)

    def verify_quantized(self, name: str, entry: dict) -> dict:
        """A quantized artifact's verification: the gate's alone figures measured again on this very file
        (the .ort conversion or the TensorRT-ready graph may differ from what the ladder measured), the
        end-to-end figures of the quantize stage; passed or failed by the gate."""
        from ..pipeline.artifacts import artifact_runner
        self.progress(f"{name} [{entry['format']} {entry['precision']}]: measuring against the accuracy gate")
        from ..convert.cache import file_sha256
        record = self.quantization[name]
        path = self.root / entry["file"]
        if record.get("alone") and file_sha256(path) == file_sha256(self.quantized_sources[name]):
            alone = record["alone"]  # this very file was measured by the ladder
        else:
            runner = artifact_runner(entry["format"], path, entry["inputs"], entry["outputs"])
            alone = self.calibration.alone(name, self.torch_runner(name), runner, COMPONENTS[name].masks)
        return gate_verification(alone,
                                 record, self.target.quantization.for_component(name).gate,
                                 BACKENDS[entry["format"]].runtime())

    # --- verification --------------------------------------------------------------------------
    def verify(self, name: str, entry: dict) -> dict:
        self.progress(f"{name} [{entry['format']}]: verifying against PyTorch")
        result = verify_artifact(COMPONENTS[name], entry, self.root / entry["file"], self.reference)
        if result["status"] == "pending" and entry["format"] == "coreml":
            result["reason"] = (f"{result['reason']}: parity is pending a macOS run (scripts/macos_parity.py, "
                                ".github/workflows/macos-parity.yml); the package spec was checked here")
        self.reference.forget(COMPONENTS[name])
        return result


def gate_verification(alone: dict, record: dict, gate, runtime: str) -> dict:
    """The verification entry of a quantized artifact: its alone figures on the evaluation part and the
    end-to-end figures recorded by the quantize stage, each checked against the gate."""
    failures = [f"alone: {f}" for f in gate.check(alone["figures"])]
    failures += [f"end to end: {f}" for f in record["end_to_end"]["failures"]]
    return {"status": "failed" if failures else "passed", "runtime": runtime,
            "verified_by": f"accuracy gate on the evaluation part ({alone['samples']} samples alone; the pipelines "
                           "end to end), not the fp32 tolerance",
            "failures": failures, "gate": {k: v for k, v in gate.to_dict().items() if v is not None},
            "figures": alone["figures"], "end_to_end_figures": record["end_to_end"]["figures"],
            "max_abs_error": alone["figures"].get("max_abs")}


def _prompt_cache(job: _Job, concepts: list[str]) -> dict:
    """text_encoder outputs of every concept with the PyTorch reference (fp32)."""
    job.progress(f"prompt cache: encoding {len(concepts)} concepts")
    tokenizer, graph = Tokenizer(), job.reference.graphs["text_encoder"]
    ids = tokenizer(concepts)
    with torch.inference_mode():
        encoded = [graph(ids[i:i + 1]) for i in range(len(concepts))]
    arrays = {"token_ids": ids.numpy(), "text_features": np.stack([f[:, 0].numpy() for f, _ in encoded]),
              "text_mask": np.stack([m[0].numpy() for _, m in encoded])}
    np.savez(job.root / "prompt_cache.npz", **arrays)
    return {"file": "prompt_cache.npz", "concepts": concepts, "computed_with": "PyTorch reference, fp32",
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "use": "concept i: text_features[i][:, None] is text_encoder's text_features (77,1,256), "
                   "text_mask[i][None] its text_mask (1,77); token_ids[i] the tokenizer output it replaces"}


def _tokenizer(root: Path) -> dict:
    (root / "tokenizer").mkdir()
    for name in (VOCAB_FILE, TOKENIZER_LICENSE):
        (root / "tokenizer" / name).write_bytes(files("toolkit").joinpath("data", name).read_bytes())
    tok = Tokenizer()
    return {"kind": "CLIP byte-level BPE (open_clip SimpleTokenizer)", "vocabulary": f"tokenizer/{VOCAB_FILE}",
            "license": f"tokenizer/{TOKENIZER_LICENSE}", "context_length": CONTEXT_LENGTH,
            "start_id": tok.start_id, "end_id": tok.end_id, "pad_id": 0,
            "cleaning": "ftfy.fix_text, html.unescape twice, whitespace collapsed, lower-case; ids = start, BPE ids, "
                        "end, zero padding to context_length (a longer text is cut, keeping the end id last)"}


def _engines(job: _Job, tensorrt_plans: list[ComponentPlan]) -> dict:
    """engines/build_engines.sh, and the engines themselves where TensorRT is importable here."""
    from ..convert.tensorrt import build_engine, engine_script, profiles, tensorrt_status
    settings = job.target.settings["tensorrt"]
    jobs = []
    for plan in tensorrt_plans:
        entry = job.entries[plan.component]
        jobs.append((plan.component, entry["file"], f"engines/{plan.component}.plan",
                     profiles(entry["inputs"], entry["dims"]), plan.precision))
    (job.root / "engines").mkdir()
    script = job.root / "engines" / "build_engines.sh"
    script.write_text(engine_script(jobs, settings))
    script.chmod(0o755)
    version, reason = tensorrt_status()
    info = {"script": "engines/build_engines.sh", "tensorrt": settings["version"], "jetpack": settings["jetpack"],
            "engines": {c: {"file": e, "onnx": o, "precision": p, "profile": prof} for c, o, e, prof, p in jobs}}
    if version is None:
        job.progress(f"TensorRT engines: not built here ({reason}); run engines/build_engines.sh on the device")
        info["status"] = f"pending: {reason}; build them on the device with engines/build_engines.sh"
        return info
    for component, onnx_rel, engine_rel, profile, precision in jobs:
        job.progress(f"{component}: building the TensorRT {version} engine")
        build_engine(job.root / onnx_rel, job.root / engine_rel, profile, precision, settings["workspace_mib"])
    info["status"] = (f"built here with TensorRT {version} (usable only on this GPU and TensorRT version; "
                      "rebuild on the device with engines/build_engines.sh)")
    return info


def run_build(target: Target, out: str | Path, state: Mapping[str, Tensor], weights_label: str,
              embedded_default: bool, checkpoint_path: str | None = None, concepts: list[str] | None = None,
              components: list[str] | None = None, cache_dir: str | Path | None = None, force: bool = False,
              archive: bool = False, golden: bool | None = None, calibration_dir: str | Path | None = None,
              progress: Callable[[str], None] = lambda message: None) -> BuildReport:
    start = time.perf_counter()
    names = list(components or COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ToolkitError(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")
    out = Path(out)
    progress(f"weights digest of {weights_label}")
    digest = weights_digest(state)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(digest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with fresh_output_dir(out, force) as root:
        job = _Job(target, state, weights_label, root, cache_dir, golden, progress, names, calibration_dir)
        plans = {n: target.plans[n] for n in names}
        try:
            entries = _build_components(job, plans)
            quantization = _quantization(job)
        finally:
            if job._calibration is not None:
                job._calibration.close()
        manifest = {
            "schema": SCHEMA_ID,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": layout.MODEL_NAME, "weights": weights_label, "weights_sha256": digest,
                      "embedded_default": embedded_default, "checkpoint": checkpoint_path},
            "target": target.to_json(),
            "preprocess": PREPROCESS, "postprocess": POSTPROCESS, "tokenizer": _tokenizer(root),
            "prompt_cache": _prompt_cache(job, concepts) if concepts else None,
            "dims": {d.name: {"min": d.min, "typical": d.typical, "max": d.max, "doc": d.doc} for d in DIMS.values()},
            "components": entries,
            "quantization": quantization,
            "engines": _engines(job, [p for n, p in job.final_plans.items() if p.format == "tensorrt"])
            if any(p.format == "tensorrt" for p in job.final_plans.values()) else None,
            "ort": {"required_operators": "required_operators.config",
                    "use": "build a reduced ONNX Runtime with --include_ops_by_config required_operators.config"}
            if (root / "required_operators.config").exists() else None,
            "tools": tool_versions(),
            "build": {},
        }
        notes = _notes(manifest, embedded_default)
        manifest["files"] = file_entries(root)
        size = sum(f["bytes"] for f in manifest["files"])
        manifest["build"] = {"seconds": round(time.perf_counter() - start, 1), "bytes": size, "notes": notes,
                             "export_cache": str(cache_dir), "components_built": names,
                             # verification ran here: float rounding (and so parity figures) depend on the CPU
                             "cpu": cpu()}
        write_manifest(root, manifest)
        root.chmod(0o755)  # the temporary directory was created private (0700)
        progress(f"manifest written ({len(manifest['files'])} files, {size / 2**20:.1f} MiB)")
    archive_path = None
    if archive:
        archive_path = str(create_archive(out, out.with_name(out.name + ".tar.gz")))
        progress(f"archive {archive_path}")
    rows = [{"component": n, **{k: e[k] for k in ("format", "precision", "file")},
             "requested": e["quantization"]["requested"] if e.get("quantization") else e["precision"],
             "status": e["verification"]["status"], "fallback_from": e.get("fallback_from"),
             "max_abs_error": e["verification"].get("max_abs_error"), "reason": e["verification"].get("reason", "")}
            for n, e in entries.items()]
    return BuildReport(str(out), target.name, weights_label, time.perf_counter() - start, size, rows, notes,
                       archive_path)


def _build_components(job: _Job, plans: dict[str, ComponentPlan]) -> dict[str, dict]:
    """Every component through its backend's stages (export -> convert -> verify; see toolkit/backends),
    components that fail going once to the target's fallback; returns the manifest entries."""
    job.final_plans = dict(plans)
    todo = dict(plans)
    for attempt in range(2):  # first the planned formats, then the fallbacks of those that failed
        failed: dict[str, str] = {}
        for fmt in dict.fromkeys(p.format for p in todo.values()):
            backend = BACKENDS[fmt]
            group = [p for p in todo.values() if p.format == fmt]
            for stage in backend.stages:  # the plans as the stages before left them (the quantize stage's precision)
                failed.update(stage(job, backend, [job.final_plans[p.component] for p in group
                                                   if p.component not in failed]))
        retry = {}
        for name, reason in failed.items():
            plan = todo[name]
            if attempt == 1 or plan.fallback is None:
                raise ToolkitError(f"{name}: {plan.format} failed and the target has no fallback for it: {reason}")
            job.progress(f"{name}: {plan.format} failed ({reason[:200]}); falling back to {plan.fallback}")
            retry[name] = plan.fallback_plan()
            job.quantized_sources.pop(name, None)  # the fallback format starts again from its own export
            job.final_plans[name] = retry[name]
            job.fallbacks[name] = (plan.format, reason)
        if not retry:
            break
        todo = retry
    entries = {}
    for name in plans:
        plan, entry = job.final_plans[name], job.entries[name]
        source = job.fallbacks.get(name)
        entries[name] = {"doc": COMPONENTS[name].doc, "format": plan.format, "precision": plan.precision,
                         "compression": plan.compression, "fallback_from": source[0] if source else None,
                         "fallback_reason": source[1] if source else None, "note": plan.note, **entry}
        if name in job.quantization and job.quantization[name]["format"] == plan.format:
            entries[name]["quantization"] = job.quantization[name]
    return entries


def _quantization(job: _Job) -> dict | None:
    """The manifest's quantization section: the calibration set and settings (null: nothing quantized)."""
    if job._calibration is None:
        return None
    cal = job.calibration
    return {"calibration": cal.describe(), "settings": job.target.quantization.to_dict(),
            "precision_override": job.target.precision_override,
            "caveat": "the gate measured this checkpoint's activations on this calibration set; with the embedded "
                      "default (untrained) weights the figures say how the quantizers treat those activations, "
                      "not the trained model's"}




def _notes(manifest: dict, embedded_default: bool) -> list[str]:
    notes = []
    if embedded_default:
        notes.append("built from the embedded default checkpoint: deterministic weights, NOT the trained "
                     "EfficientSAM3 weights (pass --checkpoint for a real model)")
    pending = [n for n, e in manifest["components"].items() if e["verification"]["status"] == "pending"]
    if pending:
        notes.append(f"parity pending for {', '.join(pending)}: "
                     + manifest["components"][pending[0]]["verification"]["reason"])
    for name, entry in manifest["components"].items():
        if entry.get("fallback_from"):
            notes.append(f"{name}: {entry['fallback_from']} could not take it ({entry['fallback_reason'][:200]}); "
                         f"shipped as {entry['format']}")
    if manifest["engines"]:
        notes.append(f"TensorRT engines: {manifest['engines']['status']}")
        checks = next(e["checks"]["tensorrt_operators"] for e in manifest["components"].values()
                      if e["format"] == "tensorrt")
        notes.append(f"operators checked against the {checks['list']}")
    return notes
