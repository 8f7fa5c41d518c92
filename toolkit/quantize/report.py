"""The sensitivity report (`toolkit quantize-report`): a table per component of every precision
tried (figures and why it stepped down) and, for the worst component, the damage per operator
type, as Markdown and a PNG.

Per operator type, the measurement is "quantize only this operator type": `quantize_onnx` with
`op_types_to_quantize=[T]` (the rest stays float), then the component's outputs against fp32 on
the evaluation feeds. One quantization per type, one evaluation sample in memory at a time; it
answers "which kind of layer costs the accuracy", the question keep_float acts on.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from .gate import LadderResult, QuantSettings
from .ort import STREAMING, _preprocess, _reader, qdq_summary
from .stage import QuantizeError

FIGURES = ("sqnr_db", "cosine", "max_rel", "mask_iou")


def quantizable_op_types(model_path: str | Path) -> dict[str, int]:
    """Operator types of the graph that onnxruntime's QDQ quantizer can quantize, with their counts."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    known = set(QDQRegistry) | set(QLinearOpsRegistry)
    model = onnx.load(str(model_path), load_external_data=False)
    counts = Counter(n.op_type for n in model.graph.node if n.op_type in known and n.domain in ("", "ai.onnx"))
    return dict(counts.most_common())


def op_type_sensitivity(src: str | Path, calibration: Callable[[], Iterator[Mapping[str, np.ndarray]]],
                        evaluation: Callable[[], Iterable[Mapping[str, np.ndarray]]],
                        settings: QuantSettings | None = None, masks: Iterable[str] = ()) -> list[dict]:
    """Rows {op_type, nodes, figures...} per quantizable operator type, worst SQNR first."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..runners.ort_runner import OrtRunner
    from .evaluate import measure_component
    settings = settings or QuantSettings()
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    rows = []
    with tempfile.TemporaryDirectory(prefix="esam3-sens-") as tmp:
        pre = _preprocess(Path(src), Path(tmp) / "pre.onnx", [])
        reference = OrtRunner(src)
        for op_type, count in quantizable_op_types(pre).items():
            dst = Path(tmp) / f"{op_type}.onnx"
            extra = {"ActivationSymmetric": settings.activation_symmetric, "WeightSymmetric": True, **STREAMING}
            if settings.method == "percentile":
                extra["CalibPercentile"] = settings.percentile
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_static(str(pre), str(dst), _reader(calibration, pre), quant_format=QuantFormat.QDQ,
                                    op_types_to_quantize=[op_type], per_channel=settings.per_channel,
                                    activation_type=QuantType.QInt8 if settings.activation_type == "int8"
                                    else QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=methods[settings.method], extra_options=extra)
                if not qdq_summary(dst)["QuantizeLinear"]:  # e.g. Relu, Resize: quantized only after a quantized input
                    rows.append({"op_type": op_type, "nodes": count, "error": "not quantized on its own"})
                    continue
                figures = measure_component(reference, OrtRunner(dst), evaluation(), masks)["figures"]
            except Exception as err:  # noqa: BLE001 - a type the quantizer cannot take alone is a row, not a crash
                rows.append({"op_type": op_type, "nodes": count, "error": f"{type(err).__name__}: {err}"[:200]})
                continue
            rows.append({"op_type": op_type, "nodes": count, **figures})
    if not rows:
        raise QuantizeError(f"{src}: no operator type onnxruntime can quantize")
    return sorted(rows, key=lambda r: r.get("sqnr_db", float("inf")))


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sensitivity_markdown(ladders: Iterable[LadderResult | Mapping], op_types: Mapping[str, list[dict]] | None = None,
                         header: str = "") -> str:
    """The report: per component and precision tried, the figures and the gate's verdict; per
    operator type for the components in `op_types`."""
    lines = [header.rstrip() + "\n"] if header else []
    lines += ["| component | format | precision | chosen | " + " | ".join(FIGURES) + " | verdict |",
              "|---|---|---|---|" + "---:|" * len(FIGURES) + "---|"]
    for ladder in ladders:
        data = ladder.to_dict() if isinstance(ladder, LadderResult) else dict(ladder)
        name = data.get("component", "?")
        for rung in data["rungs"]:
            verdict = "pass" if rung["passed"] else "; ".join(rung["failures"])
            if rung["precision"] == "fp32" and not rung["figures"]:
                verdict = "floor (not gated)"
            lines.append(f"| {name} | {data['format']} | {rung['precision']} | "
                         f"{'**yes**' if rung['precision'] == data['chosen'] else ''} | "
                         + " | ".join(_fmt(rung["figures"].get(f)) for f in FIGURES) + f" | {verdict} |")
    for component, rows in (op_types or {}).items():
        lines += ["", f"**{component}: one operator type quantized at a time** (worst first)", "",
                  "| operator type | nodes | " + " | ".join(FIGURES[:3]) + " |", "|---|---:|" + "---:|" * 3]
        for row in rows:
            figures = " | ".join(_fmt(row.get(f)) for f in FIGURES[:3]) if "error" not in row else \
                f"{row['error']} | | "
            lines.append(f"| {row['op_type']} | {row['nodes']} | {figures} |")
    return "\n".join(lines) + "\n"


def sensitivity_png(ladders: Iterable[LadderResult | Mapping], path: str | Path,
                    op_types: Mapping[str, list[dict]] | None = None) -> Path:
    """SQNR per component and precision tried (and per operator type of the components in
    `op_types`) as horizontal bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = []
    for ladder in ladders:
        data = ladder.to_dict() if isinstance(ladder, LadderResult) else dict(ladder)
        for rung in data["rungs"]:
            if "sqnr_db" in rung["figures"]:
                bars.append((f"{data.get('component', '?')} {rung['precision']}", rung["figures"]["sqnr_db"],
                             rung["passed"]))
    panels = 1 + len(op_types or {})
    fig, axes = plt.subplots(panels, 1, figsize=(8, 1.5 + 0.35 * max(len(bars), 4) * panels), squeeze=False)
    ax = axes[0][0]
    ax.barh([b[0] for b in bars], [min(b[1], 80) for b in bars], color=["tab:green" if b[2] else "tab:red" for b in bars])
    ax.set_xlabel("SQNR (dB, capped at 80) against fp32; green: passed the gate")
    ax.invert_yaxis()
    for i, (component, rows) in enumerate((op_types or {}).items(), 1):
        ax = axes[i][0]
        rows = [r for r in rows if "sqnr_db" in r]
        ax.barh([f"{r['op_type']} ({r['nodes']})" for r in rows], [min(r["sqnr_db"], 80) for r in rows],
                color="tab:blue")
        ax.set_xlabel(f"{component}: SQNR with only this operator type quantized (dB)")
        ax.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(ladders: list[LadderResult | Mapping], out_dir: str | Path,
                 op_types: Mapping[str, list[dict]] | None = None, header: str = "") -> tuple[Path, Path]:
    """report.md and sensitivity.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    png = sensitivity_png(ladders, out / "sensitivity.png", op_types)
    md.write_text(sensitivity_markdown(ladders, op_types, header) + f"\n![sensitivity]({png.name})\n")
    return md, png


__all__ = ["op_type_sensitivity", "quantizable_op_types", "sensitivity_markdown", "sensitivity_png", "write_report"]
