"""Size, chosen precision and gate figures of built bundles, side by side, as Markdown.

    python benchmarks/quantized_bundles.py BUNDLE [BUNDLE ...] > table.md

Per bundle: the target, the requested precision, the total size on disk (the folder, every file), and per
component the artifact's size, the precision the gate chose (with the requested one where it stepped
down), the alone figures of the chosen rung (SQNR, cosine) and the end-to-end figures of the build.
Everything is read from the bundles (manifest and files); nothing is re-measured.
"""
from __future__ import annotations

import sys
from pathlib import Path

from toolkit.deploy.bundle import open_bundle


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _g(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def describe(root: Path) -> list[str]:
    bundle = open_bundle(root)
    manifest = bundle.manifest
    total = _size(root)
    lines = [f"### {root.name}: target {manifest['target']['name']}, {_mib(total)} MiB on disk", "",
             "| component | format | precision | MiB | SQNR dB (alone) | cosine | gate |",
             "|---|---|---|---:|---:|---:|---|"]
    end_to_end = {}
    for name, entry in manifest["components"].items():
        q = entry.get("quantization") or {}
        chosen = next((r for r in q.get("rungs", []) if r["precision"] == entry["precision"]), {})
        figures = chosen.get("figures", {})
        precision = entry["precision"] + (f" (asked {q['requested']})" if q and q["requested"] != entry["precision"]
                                          else "")
        verdict = ("not quantized" if not q else "stepped down to the fp32 export (verified)"
                   if entry["precision"] == "fp32" else "passed" if chosen.get("passed") else "-")
        lines.append(f"| {name} | {entry['format']} | {precision} | {_mib(_size(bundle.path(entry['file'])))} | "
                     f"{_g(figures.get('sqnr_db'))} | {_g(figures.get('cosine'), '.4f')} | {verdict} |")
        if q.get("end_to_end", {}).get("figures"):
            end_to_end = q["end_to_end"]["figures"]
    if end_to_end:
        lines += ["", "End to end (evaluation part, all quantized components together, against fp32): " +
                  ", ".join(f"{k} {_g(v, '.3f')}" for k, v in end_to_end.items())]
    return lines + [""]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("\n".join(describe(Path(arg))))
