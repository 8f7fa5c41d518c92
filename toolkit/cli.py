"""`toolkit` command line: argument parsing only; each subcommand calls one API function."""
from __future__ import annotations

import argparse
import json
import sys

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
