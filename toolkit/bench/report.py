"""Benchmark results: the JSON schema (versioned, checked on read), a Markdown report, PNG plots.

Schema `toolkit.bench/1` (one document per device and run):
  schema, created, wall_seconds, threads, weights, load_average_end
  config      BenchConfig as JSON (what was asked for)
  device      describe(): cpu_model, board, cores, memory_gib, os, python, libraries, load_average
              (at the start), and `url` (local or ssh://...)
  peak        peak_gflops, median_gflops, threads, dtype, op
  components  rows: component, runner, status (ok|skipped|failed), reason, artifact, size_bytes,
              dims, latency_ms {n,p50,p90,p99,mean,std,min,max}, ratio_to_eager (p50 / torch p50),
              gflops_per_s (GFLOP / p50), fraction_of_peak, memory {peak_rss_mib, net_mib, reset},
              load_1min (the device's 1-minute load average when the timed runs ended)
  flops       component -> {flops, gflop, source (onnx-graph | torch-flop-counter), by_op (FLOPs per
              operator type), uncounted (operator -> nodes whose shapes stayed unknown)}
  memory      measured, baseline_mib, method, baseline (or reason when not measured)
  scenarios   rows: scenario, runner (eager | runner kind), status, reason, description,
              latency_ms, ratio_to_eager, detail, load_1min
  notes       (optional) remarks added to a finished document, one string each
  bundles     (with --bundle) items: label, path, target, status (ok | skipped with reason), size_bytes
              (every file on disk), other_bytes (manifest, tokenizer, prompt cache, ...), weights,
              components {name: file, format, precision, size_bytes}; whole_run: measured, method,
              runtime_import_mib (or reason).
              Component and scenario rows of a bundle have runner "bundle:<label>", bundle, and
              ratio_to_fp32 / fp32_reference; its scenario rows, and the eager ones, whole_run
              {peak_rss_mib, wall_s} (or error)
"""
from __future__ import annotations

import json
from pathlib import Path

from .harness import SCHEMA, sig3

STATUSES = ("ok", "skipped", "failed")
_TOP = {"schema": str, "created": str, "config": dict, "threads": int, "device": dict, "peak": dict,
        "components": list, "flops": dict, "memory": dict, "scenarios": list}
_ROW = {"component": str, "runner": str, "status": str}
_SCENARIO = {"scenario": str, "runner": str, "status": str}
_LATENCY = ("n", "p50", "p90", "p99", "mean", "std", "min", "max")


def validate(doc: dict) -> dict:
    """Raise ValueError naming the first problem; return the document."""
    if not isinstance(doc, dict):
        raise ValueError("results: not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"results: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key, kind in _TOP.items():
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"results: '{key}' missing or not a {kind.__name__}")
    for where, rows, required in (("components", doc["components"], _ROW), ("scenarios", doc["scenarios"], _SCENARIO)):
        for i, row in enumerate(rows):
            for key, kind in required.items():
                if not isinstance(row.get(key), kind):
                    raise ValueError(f"results: {where}[{i}].{key} missing or not a {kind.__name__}")
            if row["status"] not in STATUSES:
                raise ValueError(f"results: {where}[{i}].status {row['status']!r} not one of {STATUSES}")
            if row["status"] == "ok":
                latency = row.get("latency_ms") or {}
                missing = [k for k in _LATENCY if not isinstance(latency.get(k), (int, float))]
                if missing:
                    raise ValueError(f"results: {where}[{i}].latency_ms lacks {missing}")
            elif not row.get("reason"):
                raise ValueError(f"results: {where}[{i}] is {row['status']} without a reason")
    if "bundles" in doc:
        section = doc["bundles"]
        if not isinstance(section, dict) or not isinstance(section.get("items"), list) \
                or not isinstance(section.get("whole_run"), dict):
            raise ValueError("results: 'bundles' needs a list 'items' and an object 'whole_run'")
        for i, item in enumerate(section["items"]):
            if item.get("status") == "ok":
                if not isinstance(item.get("size_bytes"), int) or not isinstance(item.get("components"), dict):
                    raise ValueError(f"results: bundles.items[{i}] lacks size_bytes or components")
            elif item.get("status") != "skipped" or not item.get("reason"):
                raise ValueError(f"results: bundles.items[{i}] is neither ok nor skipped with a reason")
    return doc


def load(path: str | Path) -> dict:
    return validate(json.loads(Path(path).read_text()))


def save_json(doc: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(validate(doc), indent=1) + "\n")


def _num(x, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _reason(row: dict) -> str:
    """The row's reason, each distinct part once."""
    return "; ".join(dict.fromkeys((row.get("reason") or "").split("; ")))


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def markdown(doc: dict) -> str:
    d, peak, mem = doc["device"], doc["peak"], doc["memory"]
    libs = ", ".join(f"{k} {v}" for k, v in d.get("libraries", {}).items() if v)
    cfg = doc["config"]
    loads = [r["load_1min"] for r in doc["components"] + doc["scenarios"] if r.get("load_1min") is not None]
    lines = [
        f"# Benchmark on {d.get('url', 'local')}: {d.get('cpu_model')}", "",
        (f"- date: {doc['created']}; wall time {doc.get('wall_seconds', 0) / 60:.1f} min"
         + ("; **--quick smoke run**" if cfg.get("quick") else "")),
        (f"- device: {d.get('cpu_model')}" + (f" ({d['board']})" if d.get("board") else "")
         + (f" [{' '.join(d['cpu_vector_extensions'])}]" if d.get("cpu_vector_extensions") else "")
         + f", {d.get('cores')} cores, {d.get('memory_gib')} GiB, {d.get('os')}, Python {d.get('python')}; {libs}"),
        (f"- threads: {doc['threads']}; load average (1/5/15 min) at the start {d.get('load_average')}, "
         f"at the end {doc.get('load_average_end')}"
         + (f"; 1-minute load after each measurement {min(loads):.1f} to {max(loads):.1f}" if loads else "")),
        f"- fp32 matmul peak, measured in this run: **{peak['peak_gflops']:.0f} GFLOP/s** "
        f"(best of {peak['runs']}, median {peak['median_gflops']:.0f}; {peak['op']}, {peak['threads']} threads)",
        f"- latency: {cfg['warmup']} warm-up + {cfg['repeats']} timed runs per component on its declared example "
        f"inputs; scenarios {cfg['scenario_warmup']} warm-up + {cfg['scenario_repeats']} timed runs",
        "- ratio = p50 / p50 of the eager PyTorch baseline in the same run (< 1: faster); "
        "GFLOP/s = counted GFLOP / p50; % peak = GFLOP/s / the measured matmul peak",
    ]
    if doc.get("weights"):
        lines.append(f"- weights: {doc['weights']} (speed does not depend on the values)")
    if mem.get("measured"):
        lines.append(f"- peak RSS: {mem['method']}; baseline {mem['baseline_mib']:.0f} MiB subtracted "
                     f"(net); baseline = {mem['baseline']}")
    else:
        lines.append(f"- peak RSS: not measured ({mem.get('reason')})")
    sources = sorted({f["source"] for f in doc["flops"].values() if f and f.get("source")})
    if sources:
        lines.append(f"- FLOPs counted from: {', '.join(sources)} (Conv, ConvTranspose, MatMul, Gemm, Einsum, "
                     "attention; 2 per multiply-add)")

    ok = [r for r in doc["components"] if r["status"] == "ok"]
    rows = []
    for r in ok:
        lat, m = r["latency_ms"], r.get("memory") or {}
        gflop = (doc["flops"].get(r["component"]) or {}).get("gflop")
        rows.append([r["component"], r["runner"], sig3(lat["p50"]), sig3(lat["p90"]), sig3(lat["p99"]),
                     f"{sig3(lat['mean'])} ± {sig3(lat['std'])}", _num(r.get("ratio_to_eager"), "{:.2f}"),
                     sig3(gflop), sig3(r.get("gflops_per_s")),
                     sig3(None if r.get("fraction_of_peak") is None else 100 * r["fraction_of_peak"]),
                     _num(m.get("peak_rss_mib"), "{:.0f}") + " (" + _num(m.get("net_mib"), "{:.0f}") + ")",
                     _num(None if r.get("size_bytes") is None else r["size_bytes"] / 1e6)])
    lines += ["", "## Components", ""]
    lines += _table(["component", "runner", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "ratio", "GFLOP",
                     "GFLOP/s", "% peak", "peak RSS MiB (net)", "size MB"], rows)
    other = [r for r in doc["components"] if r["status"] != "ok"]
    if other:
        lines += ["", "### Not run", ""]
        lines += _table(["component", "runner", "status", "reason"],
                        [[r["component"], r["runner"], r["status"], _reason(r)] for r in other])
    if doc["scenarios"] and not doc.get("bundles"):  # with --bundle: the per-bundle scenario table below
        lines += ["", "## End-to-end scenarios", ""]
        srows = []
        for r in doc["scenarios"]:
            lat = r.get("latency_ms")
            detail = ", ".join(f"{k} {v}" for k, v in (r.get("detail") or {}).items())
            srows.append([r["scenario"], r["runner"], r["status"], _num(lat and lat["p50"] / 1e3, "{:.2f}"),
                          _num(lat and lat["p90"] / 1e3, "{:.2f}"),
                          f"{lat['mean'] / 1e3:.2f} ± {lat['std'] / 1e3:.2f}" if lat else "-",
                          _num(r.get("ratio_to_eager"), "{:.2f}"), detail or _reason(r)])
        lines += _table(["scenario", "runner", "status", "p50 s", "p90 s", "mean ± std s", "ratio", "detail / reason"],
                        srows)
        lines += ["", *(f"- {name}: {desc}" for name, desc in
                        {r["scenario"]: r.get("description", "") for r in doc["scenarios"]}.items())]
    if doc.get("bundles"):
        lines += bundle_markdown(doc)
    if doc.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in doc["notes"])]
    if doc["flops"]:
        lines += ["", "## FLOPs per component", ""]
        lines += _table(["component", "GFLOP", "source", "by operator (GFLOP)", "uncounted nodes"], [
            [name, sig3(f.get("gflop")), f.get("source") or "-",
             ", ".join(f"{k} {sig3(v / 1e9)}" for k, v in (f.get("by_op") or {}).items()) or (f.get("error") or "-"),
             ", ".join(f"{k} x{v}" for k, v in (f.get("uncounted") or {}).items()) or "-"]
            for name, f in doc["flops"].items() if f])
    return "\n".join(lines) + "\n"


def _mib(n: int | None) -> str:
    return "-" if n is None else sig3(n / 2**20)


def _ratio(r: dict, key: str) -> str:
    return "-" if r.get(key) is None else f"{r[key]:.2f}"


def _precisions(components: dict) -> str:
    """Components grouped by precision and format: names where a group has 3 or fewer, else a count."""
    groups: dict[str, list[str]] = {}
    for name, c in components.items():
        groups.setdefault(f"{c['precision']} {c['format']}", []).append(name)
    return "; ".join(f"{k}: {', '.join(v)}" if len(v) <= 3 else f"{k} x{len(v)}" for k, v in groups.items())


def bundle_markdown(doc: dict) -> list[str]:
    """The per-bundle tables: size, per-component latency with the ratio to fp32, scenarios, peak RSS."""
    section, items = doc["bundles"], doc["bundles"]["items"]
    ok = [b for b in items if b["status"] == "ok"]
    lines = ["", "## Bundles", ""]
    lines += _table(["bundle", "target", "size MiB", "components (precision, format)", "other files MiB", "path"], [
        [b["label"], b["target"], _mib(b["size_bytes"]), _precisions(b["components"]), _mib(b["other_bytes"]),
         b["path"]] for b in ok])
    for b in items:
        if b["status"] != "ok":
            lines.append(f"- {b['label']}: skipped ({b['reason']})")
    rows = []
    for r in doc["components"]:
        bundle = next((b for b in ok if r["runner"] == "bundle:" + b["label"]), None)
        entry = bundle["components"].get(r["component"], {}) if bundle else {}
        lat = r.get("latency_ms")
        rows.append([r["component"], r["runner"], entry.get("precision", "fp32" if r["runner"] == "onnx" else "-"),
                     _mib(entry.get("size_bytes", r.get("size_bytes"))), sig3(lat and lat["p50"]),
                     _ratio(r, "ratio_to_fp32"), _ratio(r, "ratio_to_eager"),
                     "ok" if r["status"] == "ok" else f"{r['status']}: {_reason(r)}"])
    if rows:
        lines += ["", "### Components per bundle (p50 ms; ratio = p50 / p50 of the fp32 reference or eager, same "
                  "run, interleaved)", ""]
        lines += _table(["component", "runner", "precision", "size MiB", "p50 ms", "ratio to fp32", "ratio to eager",
                         "status"], rows)
    whole = section["whole_run"]
    srows = []
    for r in doc["scenarios"]:
        lat, peak = r.get("latency_ms"), r.get("whole_run") or {}
        srows.append([r["scenario"], r["runner"], _num(lat and lat["p50"] / 1e3, "{:.2f}"),
                      _num(lat and lat["p90"] / 1e3, "{:.2f}"), _ratio(r, "ratio_to_fp32"), _ratio(r, "ratio_to_eager"),
                      _num(peak.get("peak_rss_mib"), "{:.0f}") if "error" not in peak else f"failed: {peak['error']}",
                      ", ".join(f"{k} {v}" for k, v in (r.get("detail") or {}).items())
                      if r["status"] == "ok" else f"{r['status']}: {_reason(r)}"])
    lines += ["", "### Scenarios per bundle (torch-free runtime; eager = the PyTorch pipeline)", ""]
    lines += _table(["scenario", "runner", "p50 s", "p90 s", "ratio to fp32", "ratio to eager",
                     "peak RSS MiB (whole run)", "detail / status"], srows)
    if whole.get("measured"):
        footprint = whole.get("runtime_import_mib")
        lines += ["", f"- peak RSS of whole runs: {whole['method']}; the runtime's import footprint "
                      f"{_num(footprint, '{:.0f}')} MiB ({whole['runtime_import']}); eager: {whole['eager']}"]
    else:
        lines += ["", f"- peak RSS of whole runs: not measured ({whole.get('reason')})"]
    lines.append("- fp32 reference of a ratio: the `onnx` runner (the fp32 export, --artifacts) where it ran, "
                 "otherwise the first bundle that is fp32 there (`fp32_reference` in results.json)")
    return lines


def plots(doc: dict, out: str | Path) -> list[Path]:
    """latency.png (p50 with a p90 whisker, per component and runner), memory.png (net peak RSS),
    scenarios.png (p50 seconds per scenario and runner). Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out)
    written = []
    device = doc["device"].get("cpu_model") or doc["device"].get("url")
    ok = [r for r in doc["components"] if r["status"] == "ok"]

    def grouped(rows, groups_key, value, whisker, title, xlabel, path, log):
        groups = list(dict.fromkeys(r[groups_key] for r in rows))
        runners = list(dict.fromkeys(r["runner"] for r in rows))
        if not groups:
            return
        height = 0.8 / max(len(runners), 1)
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.32 * len(groups) * max(len(runners), 1) ** 0.7 + 1))
        for j, runner in enumerate(runners):
            ys, xs, errs = [], [], []
            for i, g in enumerate(groups):
                row = next((r for r in rows if r[groups_key] == g and r["runner"] == runner), None)
                if row is None or value(row) is None:
                    continue
                ys.append(i + (j - (len(runners) - 1) / 2) * height)
                xs.append(value(row))
                errs.append(max(whisker(row) - value(row), 0) if whisker else 0)
            ax.barh(ys, xs, height=height, label=runner, xerr=[np.zeros(len(errs)), errs] if whisker else None,
                    capsize=2)
        ax.set_yticks(np.arange(len(groups)), groups)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    grouped(ok, "component", lambda r: r["latency_ms"]["p50"], lambda r: r["latency_ms"]["p90"],
            f"Latency per component (p50, whisker to p90), {doc['threads']} threads\n{device}",
            "milliseconds (log scale)", out / "latency.png", True)
    with_memory = [r for r in ok if (r.get("memory") or {}).get("net_mib") is not None]
    grouped(with_memory, "component", lambda r: r["memory"]["net_mib"], None,
            f"Peak resident memory per component (net of the {doc['memory'].get('baseline_mib', 0):.0f} MiB "
            f"harness baseline)\n{device}", "MiB", out / "memory.png", False)
    scen = [r for r in doc["scenarios"] if r["status"] == "ok"]
    grouped(scen, "scenario", lambda r: r["latency_ms"]["p50"] / 1e3, lambda r: r["latency_ms"]["p90"] / 1e3,
            f"End-to-end scenarios (p50, whisker to p90), {doc['threads']} threads\n{device}", "seconds",
            out / "scenarios.png", False)
    if doc.get("bundles") and any(b["status"] == "ok" for b in doc["bundles"]["items"]):
        written.append(_bundle_plot(doc, out / "bundles.png", device))
    return written


def _bundle_plot(doc: dict, path: Path, device: str) -> Path:
    """Size on disk per bundle (stacked by component) and whole-run peak RSS per scenario."""
    import matplotlib.pyplot as plt

    items = [b for b in doc["bundles"]["items"] if b["status"] == "ok"]
    peaks = [r for r in doc["scenarios"] if (r.get("whole_run") or {}).get("peak_rss_mib") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3 + 0.45 * max(len(items), len(peaks), 2)))
    names = list(dict.fromkeys(n for b in items for n in b["components"]))
    starts = [0.0] * len(items)
    for i, name in enumerate(names + ["other files"]):
        sizes = [(b["other_bytes"] if name == "other files" else b["components"].get(name, {}).get("size_bytes", 0))
                 / 2**20 for b in items]
        left.barh(range(len(items)), sizes, left=starts, label=name, color=plt.cm.tab20(i % 20))
        starts = [a + b for a, b in zip(starts, sizes)]
    left.set_yticks(range(len(items)), [b["label"] for b in items])
    left.invert_yaxis()
    left.set_xlabel("MiB on disk")
    left.set_title("Bundle size by component", fontsize=10)
    left.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25))  # below: bars stay visible
    labels = [f"{r['scenario']} / {r['runner']}" for r in peaks]
    right.barh(range(len(peaks)), [r["whole_run"]["peak_rss_mib"] for r in peaks])
    right.set_yticks(range(len(peaks)), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("MiB")
    right.set_title("Peak RSS of whole runs (fresh processes)", fontsize=10)
    fig.suptitle(device, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(doc: dict, out: str | Path) -> list[Path]:
    """results.json, results.md and the plots under `out` (which must exist)."""
    out = Path(out)
    save_json(doc, out / "results.json")
    (out / "results.md").write_text(markdown(doc))
    return [out / "results.json", out / "results.md", *plots(doc, out)]
