"""Convert onnx-tensorrt's `docs/operators.md` into the operator list `toolkit` checks against.

    python scripts/tensorrt_operators.py operators.md --version 10.3 \
        --source "onnx/onnx-tensorrt branch release/10.3-GA, docs/operators.md, commit <sha>"

adds (or replaces) that TensorRT version in `toolkit/data/tensorrt_operators.json`. The table
columns are read as they are: operator, supported (Y/N), supported types, restrictions. Known
typos of a source table are corrected and listed under `corrections`.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "toolkit" / "data" / "tensorrt_operators.json"
TYPO = {"INF64": "INT64"}  # ConstantOfShape in the 10.x tables


def parse(text: str) -> tuple[list[int], dict, list[str]]:
    header = re.search(r"inclusive range of opset (\d+) to opset (\d+)", text)
    if header is None:
        raise SystemExit("no 'inclusive range of opset A to opset B' sentence: not an onnx-tensorrt operators.md")
    operators, corrections = {}, []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[1][:1] not in ("Y", "N") or cells[0] == "Operator":
            continue
        types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
        for i, t in enumerate(types):
            if t in TYPO:
                corrections.append(f"{cells[0]}: type '{t}' read as {TYPO[t]} (typo in the source table)")
                types[i] = TYPO[t]
        operators[cells[0]] = {"supported": cells[1].startswith("Y"), "types": types,
                               "restrictions": cells[3] if len(cells) > 3 else ""}
    return [int(header.group(1)), int(header.group(2))], operators, corrections


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("operators_md")
    p.add_argument("--version", required=True, help="TensorRT version the table describes, e.g. 10.1")
    p.add_argument("--source", required=True, help="where the table comes from (repository, branch, path, commit)")
    args = p.parse_args()
    opsets, operators, corrections = parse(Path(args.operators_md).read_text())
    data = json.loads(DATA.read_text()) if DATA.exists() else {"versions": {}}
    data["versions"][args.version] = {"source": args.source, "opsets": opsets, "corrections": corrections,
                                      "operators": operators}
    data["versions"] = dict(sorted(data["versions"].items(), key=lambda kv: [int(x) for x in kv[0].split(".")]))
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{DATA}: TensorRT {args.version}, {len(operators)} operators "
          f"({sum(o['supported'] for o in operators.values())} supported), opsets {opsets[0]}..{opsets[1]}")


if __name__ == "__main__":
    main()
