"""`toolkit` command line: argument parsing only; each subcommand calls one API function."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ToolkitError


def _inspect(args) -> None:
    from .api import inspect_checkpoint
    from .inventory import format_table
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
    from .weights import write_default_checkpoint
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
    from .export import REPORT_NAME, format_table
    components = [name for group in args.components for name in group] or None
    report = export(args.out, args.checkpoint, components, args.format, args.force, progress=_progress)
    print(f"weights: {report.weights}")
    print(format_table(report.rows))
    hits = sum(row["cache"] == "hit" for row in report.rows)
    print(f"{len(report.rows)} artifacts ({hits} from the cache) in {report.seconds:.1f} s; "
          f"report: {Path(report.out) / REPORT_NAME}")
    if not report.ok:
        raise ToolkitError(f"{len(report.failures)} verification failure(s):\n  " + "\n  ".join(report.failures))


def _bench(args) -> None:
    from .api import bench

    def flat(groups):
        return [name for group in groups for name in group] or None
    scenarios = flat(args.scenarios)
    result = bench(args.out, args.checkpoint, args.artifacts, args.device, flat(args.components), flat(args.runners),
                   [] if scenarios == ["none"] else scenarios, args.threads, args.repeats, args.quick, args.force,
                   progress=_progress)
    rows = result.results["components"] + result.results["scenarios"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(Path(result.out_dir, "results.md").read_text())
    print(f"{counts['ok']} measured, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"wrote {', '.join(result.files)}")


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
                   help="artifact formats: onnx, ptl (default: both)")
    s.add_argument("--force", action="store_true", help="export again even where the cache has the artifact")
    s.set_defaults(func=_export)

    s = sub.add_parser("bench", help="latency, peak memory and FLOPs per component and runner, end-to-end scenarios",
                       description="Benchmark every component on every runner (PyTorch eager, ONNX Runtime on .onnx "
                       "and .ort, TorchScript lite, ONNX Runtime CUDA), with warm-up, percentiles, peak memory in a "
                       "child process, FLOPs and the machine's matmul peak, plus the end-to-end scenarios; on this "
                       "machine or on an ssh device. A runner that cannot run is listed as skipped with the reason.")
    s.add_argument("--checkpoint", help="checkpoint .pth for the PyTorch runs (default: the embedded default)")
    s.add_argument("--artifacts", metavar="DIR", help="`toolkit export` directory with the .onnx / .ort / .ptl files")
    s.add_argument("--device", default="local", metavar="local|ssh://user@host[:port]",
                   help="where to measure (ssh options: ?python=PATH&ssh_config=FILE); default local")
    s.add_argument("--components", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="components to measure (default: all 13)")
    s.add_argument("--runners", action="append", type=_names, default=[], metavar="KIND[,KIND...]",
                   help="torch, ort, ort-mobile, ptl, ort-cuda (default: all)")
    s.add_argument("--scenarios", action="append", type=_names, default=[], metavar="NAME[,NAME...]",
                   help="image_text, image_text_boxes, tracking (default: all; 'none' for no scenario)")
    s.add_argument("--threads", type=int, help="intra-op threads (default: every core of the device)")
    s.add_argument("--repeats", type=int, help="timed runs per component (default 10; 3 with --quick)")
    s.add_argument("--quick", action="store_true", help="short smoke run: 1 warm-up + 3 runs, 1 run per scenario, "
                   "3 tracking frames, no memory measurement")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (results.json, results.md, *.png)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
