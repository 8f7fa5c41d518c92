"""The quantize stage for Core ML and TorchScript lite, through real (small) builds: object_pointer and
prompt_encoder, whose calibration feeds the tracker pipeline records (2 samples).

- bundle A: object_pointer as .ptl int8 (static FX int8, QNNPACK kernels: gated in the lite interpreter;
  its Adds kept in float: QNNPACK refuses their operand scales), prompt_encoder as Core ML palette4
  under a gate it cannot meet (min_sqnr_db 1000): the Core ML ladder walks palette4 -> palette6 ->
  int8-weights -> fp16, each rung measured on its PyTorch simulation, with the reasons in the manifest;
- bundle B: object_pointer as Core ML int8 (W8A8: the convert stage converts the very finalized
  simulation the gate measured), prompt_encoder as .ptl int8, which the lite interpreter's quantizer
  cannot make (integer inputs; no nn.Linear for dynamic int8): fp32, and the build says why;
- bundle C: A again: every rung's figures, the end-to-end figures and the .ptl from the cache, no
  pipeline run. (Without keep_float, QNNPACK refuses object_pointer's int8 Adds at run time: the
  ladder records that reason and takes int8-weights.)
Run time (AMD EPYC, 2 cores): 3 min 22 s for the module at load average 3-5 (3 min 18 s of CPU time);
16 min at load 10-16.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("coremltools")

from toolkit.backends import BACKENDS  # noqa: E402
from toolkit.checkpoint.weights import LABEL, synthetic_state_dict  # noqa: E402
from toolkit.convert.coreml import inspect_package  # noqa: E402
from toolkit.deploy.build import run_build  # noqa: E402
from toolkit.deploy.bundle import manifest_schema, open_bundle, schema_errors  # noqa: E402
from toolkit.deploy.targets import find_target, load_target  # noqa: E402
from toolkit.verify.bundle import verify_bundle  # noqa: E402

SMALL = ["object_pointer", "prompt_encoder"]
COREML_LADDER = ["palette4", "palette6", "int8-weights", "fp16"]


def _target(folder: Path, name: str, body: str):
    path = folder / f"{name}.toml"
    path.write_text(f'schema = 1\nname = "{name}"\ndescription = "test"\n[quantization]\nsamples = 2\n' + body)
    return load_target(path)


PLAN_A = ('[defaults]\nformat = "coreml"\nprecision = "palette4"\nfallback = "ptl"\n'
          '[components.object_pointer]\nformat = "ptl"\nprecision = "int8"\n')
STRICT_PROMPT = '[quantization.components.prompt_encoder.gate]\nmin_sqnr_db = 1000.0\n'
A = PLAN_A + '[quantization.components.object_pointer]\nkeep_float = ["Add"]\n' + STRICT_PROMPT
B = ('[defaults]\nformat = "coreml"\nprecision = "int8"\nfallback = "ptl"\n'
     '[components.prompt_encoder]\nformat = "ptl"\nprecision = "int8"\n')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qbuild-coreml-ptl")


@pytest.fixture(scope="module")
def state():
    return synthetic_state_dict()


def _build(workdir, state, name, body, extra=""):
    messages = []
    run_build(_target(workdir, name, body + extra), workdir / name, state, LABEL, True, components=SMALL,
              cache_dir=workdir / "cache", golden=False, progress=messages.append)
    manifest = open_bundle(workdir / name).manifest  # schema-validated on read
    assert not schema_errors(manifest, manifest_schema())
    return manifest, messages


@pytest.fixture(scope="module")
def bundle_a(workdir, state):
    return _build(workdir, state, "a", A)


@pytest.fixture(scope="module")
def bundle_b(workdir, state):
    return _build(workdir, state, "b", B)


def test_backends_quantize_coreml_and_ptl():
    assert BACKENDS["coreml"].rungs("palette4") == ["palette4", "palette6", "int8-weights", "fp16", "fp32"]
    assert BACKENDS["coreml"].rungs("int8") == ["int8", "int8-weights", "fp16", "fp32"]
    assert BACKENDS["ptl"].rungs("int8") == ["int8", "int8-weights", "fp32"]
    assert set(BACKENDS["coreml"].buildable()) == set(BACKENDS["coreml"].precisions)
    assert "int8" in BACKENDS["ptl"].buildable()
    ios = find_target("ios")
    assert {p.precision for n, p in ios.plans.items() if p.format == "coreml"} == {"palette4"}
    assert ios.plans["geometry_encoder"].format == "ptl" and ios.plans["geometry_encoder"].precision == "int8"


def test_ptl_int8_is_gated_in_the_lite_interpreter(bundle_a, workdir):
    manifest, messages = bundle_a
    entry = manifest["components"]["object_pointer"]
    q = entry["quantization"]
    assert entry["format"] == "ptl" and q["requested"] == "int8" and entry["precision"] == q["chosen"] == "int8"
    assert q["rungs"][0]["passed"] and q["rungs"][0]["figures"]["sqnr_db"] >= 20.0
    assert "QNNPACK" in q["stage"]["method"] and q["stage"]["settings"]["engine"] == "qnnpack"
    assert q["stage"]["kept_float"] == ["Add"] and "quantized::add" not in q["stage"]["operators"]
    assert any(op.startswith("quantized::linear") for op in q["stage"]["operators"]), q["stage"]["operators"]
    verification = entry["verification"]
    assert verification["status"] == "passed" and "not the fp32 tolerance" in verification["verified_by"]
    assert "track_iou" in verification["end_to_end_figures"]
    assert (workdir / "a" / entry["file"]).stat().st_size < (workdir / "cache" / "object_pointer.ptl").stat().st_size


def test_coreml_gate_steps_down_on_the_simulation_with_reasons(bundle_a, workdir):
    manifest, messages = bundle_a
    entry = manifest["components"]["prompt_encoder"]
    q = entry["quantization"]
    assert entry["format"] == "coreml" and entry["precision"] == q["chosen"] == "fp16"
    assert [r["precision"] for r in q["rungs"]] == COREML_LADDER
    for rung in q["rungs"][:3]:  # measured on the simulation, failed on the gate
        assert not rung["passed"] and "min_sqnr_db" in " ".join(rung["failures"]) and "sqnr_db" in rung["figures"]
    assert q["rungs"][3]["measured"] is False and "device" in q["rungs"][3]["note"]
    assert q["steps"][0].startswith("prompt_encoder: palette4 -> palette6: sqnr_db")
    assert any(m.startswith("gate: prompt_encoder: int8-weights -> fp16") for m in messages)
    # fp16 (the device runtime's precision) is not gated here: plain conversion, parity pending macOS
    assert entry["verification"]["status"] == "pending" and "macOS" in entry["verification"]["reason"]
    assert not any(op.startswith("constexpr_") for op in inspect_package(workdir / "a" / entry["file"])["ops"])


def test_coreml_w8a8_is_the_converted_simulation(bundle_b, workdir):
    manifest, messages = bundle_b
    entry = manifest["components"]["object_pointer"]
    q = entry["quantization"]
    assert entry["format"] == "coreml" and entry["precision"] == q["chosen"] == "int8"
    assert "LinearQuantizer" in q["stage"]["method"] and "simulation" in q["alone"]["measured_on"]
    verification = entry["verification"]
    assert verification["status"] == "pending" and "passed on the PyTorch simulation" in verification["reason"]
    assert verification["figures"] == q["alone"]["figures"] and verification["figures"]["sqnr_db"] >= 20.0
    assert "simulation" in verification["verified_by"] and "track_iou" in verification["end_to_end_figures"]
    ops = set(inspect_package(workdir / "b" / entry["file"])["ops"])
    assert {"quantize", "dequantize"} <= ops, ops  # activations quantized in the package itself
    assert entry["provenance"]["stages"][0].startswith("the finalized W8A8 simulation")


def test_ptl_int8_the_lite_interpreter_cannot_take_ends_at_fp32_with_why(bundle_b):
    manifest, messages = bundle_b
    entry = manifest["components"]["prompt_encoder"]
    q = entry["quantization"]
    assert entry["format"] == "ptl" and entry["precision"] == q["chosen"] == "fp32"
    assert [r["precision"] for r in q["rungs"]] == ["int8", "int8-weights", "fp32"]
    assert "Int" in q["rungs"][0]["failures"][0] and "no nn.Linear" in q["rungs"][1]["failures"][0]
    assert entry["verification"]["status"] == "passed"  # the verified export, copied
    assert any(m == "prompt_encoder: int8 -> fp32 (gate; the reasons are in the manifest)" for m in messages)


def test_a_second_build_takes_rungs_figures_and_packages_from_the_cache(bundle_a, workdir, state):
    first, _ = bundle_a
    again, messages = _build(workdir, state, "c", A)
    assert "object_pointer: int8 (ptl) from the cache" in messages
    assert "prompt_encoder: palette4 (coreml) gate figures from the cache" in messages
    assert not any(m.startswith("calibration: running") for m in messages)  # nothing measured again
    for name in SMALL:
        assert again["components"][name]["quantization"]["rungs"] == first["components"][name]["quantization"]["rungs"]
    # the fp16 package the gate fell back to is not cached (made each build), the rest is
    assert any(m.startswith("prompt_encoder: Core ML conversion (fp16") for m in messages)


def test_verify_remeasures_the_ptl_and_leaves_core_ml_pending(bundle_a, workdir):
    report = verify_bundle(workdir / "a", golden=False)
    rows = {r["component"]: r for r in report.rows}
    assert rows["object_pointer"]["status"] == "passed" and "re-measured here" in rows["object_pointer"]["checked"]
    assert rows["prompt_encoder"]["status"] == "pending" and "macOS" in rows["prompt_encoder"]["reason"]
