"""Quantization through targets, build, manifest and verify, on two small components (object_pointer,
prompt_encoder: the tracker pipeline records their calibration feeds, 2 samples) so that a build takes
about a minute. Checked: precisions and [quantization] as target data (schema, one-line errors,
--precision); the ladders owned by the backends; an int8 .ort build whose calibration feeds come from
the real tracker pipeline, verified by the gate (alone and end to end) and re-measured by `toolkit
verify`; a gate int8 cannot meet sends the component down the ladder with the reason in the manifest;
the quantized-artifact cache key follows the calibration set.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from toolkit.backends import BACKENDS
from toolkit.backends.quantize import _key
from toolkit.checkpoint.weights import LABEL
from toolkit.cli import build_parser, main
from toolkit.deploy.build import run_build
from toolkit.deploy.bundle import manifest_schema, open_bundle, schema_errors
from toolkit.deploy.targets import find_target, load_target
from toolkit.errors import ToolkitError
from toolkit.quantize import QuantSettings
from toolkit.quantize.calibration import DEFAULT_DIR
from toolkit.quantize.gate import FORMAT_PRECISIONS, LADDERS, PRECISIONS
from toolkit.quantize.session import Calibration
from toolkit.verify.bundle import verify_bundle

SMALL = ["object_pointer", "prompt_encoder"]


def _target(tmp_path: Path, body: str, name: str = "q") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'schema = 1\nname = "{name}"\ndescription = "test"\n' + body)
    return path


ORT_INT8 = '[defaults]\nformat = "ort"\nprecision = "int8"\nfallback = "ptl"\n[quantization]\nsamples = 2\n'


@pytest.fixture(scope="module")
def state(synthetic_state):
    return synthetic_state


@pytest.fixture(scope="module")
def workdir(small_builds):
    return small_builds  # holds the session's small bundles and their export / quantization cache (conftest)


@pytest.fixture(scope="module")
def int8_bundle(small_int8_bundle):
    """(bundle, build messages): SMALL as int8 .ort with ORT_INT8's settings (built once, conftest)."""
    return small_int8_bundle


# --- precisions as data -------------------------------------------------------------------------------

def test_backends_own_precisions_and_ladders():
    assert LADDERS == {name: dict(b.ladder) for name, b in BACKENDS.items()}
    assert FORMAT_PRECISIONS == {name: b.precisions for name, b in BACKENDS.items()}
    assert BACKENDS["tensorrt"].rungs("int8") == ["int8", "fp16", "fp32"]
    assert "int8" in BACKENDS["ort"].buildable() and "fp16" not in BACKENDS["ort"].buildable()
    # the CLI spells the precisions out (its --help does not import torch): the same set
    build = next(a for a in build_parser()._subparsers._group_actions[0].choices["build"]._actions
                 if a.dest == "precision")
    assert set(build.choices) == set(PRECISIONS)


def test_target_quantization_table_and_precision_override(tmp_path):
    target = load_target(_target(tmp_path, ORT_INT8 + "method = \"entropy\"\n[quantization.gate]\nmin_sqnr_db = 25.0\n"
                                 "[quantization.components.text_encoder]\nkeep_float = [\"Gather\"]\n"))
    assert target.quantization.method == "entropy" and target.quantization.gate.min_sqnr_db == 25.0
    assert target.quantization.for_component("text_encoder").keep_float == ("Gather",)
    assert set(target.quantized()) == set(target.plans)
    fp32 = target.with_precision("fp32")
    assert not fp32.quantized() and fp32.precision_override == "fp32"
    notes = []
    ios = find_target("ios").with_precision("fp16", notes.append)  # ptl has no fp16: the file's precision stays
    assert ios.plans["geometry_encoder"].precision == find_target("ios").plans["geometry_encoder"].precision
    assert ios.plans["geometry_encoder"].format == "ptl" and "geometry_encoder" in notes[0]
    with pytest.raises(ToolkitError, match="no format of target cpu produces it"):
        find_target("cpu").with_precision("palette4")


@pytest.mark.parametrize("body,fragment", [
    ('[defaults]\nformat = "ort"\nprecision = "fp16"\n', "format ort takes precision fp32, int8"),
    ('[defaults]\nformat = "onnx"\n[quantization]\nmethod = "kmeans"\n', "quantization"),
    ('[defaults]\nformat = "onnx"\n[quantization]\nsamples = 0\n', "samples"),
    ('[defaults]\nformat = "onnx"\n[quantization.gate]\nmin_psnr = 3.0\n', "min_psnr"),
    ('[defaults]\nformat = "onnx"\n[quantization.components.nope]\nsamples = 2\n', "nope"),
])
def test_bad_quantization_tables_are_one_line_errors(tmp_path, capsys, body, fragment):
    path = _target(tmp_path, body)
    assert main(["build", "--target", str(path), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_schemas_carry_precisions_and_gate_figures():
    component = manifest_schema()["properties"]["components"]["additionalProperties"]["properties"]
    assert "int8" in component["precision"]["enum"] and "quantization" in component
    assert "figures" in component["verification"]["properties"]


# --- the build -------------------------------------------------------------------------------------------

def test_int8_build_calibrates_through_the_pipeline_and_is_gated(int8_bundle):
    root, messages = int8_bundle
    manifest = open_bundle(root).manifest  # schema-validated on read
    assert not schema_errors(manifest, manifest_schema())
    assert any("fp32 tracker pipeline" in m and "calibration part" in m for m in messages)
    section = manifest["quantization"]
    assert section["calibration"]["recorded"]["calibration"]["components"]["object_pointer"]["recorded"] == 2
    for name in SMALL:
        entry = manifest["components"][name]
        q = entry["quantization"]
        assert q["requested"] == "int8" and entry["precision"] == q["chosen"]
        if q["chosen"] == "int8":
            verification = entry["verification"]
            assert verification["status"] == "passed" and "not the fp32 tolerance" in verification["verified_by"]
            assert verification["figures"]["sqnr_db"] >= verification["gate"]["min_sqnr_db"]
            assert "track_iou" in verification["end_to_end_figures"]
            assert q["stage"]["operators"].get("QuantizeLinear", 0) > 0
    assert manifest["components"]["object_pointer"]["precision"] == "int8"
    # the .ort conversion ran on the quantized graph: its operator config lists the int8 operators
    config = (root / "required_operators.config").read_text()
    assert "QuantizeLinear" in config or "QLinear" in config or "QGemm" in config, config


def test_verify_remeasures_quantized_artifacts_against_the_recorded_gate(int8_bundle, tmp_path):
    root, _ = int8_bundle
    report = verify_bundle(root, golden=False)
    rows = {r["component"]: r for r in report.rows}
    assert report.ok and rows["object_pointer"]["precision"] == "int8"
    assert "re-measured here" in rows["object_pointer"]["checked"]
    recorded = open_bundle(root).manifest["components"]["object_pointer"]["verification"]["figures"]
    assert rows["object_pointer"]["figures"]["sqnr_db"] == pytest.approx(recorded["sqnr_db"], abs=0.5)
    # a stricter recorded gate than the artifact meets fails verification (it is really measured)
    strict = tmp_path / "strict"
    shutil.copytree(root, strict)
    manifest = json.loads((strict / "manifest.json").read_text())
    manifest["components"]["object_pointer"]["verification"]["gate"]["min_sqnr_db"] = 300.0
    (strict / "manifest.json").write_text(json.dumps(manifest))
    report = verify_bundle(strict, golden=False, components=["object_pointer"])
    assert not report.ok and "sqnr_db" in report.failures[0]


def test_a_gate_int8_cannot_meet_steps_down_the_ladder(int8_bundle, state, workdir, tmp_path):
    target = load_target(_target(tmp_path, ORT_INT8 + "[quantization.gate]\nmin_sqnr_db = 300.0\n"))
    messages = []
    run_build(target, tmp_path / "b", state, LABEL, True, components=["object_pointer"],
              cache_dir=workdir / "cache", golden=False, progress=messages.append)
    entry = open_bundle(tmp_path / "b").manifest["components"]["object_pointer"]
    q = entry["quantization"]
    assert entry["precision"] == "fp32" and q["chosen"] == "fp32"
    assert [r["precision"] for r in q["rungs"]] == ["int8", "int8-weights", "mixed-weights", "int16-weights", "fp32"]
    assert "min_sqnr_db" in q["steps"][0] and q["steps"][0].startswith("object_pointer: int8 -> int8-weights")
    # mixed-weights aims at the gate's floor plus headroom on the calibration part: 306 dB is out of reach
    assert "no weight can be int8" in q["steps"][2]
    assert entry["verification"]["status"] == "passed" and entry["verification"].get("max_rel_error") is not None
    assert any(m.startswith("gate: object_pointer: int8 -> int8-weights") for m in messages)
    # the int8 artifact came from the cache of the first build (the gate is not in the key)
    assert any("int8 (ort) from the cache" in m for m in messages)


def test_quantized_cache_key_follows_the_calibration_set(int8_bundle, workdir, tmp_path):
    source = workdir / "cache" / "object_pointer.onnx"
    assert source.is_file()
    changed = tmp_path / "cal"
    shutil.copytree(DEFAULT_DIR, changed)
    photo = min((changed / "images" / "calibration").iterdir())
    photo.write_bytes(photo.read_bytes()[:-16] + bytes(16))  # same image size, other content

    def key(directory, settings=None):
        settings = settings or QuantSettings(samples=2)
        job = SimpleNamespace(exported=lambda name, fmt: (source, {"ok": True}),
                              target=SimpleNamespace(quantization=settings),
                              calibration=Calibration(settings, SMALL, None, directory), quantized_sources={})
        return _key(job, "object_pointer", "int8", "ort")
    assert key(None) == key(DEFAULT_DIR)
    assert key(changed) != key(None)
    assert key(None, QuantSettings(samples=3)) != key(None)
    assert key(None, QuantSettings(samples=2, gate=QuantSettings().gate.__class__(min_sqnr_db=1.0))) == key(None)


def test_quantized_artifact_is_a_qdq_graph(int8_bundle, workdir):
    path = workdir / "cache" / "quantized" / "object_pointer.int8.ort.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


# --- `toolkit calibrate` and `toolkit quantize-report` ---------------------------------------------------

def test_calibrate_records_the_feeds_the_pipelines_pass_with_statistics(tmp_path, capsys):
    out = tmp_path / "feeds"
    assert main(["calibrate", "--out", str(out), "--components", "object_pointer,vision_encoder", "--samples", "2",
                 "--evaluation"]) == 0
    printed = capsys.readouterr().out
    assert "calibration: object_pointer 2" in printed and "evaluation: object_pointer 2" in printed
    report = json.loads((out / "calibration.json").read_text())
    # the feeds on disk are the ones the statistics describe: recompute one from the files
    import numpy as np
    files = sorted((out / "calibration" / "object_pointer").glob("*.npz"))
    assert len(files) == 2
    name = next(iter(report["statistics"]["calibration"]["object_pointer"]))
    values = [np.load(f)[name] for f in files]
    stats = report["statistics"]["calibration"]["object_pointer"][name]
    assert stats["samples"] == 2
    assert stats["max"] == pytest.approx(max(float(v.max()) for v in values))
    assert stats["min"] == pytest.approx(min(float(v.min()) for v in values))
    # the vision encoder is not reached by the tracker alone, but the detector pipeline reaches both
    assert "vision_encoder" in report["statistics"]["calibration"]
    assert report["set"]["not_reached"] == {"calibration": [], "evaluation": []}
    assert "| object_pointer |" in (out / "calibration.md").read_text()


def test_calibrate_bad_input_is_one_line(tmp_path, capsys):
    assert main(["calibrate", "--out", str(tmp_path / "o"), "--calibration", str(tmp_path / "missing")]) == 2
    assert main(["calibrate", "--out", str(tmp_path / "o"), "--components", "nope"]) == 2
    assert main(["calibrate", "--out", str(tmp_path / "o"), "--samples", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "o").exists()


def test_quantize_report_tables_every_rung_and_the_worst_per_operator_type(int8_bundle, workdir, tmp_path, capsys):
    bundle, _ = int8_bundle
    out = tmp_path / "report"
    assert main(["quantize-report", str(bundle), "--out", str(out), "--cache", str(workdir / "cache")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((bundle / "manifest.json").read_text())
    md = (out / "report.md").read_text()
    for name in SMALL:  # every rung the build tried is a row, with the chosen one marked
        record = manifest["components"][name]["quantization"]
        assert f"{name:18} ort      {' -> '.join(r['precision'] for r in record['rungs'])}: chose " \
               f"{record['chosen']}" in printed
        assert sum(line.startswith(f"| {name} | ort |") for line in md.splitlines()) == len(record["rungs"])
    assert "NOT trained" in md and "one operator type quantized at a time" in md
    assert "the operator type that costs most alone is" in printed
    assert (out / "sensitivity.png").stat().st_size > 0


def test_quantize_report_of_an_fp32_bundle_is_one_line(state, workdir, tmp_path, capsys):
    fp32 = tmp_path / "fp32"
    target = load_target(_target(tmp_path, '[defaults]\nformat = "onnx"\nprecision = "fp32"\n'))
    run_build(target, fp32, state, LABEL, True, components=["prompt_encoder"], cache_dir=workdir / "cache", golden=False)
    assert main(["quantize-report", str(fp32), "--out", str(tmp_path / "r")]) == 2
    assert "no quantized component" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
