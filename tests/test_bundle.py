"""Targets and bundles: `toolkit targets`, `build`, `verify`, `run`.

Bundles here hold two small components (object_pointer, prompt_encoder) so that a build takes
seconds once the module's export cache is warm; the full-model builds of the four targets are in
benchmarks/results. Checked: the target files; the manifest schema round trip; a tampered, a
missing, an unlisted file, a wrong schema version and path-escaping archives each rejected with a
one-line error; an interrupted build leaving nothing that verifies; parity of the ONNX / .ort /
TensorRT-ready artifacts; the TensorRT operator check; the Core ML packages against the declared
specs; and the prompt cache. The pipelines over artifacts are checked against the golden fixture
in test_export.py.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from toolkit.checkpoint.weights import LABEL
from toolkit.cli import main
from toolkit.components.registry import COMPONENTS
from toolkit.components.spec import DIMS
from toolkit.convert.tensorrt import check_operators, make_trt_ready, operator_list
from toolkit.deploy import build as build_module
from toolkit.deploy.build import run_build
from toolkit.deploy.bundle import (
    MANIFEST,
    BundleError,
    create_archive,
    extract_archive,
    manifest_schema,
    open_bundle,
    read_manifest,
    schema_errors,
    write_manifest,
)
from toolkit.deploy.targets import available, find_target, load_target
from toolkit.errors import ToolkitError
from toolkit.verify.bundle import verify_bundle

SMALL = ["object_pointer", "prompt_encoder"]


@pytest.fixture(scope="module")
def state(synthetic_state):
    return synthetic_state


@pytest.fixture(scope="module")
def workdir(small_builds):
    return small_builds  # the session's small bundles and their export cache (conftest)


FULL_PRECISION = {"cpu": "fp32", "android": "fp32", "jetson-orin": "fp16"}  # what these targets built before int8


def _build(target, out, state, workdir, **kw):
    """A small bundle of a shipped target (at its full precision: quantization has its own tests) or a target file."""
    target = find_target(target).with_precision(FULL_PRECISION[target]) if isinstance(target, str) else target
    return run_build(target, out, state, LABEL, True, components=kw.pop("components", SMALL),
                     cache_dir=workdir / "cache", golden=False, **kw)


@pytest.fixture(scope="module")
def cpu_bundle(small_cpu_bundle):
    return small_cpu_bundle  # the cpu target, SMALL, in workdir / "cpu" (conftest)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- targets ---------------------------------------------------------------------------------------

def test_shipped_targets_load_and_say_what_they_produce(capsys):
    assert {"jetson-orin", "ios", "android", "cpu"} <= set(available())
    names = ("jetson-orin", "ios", "android", "cpu")
    formats = {name: {p.format for p in find_target(name).plans.values()} for name in names}
    assert formats == {"jetson-orin": {"tensorrt"}, "ios": {"coreml", "ptl"}, "android": {"ort"}, "cpu": {"onnx"}}
    assert find_target("ios").plans["text_encoder"].precision == "palette4"  # gated, down the Core ML ladder
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "jetson-orin: NVIDIA Jetson Orin" in out and "coreml   palette4" in out and "tensorrt fp16" in out


def test_a_target_is_one_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "edge.toml").write_text('schema = 1\nname = "edge"\ndescription = "my board"\n'
                                        '[defaults]\nformat = "onnx"\n[components.text_encoder]\nformat = "ptl"\n')
    monkeypatch.setenv("TOOLKIT_TARGETS_PATH", str(tmp_path))
    target = find_target("edge")
    assert target.plans["text_encoder"].format == "ptl" and target.plans["vision_encoder"].format == "onnx"
    assert main(["targets"]) == 0 and "edge: my board" in capsys.readouterr().out


@pytest.mark.parametrize("body,fragment", [
    ('[defaults]\nformat = "tflite"\n', "defaults.format is 'tflite', expected one of onnx, ort"),
    # onnx makes fp16 (and int8) since quantization; ONNX Runtime Mobile (.ort) has no fp16
    ('[defaults]\nformat = "ort"\nprecision = "fp16"\n', "takes precision fp32"),
    ('[defaults]\nformat = "onnx"\nopset = 17\n', "exports ONNX opset 20, above the target's highest opset 17"),
    ('[defaults]\nformat = "onnx"\n[components.nose]\nformat = "onnx"\n', "unknown component(s) ['nose']"),
    ('image_size = 1024\n[defaults]\nformat = "onnx"\n', "built for 1008x1008 inputs only"),
    ('[defaults]\nformat = "ort"\ncompression = "linear8"\n', "weight compression is a Core ML setting"),
])
def test_bad_target_files_are_one_line_errors(tmp_path, capsys, body, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(f'schema = 1\nname = "bad"\ndescription = "x"\n{body}')
    err = _one_line_error(capsys, ["build", "--target", str(path), "--out", str(tmp_path / "out")])
    assert fragment in err
    assert not (tmp_path / "out").exists()


# --- the manifest and the files ----------------------------------------------------------------------

def test_manifest_schema_round_trip(cpu_bundle, tmp_path):
    manifest = read_manifest(cpu_bundle)
    assert manifest["schema"] == "esam3-toolkit.bundle/1" and schema_errors(manifest, manifest_schema()) == []
    copy = tmp_path / "copy"
    shutil.copytree(cpu_bundle, copy)
    write_manifest(copy, json.loads(json.dumps(manifest)))
    assert read_manifest(copy) == manifest
    assert open_bundle(copy).manifest == manifest
    # everything an app needs is described
    assert set(manifest["components"]) == set(SMALL)
    entry = manifest["components"]["prompt_encoder"]
    assert [i["name"] for i in entry["inputs"]] == COMPONENTS["prompt_encoder"].input_names
    assert entry["dims"] == {"objects": [1, 2, 8], "points": [1, 2, 16]}
    assert manifest["preprocess"]["mean"] == [0.5] * 3 and manifest["preprocess"]["image_size"] == 1008
    assert manifest["tokenizer"]["context_length"] == 77
    assert (cpu_bundle / manifest["tokenizer"]["vocabulary"]).is_file()
    assert manifest["model"]["embedded_default"] and "NOT the trained" in manifest["build"]["notes"][0]
    assert {"torch", "onnxruntime", "onnx"} <= set(manifest["tools"])


def _tamper(root):
    with open(root / "models" / "object_pointer.onnx", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))


def _wrong_schema(root):
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["schema"] = "esam3-toolkit.bundle/2"
    (root / MANIFEST).write_text(json.dumps(manifest))


def _bad_field(root):
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["components"]["object_pointer"]["precision"] = "int3"
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change,fragment", [
    (_tamper, "file models/object_pointer.onnx does not match its sha256 in the manifest"),
    (lambda root: (root / "models" / "prompt_encoder.onnx").unlink(), "file models/prompt_encoder.onnx is missing"),
    (lambda root: (root / "models" / "extra.onnx").write_bytes(b"x"), "file models/extra.onnx is not listed"),
    (_wrong_schema, "manifest schema 'esam3-toolkit.bundle/2' is not supported "
                    "(this toolkit reads esam3-toolkit.bundle/1)"),
    (_bad_field, "manifest.components.object_pointer.precision is 'int3'"),
    (lambda root: (root / MANIFEST).unlink(), "no manifest.json: not a finished bundle"),
])
def test_bad_bundles_are_rejected_with_one_line(cpu_bundle, tmp_path, capsys, change, fragment):
    copy = tmp_path / "copy"
    shutil.copytree(cpu_bundle, copy)
    change(copy)
    assert fragment in _one_line_error(capsys, ["verify", str(copy), "--no-parity"])
    assert fragment in _one_line_error(capsys, ["run", str(copy), "--image", "x.png", "--prompt", "a", "--out",
                                                str(tmp_path / "out")])


def _evil_archive(path, kind):
    with tarfile.open(path, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo({"dotdot": "bundle/../../evil.txt", "absolute": "/tmp/evil.txt",
                                "symlink": "bundle/link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind,fragment", [("dotdot", "its path escapes the target directory"),
                                           ("absolute", "its path escapes the target directory"),
                                           ("symlink", "it is a link")])
def test_path_escaping_archives_are_refused(tmp_path, capsys, kind, fragment):
    archive = tmp_path / "evil.tar.gz"
    _evil_archive(archive, kind)
    err = _one_line_error(capsys, ["verify", str(archive), "--no-parity"])
    assert "refusing member" in err and fragment in err
    with pytest.raises(BundleError, match="refusing member"):
        extract_archive(archive, tmp_path / "dest" / "x")
    assert not (tmp_path / "dest" / "x").exists() and not (tmp_path / "evil.txt").exists()


def test_archive_round_trip_and_parity(cpu_bundle, tmp_path):
    archive = create_archive(cpu_bundle, tmp_path / "cpu.tar.gz")
    root = extract_archive(archive, tmp_path / "unpacked")
    assert read_manifest(root) == read_manifest(cpu_bundle)
    report = verify_bundle(archive, golden=False)
    assert report.ok and [r["status"] for r in report.rows] == ["passed", "passed"]
    assert all(r["max_abs_error"] < 1e-4 and "onnxruntime" in r["runtime"] for r in report.rows)


def test_verify_command_without_the_golden_fixture(cpu_bundle, tmp_path, monkeypatch, capsys):
    """On a user's machine (no golden fixture) `toolkit verify` checks the generated cases."""
    monkeypatch.setenv("TOOLKIT_GOLDEN", str(tmp_path / "no-golden"))
    assert main(["verify", str(cpu_bundle)]) == 0
    out = capsys.readouterr().out
    assert "parity: 2 passed, 0 failed, 0 pending" in out


def test_interrupted_build_leaves_nothing_that_verifies(state, workdir, tmp_path, monkeypatch, capsys):
    def interrupt(*_args):
        raise KeyboardInterrupt
    monkeypatch.setattr(build_module, "_tokenizer", interrupt)  # after the models are written
    with pytest.raises(KeyboardInterrupt):
        _build("cpu", tmp_path / "cpu", state, workdir)
    assert list(tmp_path.iterdir()) == []
    # a build killed outright leaves its temporary directory, without a manifest: it never verifies
    partial = tmp_path / ".cpu.partial-killed"
    shutil.copytree(workdir / "cpu", partial)
    (partial / MANIFEST).unlink()
    assert "not a finished bundle" in _one_line_error(capsys, ["verify", str(partial), "--no-parity"])


def test_existing_bundle_is_kept_without_force(cpu_bundle, state, workdir):
    before = (cpu_bundle / MANIFEST).read_text()
    with pytest.raises(ToolkitError, match="exists and is not empty; pass --force"):
        _build("cpu", cpu_bundle, state, workdir)
    assert (cpu_bundle / MANIFEST).read_text() == before


# --- the formats -------------------------------------------------------------------------------------

def test_android_bundle_has_ort_files_and_the_operator_config(state, workdir):
    report = _build("android", workdir / "android", state, workdir)
    root = workdir / "android"
    assert sorted(p.name for p in (root / "models").iterdir()) == ["object_pointer.ort", "prompt_encoder.ort"]
    config = (root / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "Gemm" in config
    assert [r["status"] for r in report.rows] == ["passed", "passed"]
    assert read_manifest(root)["components"]["object_pointer"]["verification"]["runtime"].endswith("(.ort)")


def test_jetson_onnx_passes_the_operator_check_of_its_tensorrt_version(state, workdir):
    _build("jetson-orin", workdir / "jetson", state, workdir)
    root = workdir / "jetson"
    manifest = read_manifest(root)
    ops = operator_list(manifest["target"]["settings"]["tensorrt"]["version"])
    for name, entry in manifest["components"].items():
        assert entry["checks"]["tensorrt_operators"]["passed"]
        assert check_operators(onnx.load(str(root / entry["file"])), ops) == []
        assert entry["verification"]["status"] == "passed" and "engine" in entry["verification"]
    script = (root / "engines" / "build_engines.sh").read_text()
    assert "--minShapes=points:1x1x2,point_labels:1x1" in script
    assert "--maxShapes=points:8x16x2,point_labels:8x16" in script
    assert "--fp16" in script
    assert manifest["engines"]["status"].startswith("pending: TensorRT is not available here")


def test_operator_check_names_what_tensorrt_cannot_take():
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Unique", ["a"], ["y"])],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    problems = check_operators(model, operator_list("10.3"))
    assert problems == ["opset 21 is outside the parser's range 9..20",
                        "Add on DOUBLE is not supported (supported: FP32, FP16, BF16, INT32, INT64)",
                        "Unique is not supported"]


@pytest.mark.parametrize("zero_point,problem", [
    (0, None), (3, "QuantizeLinear with a non-zero zero point is not supported (TensorRT quantizes symmetrically)")])
def test_operator_check_takes_symmetric_qdq(zero_point, problem):
    """Explicit quantization: Q takes float, DQ takes int8 (the table's type is the input's); zero points 0."""
    import numpy as np
    from onnx import numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp_q"),
             numpy_helper.from_array(np.array(0, np.int8), "zp_dq")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp_q"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp_dq"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    assert check_operators(model, operator_list("10.3")) == ([problem] if problem else [])


def test_engine_commands_follow_the_precision():
    from toolkit.convert.tensorrt import trtexec_command
    flags = {p: [a for a in trtexec_command("m.onnx", "m.plan", {}, p, 64) if a in ("--fp16", "--int8")]
             for p in ("fp32", "fp16", "int8")}
    assert flags == {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


def test_failed_operator_check_without_fallback_fails_the_build(state, workdir, tmp_path, monkeypatch):
    monkeypatch.setattr("toolkit.convert.tensorrt.check_operators", lambda model, ops: ["Gemm is not supported"])
    with pytest.raises(ToolkitError, match=r"object_pointer: tensorrt failed and the target has no fallback for it: "
                                           r"not accepted by TensorRT 10.3 .*Gemm is not supported"):
        _build("jetson-orin", tmp_path / "jetson", state, workdir)
    assert list(tmp_path.iterdir()) == []


def test_int64_inputs_become_int32(tmp_path):
    from toolkit.runners.ort_runner import OrtRunner
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])
    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"])], "g", [ids], [out], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "a.onnx")
    changed = make_trt_ready(tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert changed == {"inputs": {"ids": {"dtype": "int32"}}, "outputs": {}}
    got = OrtRunner(tmp_path / "b.onnx").infer({"ids": np.array([3, 1], np.int32)})["out"]
    np.testing.assert_array_equal(got, [[6, 7], [2, 3]])


def test_coreml_packages_load_and_match_the_declared_specs(state, workdir, tmp_path):
    from toolkit.convert.coreml import inspect_package
    text = Path(find_target("ios").path).read_text()
    # fp16 with an ungated weight compression (the quantized precisions: tests/test_quantize_build_coreml_ptl.py)
    text = text.replace('name = "ios"', 'name = "ios-small"').replace('precision = "palette4"', 'precision = "fp16"')
    (tmp_path / "ios-small.toml").write_text(text + '\n[components.object_pointer]\ncompression = "linear8"\n')
    report = _build(load_target(tmp_path / "ios-small.toml"), workdir / "ios", state, workdir,
                    components=SMALL + ["memory_encoder"])
    root = workdir / "ios"
    manifest = read_manifest(root)
    for name, entry in manifest["components"].items():
        comp = COMPONENTS[name]
        package = inspect_package(root / entry["file"])  # loads the spec back from disk
        assert [i["name"] for i in package["inputs"]] == comp.input_names
        assert [o["name"] for o in package["outputs"]] == comp.output_names
        for spec, got in zip(comp.inputs, package["inputs"]):
            assert got["dtype"] == ("int32" if spec.dtype in ("bool", "int64", "int32") else "float32")
            want = [[d, d] if isinstance(d, int) else [max(1, DIMS[d].min), DIMS[d].max] for d in spec.shape]
            assert got["ranges"] == (want or [[1, 1]]), (name, spec.name)  # Core ML has no rank-0 inputs
        assert package["op_count"] > 0 and entry["checks"]["coreml_spec"]["passed"]
        assert entry["verification"]["status"] == "pending" and "macOS" in entry["verification"]["reason"]
    assert any(op.startswith("constexpr_") for op in inspect_package(root / "models/object_pointer.mlpackage")["ops"])
    assert {r["status"] for r in report.rows} == {"pending"}
    assert "parity pending" in " ".join(manifest["build"]["notes"])


def test_prompt_cache_holds_the_concepts_text_features(state, workdir, tmp_path):
    from toolkit.pipeline.tokenizer import Tokenizer
    from toolkit.runtime import Bundle as RuntimeBundle
    from toolkit.runtime.image import PromptCache
    from toolkit.verify.golden import stage_tensor
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# my app's vocabulary\nperson\n\nred cup\nperson\n")
    _build("cpu", tmp_path / "cached", state, workdir, concepts=build_module.read_concepts(concepts))
    bundle = open_bundle(tmp_path / "cached")
    assert bundle.manifest["prompt_cache"]["concepts"] == ["person", "red cup"]
    cache = PromptCache(RuntimeBundle(bundle.root, bundle.manifest))
    hit = cache.lookup(Tokenizer()("  Person ").numpy())
    golden = "txt_person__05d_forward_text"
    np.testing.assert_allclose(hit["text_features"], stage_tensor(golden, "out.language_features"), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(hit["text_mask"], stage_tensor(golden, "out.language_mask"))
    assert cache.lookup(Tokenizer()("dog").numpy()) is None
