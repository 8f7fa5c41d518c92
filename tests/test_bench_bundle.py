"""`toolkit bench --bundle`: the session's small bundles (conftest: object_pointer + prompt_encoder, fp32 .onnx
and int8 .ort) timed beside the fp32 export of the same components; sizes, ratios, skipped rows with their
reasons, one-line errors; the whole-run child of `toolkit.bench.wholerun`. About 15 s beyond the bundles'
builds (shared with test_bundle.py / test_quantize_build.py).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from toolkit.backends import BACKENDS
from toolkit.bench.wholerun import scenario_spec, whole_run
from toolkit.cli import main


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _bench(out: Path, *bundles: Path, artifacts: Path | None = None) -> dict:
    argv = ["bench", "--out", str(out), "--quick", "--threads", "1", "--runners", "onnx"]
    argv += [a for b in bundles for a in ("--bundle", str(b))]
    argv += ["--artifacts", str(artifacts)] if artifacts else []
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_bench_bundles_reports_sizes_and_ratios_to_the_fp32_export(small_cpu_bundle, small_int8_bundle, small_builds,
                                                                     tmp_path, capsys):
    int8, _ = small_int8_bundle
    out = tmp_path / "bench"
    doc = _bench(out, small_cpu_bundle, int8, artifacts=small_builds / "cache")  # the cache holds the fp32 exports
    items = {b["label"]: b for b in doc["bundles"]["items"]}
    assert set(items) == {"cpu", "int8"} and all(b["status"] == "ok" for b in items.values())
    for label, root in (("cpu", small_cpu_bundle), ("int8", int8)):
        assert items[label]["size_bytes"] == _disk_bytes(root)  # manifest.json included
        for name, entry in items[label]["components"].items():
            assert entry["size_bytes"] == (root / entry["file"]).stat().st_size
    assert {c["precision"] for c in items["int8"]["components"].values()} == {"int8"}
    assert {c["format"] for c in items["int8"]["components"].values()} == {"ort"}

    rows = {(r["component"], r["runner"]): r for r in doc["components"]}
    assert {c for c, _ in rows} == {"object_pointer", "prompt_encoder"}
    for name in ("object_pointer", "prompt_encoder"):
        fp32 = rows[name, "onnx"]
        assert fp32["status"] == "ok" and fp32["latency_ms"]["n"] == 3
        for runner in ("bundle:cpu", "bundle:int8"):
            row = rows[name, runner]
            assert row["status"] == "ok" and row["fp32_reference"] == "onnx"
            assert row["ratio_to_fp32"] == pytest.approx(row["latency_ms"]["p50"] / fp32["latency_ms"]["p50"],
                                                         rel=1e-3)
        assert rows[name, "bundle:int8"]["precision"] == "int8"

    md = (out / "results.md").read_text()
    assert "## Bundles" in md and "### Components per bundle" in md
    ratio = f"{rows['object_pointer', 'bundle:int8']['ratio_to_fp32']:.2f}"
    assert any(line.startswith("| object_pointer | bundle:int8 | int8 |") and f"| {ratio} |" in line
               for line in md.splitlines())
    assert (out / "bundles.png").stat().st_size > 0
    assert "measured" in capsys.readouterr().out


def test_scenarios_a_partial_bundle_cannot_run_are_skipped_with_the_reason(small_cpu_bundle, tmp_path):
    doc = _bench(tmp_path / "b", small_cpu_bundle)
    by = {(r["scenario"], r["runner"]): r for r in doc["scenarios"]}
    assert {s for s, _ in by} == {"image_text", "image_text_boxes", "tracking"}
    for scenario in ("image_text", "image_text_boxes", "tracking"):
        row = by[scenario, "bundle:cpu"]
        assert row["status"] == "skipped" and "the bundle lacks vision_encoder" in row["reason"]
        assert by[scenario, "eager"]["status"] == "skipped"  # nothing to compare with: the model is not built
    assert "mask_decoder" in by["tracking", "bundle:cpu"]["reason"]
    assert doc["weights"] is None
    # no --artifacts: the fp32 reference of a ratio is the fp32 bundle itself
    row = next(r for r in doc["components"] if r["runner"] == "bundle:cpu")
    assert row["fp32_reference"] == "bundle:cpu" and row["ratio_to_fp32"] == 1.0


def test_a_component_whose_runtime_is_missing_is_skipped(small_int8_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "ort", replace(BACKENDS["ort"], packages=("no_such_runtime",)))
    doc = _bench(tmp_path / "b", small_int8_bundle[0])
    rows = [r for r in doc["components"] if r["runner"] == "bundle:int8"]
    assert len(rows) == 2 and all(r["status"] == "skipped" for r in rows)
    assert all(r["reason"] == "ort artifact: no_such_runtime is not installed on this device" for r in rows)


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no manifest.json"),
    (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "is not a directory"),
])
def test_bad_bundle_is_one_line_and_exit_2(tmp_path, capsys, make, fragment):
    out = tmp_path / "out"
    assert main(["bench", "--bundle", str(make(tmp_path)), "--out", str(out), "--quick"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.exists()


def test_bundle_on_a_remote_device_and_out_inside_the_bundle_are_refused(small_cpu_bundle, capsys):
    assert main(["bench", "--bundle", str(small_cpu_bundle), "--device", "ssh://u@h", "--out", "/tmp/x-none"]) == 2
    assert main(["bench", "--bundle", str(small_cpu_bundle), "--out", str(small_cpu_bundle)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert len(err) == 2 and "local" in err[0] and "is the input --bundle" in err[1], err


def test_whole_run_children(small_cpu_bundle, tmp_path):
    footprint = whole_run({"kind": "import"}, 1)
    assert 20 < footprint["peak_rss_mib"] < 1000  # python + numpy + onnxruntime + the runtime: ~60 MiB measured
    # a failing child is an error naming its last line, not a figure
    Image.new("RGB", (60, 40)).save(tmp_path / "image.png")
    spec = scenario_spec("runtime", "image_text", tmp_path, small_cpu_bundle)
    with pytest.raises(RuntimeError, match="has no component 'text_encoder'"):
        whole_run(spec, 1)


def test_which_scenarios_a_bundle_can_run_from_its_manifest():
    from toolkit.bench.bundles import BenchBundle, unfit
    from toolkit.pipeline.artifacts import DETECTOR_COMPONENTS

    def bundle(formats: dict, concepts=None) -> BenchBundle:
        return BenchBundle("b", Path("b"), {"components": {n: {"format": f} for n, f in formats.items()},
                                            "prompt_cache": None if concepts is None else {"concepts": concepts}})
    ios = bundle({**dict.fromkeys(DETECTOR_COMPONENTS, "coreml"), "geometry_encoder": "ptl"})
    assert unfit(ios, "image_text").startswith("the runtime runs ONNX Runtime artifacts (onnx, ort, tensorrt); "
                                               "vision_encoder is coreml")
    without_text = {n: "ort" for n in DETECTOR_COMPONENTS if n != "text_encoder"}
    assert unfit(bundle(without_text), "image_text") == "the bundle lacks text_encoder (a build with --components?)"
    assert unfit(bundle(without_text, ["person"]), "image_text") is None  # the prompt cache has the prompt
    assert "lacks tracker_neck" in unfit(bundle(without_text, ["person"]), "tracking")
