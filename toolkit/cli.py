"""`toolkit` command line: argument parsing only; each subcommand calls one API function."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .errors import ToolkitError


def _inspect(args) -> None:
    from .api import inspect_checkpoint
    from .checkpoint.inventory import format_table
    report = inspect_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return
    print(f"{report.path}: {report.container}")
    if report.weights_label:
        print(f"weights: {report.weights_label}")
    print(format_table(report.rows))
    if report.dead_keys:
        print(f"\nThe dead SAM3 ViT trunk ({report.dead_keys} entries / {report.dead_numel:,} numbers, "
              f"{report.dead_numel * 4 / 2**30:.2f} GiB in fp32) is never used by the model: dropped on load.")
    print(f"Live model: {report.live_keys:,} entries / {report.live_numel:,} numbers, all checked "
          "(names, shapes, dtypes, finite values).")


def _make_default(args) -> None:
    from .checkpoint.weights import write_default_checkpoint
    info = write_default_checkpoint(args.out, with_dead_trunk=args.with_dead_trunk, force=args.force)
    print(f"wrote {info['path']}: {info['keys']:,} entries / {info['numel']:,} numbers")
    print(f"weights: {info['weights']}")


def _numbers(count: int, form: str):
    """argparse type: `count` comma-separated numbers, e.g. x0,y0,x1,y1 for a box."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {form} in pixels, got {text!r}")
        return values
    return parse


_box = _numbers(4, "x0,y0,x1,y1")
_point = _numbers(2, "x,y")


def _progress(message: str) -> None:
    print(f"[toolkit] {message}", file=sys.stderr, flush=True)


def _segment(args) -> None:
    from .api import segment
    result = segment(args.image, args.prompt, args.out, args.checkpoint, args.box, args.neg_box,
                     args.threshold, args.max_objects, args.save_intermediates, args.force, progress=_progress)
    if args.checkpoint is None:
        print(f"weights: {result.weights_label}")
    top = sorted(result.objects, key=lambda o: -o["score"])[:5]
    print(f"{len(result.objects)} objects with score > {args.threshold:g} in {result.seconds:.1f} s"
          + (": best " + ", ".join(f"{o['score']:.3f}" for o in top) if top else ""))
    print(f"wrote {result.out_dir}/ (overlay.png, detections.json, {len(result.objects)} mask PNGs)")
    if args.save_intermediates:
        print(f"stage dumps in {args.save_intermediates}/")


def _track(args) -> None:
    from .api import track
    result = track(args.frames, args.out, args.checkpoint, args.point, args.neg_point, args.box, args.prompt,
                   args.frame, args.threshold, args.save_intermediates, args.force, progress=_progress)
    if args.checkpoint is None:
        print(f"weights: {result.weights_label}")
    print(f"tracked {len(result.objects)} object(s) through {result.num_frames} frames in {result.seconds:.1f} s "
          f"({result.seconds / result.num_frames:.1f} s per frame)")
    print(f"wrote {result.out_dir}/ (overlay_strip.png, overlay.gif, tracks.json, masks/obj_<id>/<frame>.png)")
    if args.save_intermediates:
        print(f"stage dumps in {args.save_intermediates}/")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _export(args) -> None:
    from .api import export
    from .deploy.export import REPORT_NAME, format_table
    from .machine import cpu_line
    components = [name for group in args.components for name in group] or None
    report = export(args.out, args.checkpoint, components, args.format, args.force, progress=_progress)
    print(f"weights: {report.weights}")
    print(f"verified on: {cpu_line()}")
    print(format_table(report.rows))
    hits = sum(row["cache"] == "hit" for row in report.rows)
    print(f"{len(report.rows)} artifacts ({hits} from the cache) in {report.seconds:.1f} s; "
          f"report: {Path(report.out) / REPORT_NAME}")
    if not report.ok:  # one line on stderr; every failure is in the report file
        more = f" (+{len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise ToolkitError(f"{len(report.failures)} verification failure(s): {report.failures[0].splitlines()[0]}"
                           f"{more}; details in {Path(report.out) / REPORT_NAME}")


def _bench(args) -> None:
    from .api import bench

    def flat(groups):
        return [name for group in groups for name in group] or None
    components, scenarios = flat(args.components), flat(args.scenarios)
    result = bench(args.out, args.checkpoint, args.artifacts, args.device, [] if components == ["none"] else components,
                   flat(args.runners), [] if scenarios == ["none"] else scenarios, args.threads, args.repeats,
                   args.quick, args.force, progress=_progress, bundles=args.bundle)
    rows = result.results["components"] + result.results["scenarios"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(Path(result.out_dir, "results.md").read_text())
    print(f"{counts['ok']} measured, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"wrote {', '.join(result.files)}")


def _targets(args) -> None:
    from .api import list_targets
    from .deploy.targets import describe
    targets = list_targets()
    if args.json:
        print(json.dumps([{**t.to_json(), "path": t.path, "components": {n: vars(p) for n, p in t.plans.items()}}
                          for t in targets], indent=2))
        return
    for target in targets:
        print("\n".join(describe(target)))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _build(args) -> None:
    from .api import build
    components = [name for group in args.components for name in group] or None
    out = args.out or str(Path("bundles") / Path(args.target).stem)
    report = build(args.target, out, args.checkpoint, args.concepts, components, args.cache, args.force, args.archive,
                   args.precision, args.calibration, progress=_progress)
    print(f"weights: {report.weights}")
    width = max(len(r["component"]) for r in report.rows)
    for r in report.rows:
        extra = f" (fallback from {r['fallback_from']})" if r["fallback_from"] else ""
        extra += f" (gate: {r['requested']} stepped down)" if r["requested"] != r["precision"] else ""
        err = "" if r["max_abs_error"] is None else f", max abs error {r['max_abs_error']:.2e}"
        print(f"  {r['component']:{width}}  {r['format']:8} {r['precision']}  {r['status']}{err}{extra}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"bundle {report.out} (target {report.target}): {_mib(report.bytes)} in {report.seconds:.1f} s"
          + (f"; archive {report.archive}" if report.archive else ""))


def _calibrate(args) -> None:
    from .api import calibrate
    components = [name for group in args.components for name in group] or None
    result = calibrate(args.out, args.checkpoint, args.calibration, components, args.samples, args.evaluation,
                       args.force, progress=_progress)
    for part, found in result.statistics.items():
        recorded = result.description["recorded"][part]["components"]
        print(f"{part}: " + ", ".join(f"{c} {recorded[c]['recorded']}" for c in found))
        missing = result.description["not_reached"][part]
        if missing:
            print(f"  not reached by the {part} part: {', '.join(missing)}")
    print(f"calibration set {result.description['directory']} (digest {result.description['digest'][:16]}): "
          f"feeds and statistics in {result.out} ({', '.join(Path(f).name for f in result.files)})")


def _quantize_report(args) -> None:
    from .api import quantize_report
    ladders, rows, files = quantize_report(args.bundle, args.out, args.op_types, args.checkpoint, args.calibration,
                                           args.cache, args.force, progress=_progress)
    for ladder in ladders:
        tried = " -> ".join(r["precision"] for r in ladder["rungs"])
        print(f"  {ladder['component']:18} {ladder['format']:8} {tried}: chose {ladder['chosen']}")
    for name, found in rows.items():
        worst = next((r for r in found if "sqnr_db" in r), None)
        if worst:
            print(f"{name}: the operator type that costs most alone is {worst['op_type']} "
                  f"({worst['sqnr_db']:.1f} dB with only it quantized)")
    print(f"report: {', '.join(files)}")


def _verify(args) -> None:
    from .api import verify
    from .machine import cpu_line
    from .verify.bundle import format_rows
    components = [name for group in args.components for name in group] or None
    report = verify(args.bundle, args.checkpoint, not args.no_parity, components, args.calibration, progress=_progress)
    if args.report:
        from .verify.bundle import write_report
        _progress(f"report: {write_report(report, args.report)}")
    print(f"{report.bundle} (target {report.target}): schema ok, {report.files} files ({_mib(report.bytes)}) match "
          "their sha256")
    print(format_rows(report.rows))
    print(f"parity checked on: {cpu_line()}")
    for note in report.notes:
        print(f"note: {note}")
    counts = {s: sum(r["status"] == s for r in report.rows) for s in ("passed", "failed", "pending")}
    print(f"parity: {counts['passed']} passed, {counts['failed']} failed, {counts['pending']} pending")
    if not report.ok:  # one line on stderr; every failure is in the report file
        first = " ".join(report.failures[0].split()) if report.failures else "see the table above"
        more = f" (+{len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        where = f"details in {args.report}" if args.report else "--report FILE writes every failure"
        raise ToolkitError(f"{counts['failed']} artifact(s) failed parity: {first}{more}; {where}")


def _run(args) -> None:
    from .api import run_bundle
    result = run_bundle(args.bundle, args.out, args.image, args.prompt, args.frames, args.box, args.neg_box,
                        args.point, args.neg_point, args.frame, args.threshold, args.max_objects,
                        args.save_intermediates, args.force, args.threads, progress=_progress)
    print(f"weights: {result.weights_label}")
    if args.image:
        top = sorted(result.objects, key=lambda o: -o["score"])[:5]
        print(f"{len(result.objects)} objects with score > {args.threshold:g} in {result.seconds:.1f} s"
              + (": best " + ", ".join(f"{o['score']:.3f}" for o in top) if top else ""))
        print(f"wrote {result.out_dir}/ (overlay.png, detections.json, {len(result.objects)} mask PNGs)")
    else:
        print(f"tracked {len(result.objects)} object(s) through {result.num_frames} frames in {result.seconds:.1f} s")
        print(f"wrote {result.out_dir}/ (overlay_strip.png, overlay.gif, tracks.json, masks/obj_<id>/<frame>.png)")
    if args.save_intermediates:
        print(f"stage dumps in {args.save_intermediates}/")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (with a pointer to --help), exit code 2 like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="toolkit", description="Edge-deployment toolkit for EfficientSAM3 "
                                "(RepViT-M0.9 + MobileCLIP-S1).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("inspect", help="component table of a checkpoint (and a full validity check)")
    s.add_argument("checkpoint", help="path to efficient_sam3_repvit-m0_9_mobileclip_s1.pth (or compatible)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_inspect)

    s = sub.add_parser("make-default", help="write the embedded default checkpoint (real layout, "
                       "deterministic weights: NOT the trained weights)")
    s.add_argument("out", help="output .pth path")
    s.add_argument("--with-dead-trunk", action="store_true",
                   help="include the 420 dead SAM3 ViT trunk entries, like the released file (2.3 GB)")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.set_defaults(func=_make_default)

    s = sub.add_parser("segment", help="segment every instance of a text concept (optionally with boxes)",
                       description="Promptable concept segmentation of one image with the PyTorch reference.")
    s.add_argument("--checkpoint", help="checkpoint .pth (default: the embedded default, NOT trained weights)")
    s.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    s.add_argument("--prompt", required=True, help="text prompt, e.g. 'person'")
    s.add_argument("--box", action="append", type=_box, default=[], metavar="x0,y0,x1,y1",
                   help="positive box prompt in image pixels (repeatable)")
    s.add_argument("--neg-box", action="append", type=_box, default=[], metavar="x0,y0,x1,y1",
                   help="negative box prompt in image pixels (repeatable)")
    s.add_argument("--threshold", type=float, default=0.5, help="score threshold (default 0.5; 0 keeps all 200 queries)")
    s.add_argument("--max-objects", type=int, metavar="N", help="keep only the N best-scoring objects")
    s.add_argument("--out", required=True, help="output directory (masks, overlay.png, detections.json)")
    s.add_argument("--save-intermediates", metavar="DIR", help="write every stage boundary as DIR/<stage>.npz")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_segment)

    s = sub.add_parser("track", help="follow objects through video frames (clicks, a box or a text prompt)",
                       description="Video object tracking with the PyTorch reference: prompt one frame, "
                       "propagate to all frames (forward from the prompted frame, then backward).")
    s.add_argument("--checkpoint", help="checkpoint .pth (default: the embedded default, NOT trained weights)")
    s.add_argument("--frames", required=True, metavar="DIR|VIDEO",
                   help="folder of frame images (natural name order) or a video file")
    s.add_argument("--point", action="append", type=_point, default=[], metavar="x,y",
                   help="positive click in frame pixels (repeatable)")
    s.add_argument("--neg-point", action="append", type=_point, default=[], metavar="x,y",
                   help="negative click in frame pixels (repeatable)")
    s.add_argument("--box", type=_box, metavar="x0,y0,x1,y1", help="box prompt in frame pixels")
    s.add_argument("--prompt", metavar="TEXT", help="text prompt: track every object the detector finds on --frame")
    s.add_argument("--frame", type=int, default=0, help="index of the prompted frame (default 0)")
    s.add_argument("--threshold", type=float, default=0.5,
                   help="detection score threshold for --prompt (default 0.5)")
    s.add_argument("--out", required=True, help="output directory (masks, overlay_strip.png, overlay.gif, tracks.json)")
    s.add_argument("--save-intermediates", metavar="DIR", help="write every tracker stage boundary as DIR/<stage>.npz")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_track)

    s = sub.add_parser("export", help="export components to ONNX and TorchScript lite, each artifact verified",
                       description="Export every component (or those named) to ONNX and .ptl, verify each artifact "
                       "against PyTorch (golden-derived inputs and the extremes of every dynamic dimension), "
                       "and write a report. Unchanged artifacts are reused from DIR (content-hash cache).")
    s.add_argument("--checkpoint", help="checkpoint .pth (default: the embedded default, NOT trained weights)")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (artifacts, records, export_report.json)")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="components to export (default: all 13)")
    s.add_argument("--format", type=_names, default=["onnx", "ptl"], metavar="FMT[,FMT...]",
                   help="artifact formats: onnx, ptl, ort (default: onnx,ptl; ort is ONNX Runtime's mobile "
                        "format, for timing it with `toolkit bench`)")
    s.add_argument("--force", action="store_true", help="export again even where the cache has the artifact "
                   "(files in DIR that the export did not write are never replaced, with or without --force)")
    s.set_defaults(func=_export)

    s = sub.add_parser("bench", help="latency, peak memory and FLOPs per component and runner, end-to-end scenarios",
                       description="Benchmark every component on every runner (PyTorch eager, ONNX Runtime on .onnx "
                       "and .ort, TorchScript lite, ONNX Runtime CUDA), with warm-up, percentiles, peak memory in a "
                       "child process, FLOPs and the machine's matmul peak, plus the end-to-end scenarios; on this "
                       "machine or on an ssh device. A runner that cannot run is listed as skipped with the reason.")
    s.add_argument("--checkpoint", help="checkpoint .pth for the PyTorch runs (default: the embedded default)")
    s.add_argument("--artifacts", metavar="DIR", help="`toolkit export` directory with the .onnx / .ort / .ptl files")
    s.add_argument("--bundle", action="append", default=[], metavar="DIR",
                   help="a bundle (`toolkit build`) to time, repeatable: each artifact on the runner its format "
                        "needs, interleaved with the torch and onnx runners (fp32: --artifacts), the scenarios "
                        "from the bundle with the torch-free runtime beside eager, its size on disk and the "
                        "whole runs' peak memory (fresh processes); local only")
    s.add_argument("--device", default="local", metavar="local|ssh://user@host[:port]",
                   help="where to measure (ssh options: ?python=PATH&ssh_config=FILE); default local")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="components to measure (default: all 13; 'none' for scenarios only)")
    s.add_argument("--runners", action="append", type=_names, default=[], metavar="KIND[,KIND...]",
                   help="torch, onnx (.onnx on ONNX Runtime), ort (.ort), ptl, onnx-cuda (default: all; "
                        "ort-mobile and ort-cuda are the old names of ort and onnx-cuda)")
    s.add_argument("--scenarios", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="image_text, image_text_boxes, tracking (default: all; 'none' for no scenario)")
    s.add_argument("--threads", type=int, help="intra-op threads (default: every core of the device)")
    s.add_argument("--repeats", type=int, help="timed runs per component (default 10; 3 with --quick)")
    s.add_argument("--quick", action="store_true", help="short smoke run: 1 warm-up + 3 runs, 1 run per scenario, "
                   "3 tracking frames, no memory measurement")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (results.json, results.md, *.png)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_bench)

    s = sub.add_parser("targets", help="list the deployment targets (targets/*.toml) and what each produces")
    s.add_argument("--json", action="store_true", help="print the resolved targets as JSON")
    s.set_defaults(func=_targets)

    s = sub.add_parser("build", help="build a deployable bundle for a target (jetson-orin, ios, android, cpu, ...)",
                       description="Turn the checkpoint into a bundle for the target: every component in the target's "
                       "format, verified against PyTorch where its runtime exists here, with tokenizer, "
                       "pre/post-processing constants, optional prompt cache and a manifest (versioned schema, "
                       "sha256 of every file). Written atomically; an existing bundle is kept unless --force.")
    s.add_argument("--target", required=True, metavar="NAME|FILE.toml", help="target name (see `toolkit targets`) or file")
    s.add_argument("--checkpoint", help="checkpoint .pth (default: the embedded default, NOT trained weights)")
    s.add_argument("--out", metavar="DIR", help="bundle directory (default: bundles/<target>)")
    s.add_argument("--concepts", metavar="FILE", help="text file, one concept per line: their text-encoder outputs "
                   "go into the bundle's prompt cache")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="build only these components (a partial bundle; default: all 13)")
    s.add_argument("--cache", metavar="DIR", help="export cache (default: ~/.cache/esam3-toolkit/export/<weights>)")
    s.add_argument("--archive", action="store_true", help="also write DIR.tar.gz")
    # spelled out (toolkit.quantize.gate.PRECISIONS imports torch; --help stays fast); a test keeps them equal
    s.add_argument("--precision", choices=["int8", "int8-weights", "mixed-weights", "int16-weights", "int4-weights",
                                           "palette6", "palette4", "fp16", "fp32"],
                   help="override the target file's precision for every component whose format produces it "
                        "(quantized precisions are gated and step down their format's ladder)")
    s.add_argument("--calibration", metavar="DIR", help="calibration set for quantized precisions: images/ (optional "
                   "prompts.txt, frames/); default: the shipped calibration/ set")
    s.add_argument("--force", action="store_true", help="replace an existing bundle")
    s.set_defaults(func=_build)

    s = sub.add_parser("calibrate", help="record the inputs every component receives over a calibration set",
                       description="Run the fp32 pipelines (detector, tracker) over the calibration part of a calibration "
                       "set and record, per component, the inputs it really receives (what `toolkit build` calibrates "
                       "quantized precisions with), with per-input statistics (calibration.json, calibration.md).")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (<part>/<component>/NNNN.npz and the "
                   "statistics)")
    s.add_argument("--calibration", metavar="DIR", help="calibration set: images/ (optional prompts.txt, frames/); "
                   "default: the shipped calibration/ set")
    s.add_argument("--checkpoint", help="checkpoint .pth (default: the embedded default, NOT trained weights)")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="record these components only (default: all 13)")
    s.add_argument("--samples", type=int, metavar="N", help="distinct feeds per component (default 8)")
    s.add_argument("--evaluation", action="store_true", help="also record the evaluation part (what the accuracy gate "
                   "measures on)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_calibrate)

    s = sub.add_parser("quantize-report", help="sensitivity table and plot of a quantized bundle",
                       description="Per component, every precision its ladder tried with the accuracy gate's figures "
                       "and verdict (from the manifest), and for one component the damage per operator type (one type "
                       "quantized at a time, measured now on the build's calibration set): report.md and "
                       "sensitivity.png.")
    s.add_argument("bundle", help="bundle directory built with a quantized precision")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--op-types", default="worst", metavar="COMPONENT|worst|none",
                   help="component measured per operator type (default: the worst quantized ONNX component)")
    s.add_argument("--checkpoint", help="the checkpoint the bundle was built from (not needed for the embedded default)")
    s.add_argument("--calibration", metavar="DIR", help="the calibration set the bundle was built with, when it is not "
                   "the shipped one")
    s.add_argument("--cache", metavar="DIR", help="export cache (default: ~/.cache/esam3-toolkit/export/<weights>)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_quantize_report)

    s = sub.add_parser("verify", help="check a bundle: schema, checksums, parity of every artifact runnable here",
                       description="Validate the manifest schema and every file's sha256, then run every artifact "
                       "whose runtime exists on this machine against the PyTorch model on the export's cases. "
                       "Artifacts whose runtime is missing (Core ML off macOS, TensorRT engines) are reported as pending.")
    s.add_argument("bundle", help="bundle directory or .tar.gz archive")
    s.add_argument("--checkpoint", help="the checkpoint the bundle was built from (not needed for the embedded default)")
    s.add_argument("--no-parity", action="store_true", help="only the schema and the checksums")
    s.add_argument("--report", metavar="FILE", help="write the report (every row and failure) as JSON to FILE")
    s.add_argument("--calibration", metavar="DIR", help="the calibration set a quantized bundle was built with, when it "
                   "is not the shipped one (quantized artifacts are re-measured against the manifest's gate on it)")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="check the parity of these components only")
    s.set_defaults(func=_verify)

    s = sub.add_parser("run", help="segment an image or track clicks through frames from a bundle alone",
                       description="`toolkit segment` (--image) or `toolkit track` (--frames, click or box prompts) with "
                       "the bundle's artifacts as runners (ONNX Runtime, lite interpreter): the same pipeline code.")
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--image", help="input image (segmentation)")
    s.add_argument("--prompt", help="text prompt (segmentation)")
    s.add_argument("--frames", metavar="DIR|VIDEO", help="frames to track through (tracking)")
    s.add_argument("--box", action="append", type=_box, default=[], metavar="x0,y0,x1,y1",
                   help="box prompt in pixels (repeatable for --image; one for --frames)")
    s.add_argument("--neg-box", action="append", type=_box, default=[], metavar="x0,y0,x1,y1",
                   help="negative box prompt (--image)")
    s.add_argument("--point", action="append", type=_point, default=[], metavar="x,y", help="positive click (--frames)")
    s.add_argument("--neg-point", action="append", type=_point, default=[], metavar="x,y", help="negative click (--frames)")
    s.add_argument("--frame", type=int, default=0, help="prompted frame (--frames; default 0)")
    s.add_argument("--threshold", type=float, default=0.5, help="score threshold (default 0.5)")
    s.add_argument("--max-objects", type=int, metavar="N", help="keep only the N best-scoring objects (--image)")
    s.add_argument("--threads", type=int, help="intra-op threads of the runtimes")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--save-intermediates", metavar="DIR", help="write the stage boundaries as DIR/<stage>.npz")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_run)
    return p


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x1f\x7f]+")  # colour codes, newlines, controls


def one_line(message: str) -> str:
    """A message as one printable line: colour codes dropped, line breaks and controls made spaces."""
    return " ".join(_CONTROL.sub(" ", message).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ToolkitError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # an I/O problem no check foresaw (a device error, ...): still one line
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
