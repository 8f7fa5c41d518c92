"""Core ML parity of a bundle's .mlpackage artifacts: run this on macOS, where Core ML predicts.

    python scripts/macos_parity.py bundles/ios [--checkpoint CKPT] [--report parity.json]

Checks the bundle (schema, sha256 of every file), then runs every Core ML package against the
PyTorch model on the cases `toolkit export` uses (golden-derived when the golden fixture is
present, a typical input, each dynamic dimension at the ends of the package's range), with the
fp16 tolerance of `toolkit.verify.bundle.FP16_TOLERANCE`. This is `toolkit verify` restricted to
the Core ML components; components that left Core ML at build time (fallbacks) are listed too.
Writes a JSON report and exits 1 when a package fails, 2 when it cannot run (not macOS).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from toolkit.deploy.bundle import read_manifest
from toolkit.errors import ToolkitError
from toolkit.verify.bundle import format_rows, verify_bundle


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="bundle directory or .tar.gz made by `toolkit build --target ios`")
    p.add_argument("--checkpoint", help="the checkpoint the bundle was built from (not needed for the default)")
    p.add_argument("--report", default="coreml_parity.json", help="JSON report path (default coreml_parity.json)")
    args = p.parse_args()
    if platform.system() != "Darwin":
        print(f"error: Core ML prediction needs macOS; this is {platform.system()}", file=sys.stderr)
        return 2
    try:
        manifest = read_manifest(args.bundle) if Path(args.bundle).is_dir() else None
        names = [n for n, e in manifest["components"].items() if e["format"] == "coreml"] if manifest else None
        report = verify_bundle(args.bundle, args.checkpoint, components=names,
                               progress=lambda m: print(f"[parity] {m}", file=sys.stderr, flush=True))
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [r for r in report.rows if r["format"] == "coreml"]
    fallbacks = {n: e["fallback_reason"] for n, e in (manifest or {}).get("components", {}).items()
                 if e.get("fallback_from") == "coreml"}
    print(format_rows(rows))
    for name, reason in fallbacks.items():
        print(f"{name}: not in Core ML (fallback at build time): {reason}")
    Path(args.report).write_text(json.dumps({"bundle": str(args.bundle), "platform": platform.platform(),
                                             "machine": platform.machine(), "rows": rows, "fallbacks": fallbacks},
                                            indent=2, default=str))
    failed = [r for r in rows if r["status"] != "passed"]
    print(f"{len(rows) - len(failed)} of {len(rows)} Core ML packages match PyTorch; report {args.report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
