"""Export of every component to ONNX and TorchScript lite, verified against PyTorch.

The fast tests check the registry, the specs, the cache and the verification logic. The `full`
tests run the whole `toolkit export` once (module fixture, embedded default weights: all 13
components, both formats, every artifact verified on golden-derived inputs and the extremes of
every dynamic dimension), then a second run that must come entirely from the cache, and a run
with a corrupted exporter that must fail the command, naming component, case and tensor; and the
image and tracking pipelines run over the exported artifacts against the golden fixture.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import with_make

from toolkit import cli
from toolkit.components.registry import COMPONENTS, GRID, UNUSED, build_graph, load_models
from toolkit.components.spec import DIMS, evaluate
from toolkit.convert import cache
from toolkit.convert.onnx_export import export_onnx
from toolkit.deploy.build import default_cache_dir
from toolkit.deploy.export import FORMATS, REPORT_NAME, run_export
from toolkit.model.tracker import TrackerModules
from toolkit.runners.ort_runner import OrtRunner
from toolkit.runners.ptl_runner import PtlRunner
from toolkit.verify.bundle import weights_digest
from toolkit.verify.compare import cases, compare, run_cases

ISSUE_COMPONENTS = {
    "vision_encoder", "tracker_neck", "text_encoder", "geometry_encoder", "fusion_encoder", "fusion_decoder",
    "scoring", "segmentation_head", "prompt_encoder", "mask_decoder", "memory_encoder", "memory_attention",
    "object_pointer",
}


# --- registry, specs, cache, verification (fast) ---------------------------------------------

@pytest.fixture(scope="module")
def light_models():
    """The model with every weight zero: enough to build graphs and check their signatures."""
    from conftest import layout_state_dict
    return load_models(layout_state_dict())


def test_registry_has_the_thirteen_components():
    assert set(COMPONENTS) == ISSUE_COMPONENTS


def test_prefixes_cover_every_live_checkpoint_entry(light_sd):
    prefixes = [p for comp in COMPONENTS.values() for p in comp.prefixes]
    for prefix in prefixes + list(UNUSED):
        assert any(k.startswith(prefix) for k in light_sd), f"{prefix} selects no checkpoint entry"
    uncovered = [k for k in light_sd if not k.startswith(tuple(prefixes) + tuple(UNUSED))]
    assert uncovered == []


def test_graphs_take_the_declared_inputs(light_models):
    for comp in COMPONENTS.values():
        build_graph(light_models, comp)  # raises if forward's arguments are not the declared inputs


def test_dimension_expressions_and_examples():
    assert evaluate("boxes+1", {"boxes": 0}) == 1
    assert evaluate("5184*memory_frames + 4*pointers", {"memory_frames": 7, "pointers": 16}) == 36352
    comp = COMPONENTS["geometry_encoder"]
    feeds = comp.example({"boxes": 0})
    assert feeds["boxes"].shape == (0, 1, 4) and feeds["box_labels"].dtype == bool
    assert comp.output_shapes(feeds) == {"geometry_tokens": (1, 1, 256), "geometry_mask": (1, 1)}
    ids = COMPONENTS["text_encoder"].example({"text_tokens": 2})["token_ids"]
    assert ids.tolist() == [[49406, 49407]]


def _settings(case_names) -> set[str]:
    """'a=1,b=2' -> {'a=1', 'b=2'} over all cases."""
    return {part for name in case_names for part in name.split(",")}


def test_every_dynamic_dimension_is_checked_at_both_ends():
    comp = COMPONENTS["memory_attention"]
    made = cases(comp, golden=None)
    assert list(made) == ["typical", "memory_frames=1,objects=1,pointers=0", "memory_frames=7", "objects=8",
                          "pointers=16"]
    assert made["memory_frames=7"]["memory"].shape == (7, 1, 64, 72, 72)
    assert made["memory_frames=1,objects=1,pointers=0"]["object_pointers"].shape == (0, 1, 256)
    assert set(cases(COMPONENTS["geometry_encoder"], golden=None)) == {"typical", "boxes=0", "boxes=16"}


def test_cache_record_detects_changes(tmp_path):
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"model")
    assert cache.lookup(artifact, "k1").reason == "new"
    cache.store(artifact, "k1", {"note": 1})
    assert cache.lookup(artifact, "k1").record["note"] == 1
    assert cache.lookup(artifact, "k2").reason == "stale: inputs changed"
    artifact.write_bytes(b"mode!")
    assert cache.lookup(artifact, "k1").reason == "stale: artifact modified"


def test_a_wrong_output_names_component_case_and_tensor():
    comp = COMPONENTS["object_pointer"]
    inputs = {"typical": comp.example()}
    reference = {"typical": {"object_pointer": np.ones((2, 256), np.float32)}}
    good = compare(comp, "onnx", inputs, reference, reference)
    assert good.ok and good.summary()["max_abs_error"] == 0.0
    wrong = {"typical": {"object_pointer": np.full((2, 256), 1.1, np.float32)}}
    bad = compare(comp, "onnx", inputs, reference, wrong)
    assert not bad.ok
    assert bad.failures[0].startswith("object_pointer [onnx] case 'typical': output 'object_pointer': max abs error")
    crashed = compare(comp, "ptl", inputs, reference, {"typical": RuntimeError("boom")})
    assert "case 'typical': the runner failed: RuntimeError: boom" in crashed.failures[0]


def test_mask_iou_is_checked():
    comp = COMPONENTS["mask_decoder"]
    feeds = comp.example({"objects": 1})
    ref = {"masks": np.full((1, 4, 288, 288), -1, np.float32), "iou": np.zeros((1, 4), np.float32),
           "mask_tokens": np.zeros((1, 4, 256), np.float32), "object_score_logits": np.zeros((1, 1), np.float32)}
    ref["masks"][..., :100, :] = 1e-5  # a mask with logits just above 0 ...
    got = {**ref, "masks": -ref["masks"]}  # ... flipped by an error far below the tolerance
    result = compare(comp, "onnx", {"c": feeds}, {"c": ref}, {"c": got})
    assert not result.ok and "mask IoU 0.0000 < 0.99" in result.failures[0]


# --- the full export (CI-sized: runs on the full model with the embedded default weights) ---------

@pytest.fixture(scope="module")
def state():
    from toolkit.checkpoint.weights import synthetic_state_dict
    return synthetic_state_dict()


@pytest.fixture(scope="module")
def exported(state):
    """Every component in both formats, in the toolkit's default export cache: the ONNX exports the
    session's cpu bundle made (conftest.cpu_bundle) are cache hits, verified when they were made."""
    out = default_cache_dir(weights_digest(state))
    report = run_export(out, state, "embedded default")
    return out, report


@pytest.mark.full
def test_every_component_exports_and_verifies(exported):
    out, report = exported
    assert report.failures == []
    assert {(r["component"], r["format"]) for r in report.rows} == {
        (name, fmt) for name in ISSUE_COMPONENTS for fmt in ("onnx", "ptl")}
    for row in report.rows:
        comp = COMPONENTS[row["component"]]
        assert (out / row["file"]).is_file()
        assert row["cases"][:2] == ["golden", "typical"]
        for dim in comp.dims():
            assert {f"{dim.name}={dim.min}", f"{dim.name}={dim.max}"} <= _settings(row["cases"])
        if comp.masks:
            assert row["min_mask_iou"] >= comp.tolerance.mask_iou
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["ok"] and len(saved["artifacts"]) == 26


@pytest.mark.full
def test_onnx_artifacts_are_checked_and_keep_dynamic_axes(exported):
    out, _ = exported
    for comp in COMPONENTS.values():
        model = onnx.load(str(out / f"{comp.name}.onnx"), load_external_data=False)
        onnx.checker.check_model(model)
        runner = OrtRunner(out / f"{comp.name}.onnx")
        assert runner.input_names == comp.input_names and runner.output_names == comp.output_names
        for spec in comp.inputs:
            shape = runner.input_metadata[spec.name].shape
            for axis, dim in spec.dynamic_axes().items():
                assert isinstance(shape[axis], str), f"{comp.name}.{spec.name} axis {axis} ({dim}) is static"


@pytest.mark.full
def test_no_graph_grows_when_onnx_runtime_folds_its_constants(exported, tmp_path):
    """quant_pre_process and the .ort conversion store ONNX Runtime's optimised graph, folded constants
    included, without a size limit: a constant subgraph left in an export (the fusion decoder's first-layer
    box bias, 31.8 MiB; RoPE tables gathered by a constant index, 2.5 MiB a copy) lands in the bundle. One
    folded 72x72 position encoding per graph is by design (5 MiB: constants that are the same for every
    frame live in the graph that uses them, see toolkit/components/registry.py)."""
    out, _ = exported
    encoding_bytes = 4 * 256 * GRID * GRID

    def initializers(path):
        return {t.name: t for t in onnx.load(str(path)).graph.initializer}
    grown = {}
    for name in COMPONENTS:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # includes constant folding
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(out / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        before, after = initializers(out / f"{name}.onnx"), initializers(tmp_path / f"{name}.onnx")
        growth = sum(onnx.numpy_helper.to_array(t).nbytes for t in after.values()) - \
            sum(onnx.numpy_helper.to_array(t).nbytes for t in before.values())
        if any(tuple(t.dims) == (1, 256, GRID, GRID) for n, t in after.items() if n not in before):
            growth -= encoding_bytes
        if growth > (1 << 18):
            grown[name] = f"+{growth / 2**20:.1f} MiB"
    assert not grown, grown


@pytest.mark.full
@pytest.mark.parametrize("boxes", [0, 16])
def test_geometry_encoder_without_boxes_and_with_many(exported, state, boxes):
    """The prompt with N = 0 boxes (text only) and the maximum, through ORT and the lite interpreter."""
    out, _ = exported
    comp = COMPONENTS["geometry_encoder"]
    feeds = comp.example({"boxes": boxes}, seed=7)
    graph = build_graph(load_models(state), comp)
    want = comp.torch_runner(graph).infer(feeds)
    for runner in (OrtRunner(out / "geometry_encoder.onnx"), PtlRunner(out / "geometry_encoder.ptl")):
        got = runner.infer(feeds)
        assert got["geometry_tokens"].shape == (boxes + 1, 1, 256)
        np.testing.assert_allclose(got["geometry_tokens"], want["geometry_tokens"], atol=1e-4)
        assert runner.last_inference_time > 0


@pytest.mark.full
def test_memory_attention_extremes_are_in_the_report(exported):
    _, report = exported
    rows = [r for r in report.rows if r["component"] == "memory_attention"]
    for row in rows:
        assert {"memory_frames=1", "memory_frames=7", "pointers=0", "pointers=16", "objects=8"} <= _settings(row["cases"])
        assert row["dynamic_axes"] == {"memory_frames": [1, 7], "objects": [1, 8], "pointers": [0, 16]}


@pytest.mark.full
def test_second_run_comes_from_the_cache(exported, state):
    out, first = exported
    again = run_export(out, state, "embedded default")
    assert [r["cache"] for r in again.rows] == ["hit"] * len(first.rows)
    assert again.ok and again.seconds < 60


@pytest.mark.full
def test_a_failing_artifact_fails_the_command(tmp_path, monkeypatch, capsys):
    """An exporter that corrupts one weight: verification catches it and the command exits non-zero."""
    onnx_format = FORMATS["onnx"]

    def corrupting(comp, graph, args, path):
        info = onnx_format.exporter.make(comp, graph, args, path)
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))
        return info

    monkeypatch.setitem(FORMATS, "onnx", with_make(onnx_format, corrupting))
    code = cli.main(["export", "--out", str(tmp_path), "--components", "object_pointer", "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2
    assert "object_pointer [onnx] case 'golden': output 'object_pointer': max abs error" in err
    assert not (tmp_path / "object_pointer.onnx").exists() and (tmp_path / "object_pointer.failed.onnx").exists()
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["ok"] is False and report["artifacts"][0]["failures"]


# --- the pipelines of `toolkit segment` / `toolkit track` over the exported artifacts -------------

def _artifact_runners(out, names, fmt):
    kind = {"onnx": OrtRunner, "ptl": PtlRunner}[fmt]
    return {n: kind(out / f"{n}.{fmt}") for n in names}


def _failed_stages(results) -> list[str]:
    compared = [r for r in results if "not in the dump" not in r["message"]]
    assert compared, "no golden stage was compared"
    return [r["message"] for r in compared if not r["ok"]]


@pytest.mark.full
@pytest.mark.parametrize("fmt", ["onnx", "ptl"])
def test_image_pipeline_from_artifacts_reproduces_the_golden_case(exported, tmp_path, fmt):
    """ImageSegmenter (pre-processing, tokenizer, prompt assembly, post-processing) with every
    detector component served by ONNX Runtime / the lite interpreter: the golden stages, including
    the post-processed boxes, scores and masks, for the text and the text + box cases."""
    from toolkit.pipeline.artifacts import DETECTOR_COMPONENTS, RunnerDetector
    from toolkit.pipeline.image import ImageSegmenter
    from toolkit.pipeline.intermediates import StageDump, load_dump
    from toolkit.pipeline.preprocess import load_rgb
    from toolkit.verify.golden import compare_dump, golden_path
    segmenter = ImageSegmenter(RunnerDetector(_artifact_runners(exported[0], DETECTOR_COMPONENTS, fmt)))
    rgb = load_rgb(golden_path("inputs", "coffee.png"))
    for case, boxes in (("txt_person", []), ("txt_person_box", [(162.0, 68.0, 438.0, 268.0)])):
        (tmp_path / case).mkdir()
        segmenter(rgb, "person", boxes, threshold=0.0, record=StageDump(tmp_path / case))
        results = compare_dump(load_dump(tmp_path / case), case)
        assert _failed_stages(results) == [], case
        assert f"{case}__12_postprocess" in {r["stage"] for r in results if "not in the dump" not in r["message"]}


@pytest.mark.full
def test_tracking_pipeline_from_onnx_reproduces_the_golden_clip(exported, tmp_path):
    """VideoTracker (memory bank, mask choice, pointer bookkeeping) with every tracker component on
    ONNX Runtime: the golden click-tracking stages of all three frames."""
    from toolkit.pipeline.artifacts import TRACKER_COMPONENTS, RunnerTracker
    from toolkit.pipeline.intermediates import StageDump, load_dump
    from toolkit.pipeline.video import ClickPrompt, open_frames
    from toolkit.verify.golden import compare_tracker_dump, golden_path
    tracker = RunnerTracker(_artifact_runners(exported[0], TRACKER_COMPONENTS, "onnx"))
    session = tracker.prompt(open_frames(golden_path("inputs", "tracker_frames")), 0,
                             ClickPrompt(((312.0, 180.0),), (1,)), record=StageDump(tmp_path))
    assert [r.index for r in session.propagate()] == [0, 1, 2]
    results = compare_tracker_dump(load_dump(tmp_path))
    assert _failed_stages(results) == []
    assert {"trk_f0_prompt__03_sam_mask_decoder", "trk_f1_propagate__05_memory_attention", "trk_f2_final__09_final",
            "trk_f2_propagate__07_track_step"} <= {r["stage"] for r in results if r["ok"]}


def test_export_without_the_golden_fixture_checks_generated_cases(tmp_path, monkeypatch, capsys):
    """A user's machine has no golden fixture: the export still verifies on the generated cases."""
    monkeypatch.setenv("TOOLKIT_GOLDEN", str(tmp_path / "no-golden"))
    assert cli.main(["export", "--out", str(tmp_path / "out"), "--components", "object_pointer",
                     "--format", "onnx"]) == 0
    assert "no golden fixture at" in capsys.readouterr().err
    row = json.loads((tmp_path / "out" / REPORT_NAME).read_text())["artifacts"][0]
    assert row["ok"] and row["cases"][0] == "typical" and "golden" not in row["cases"]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_both_onnx_exporters_keep_the_dynamic_axes(light_models, tmp_path, exporter):
    """Either exporter can be declared; a small graph checks both end to end (objects 1 and 8)."""
    comp = COMPONENTS["object_pointer"]
    graph = build_graph(SimpleNamespace(tracker=TrackerModules().eval()), comp)  # random weights
    args = tuple(torch.from_numpy(x) for x in comp.example().values())
    info = export_onnx(graph, args, comp.input_names, comp.output_names, comp.dynamic_axes(), DIMS,
                       tmp_path / "p.onnx", exporter, 18)
    assert info.opset == 18 and info.exporter == exporter
    runner, reference = OrtRunner(tmp_path / "p.onnx"), comp.torch_runner(graph)
    for objects in (1, 8):
        feeds = comp.example({"objects": objects})
        np.testing.assert_allclose(runner.infer(feeds)["object_pointer"], reference.infer(feeds)["object_pointer"],
                                   atol=1e-5)


def test_unknown_component_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["export", "--out", str(tmp_path), "--components", "vision_encoder,nope"]) == 2
    assert "unknown components ['nope']" in capsys.readouterr().err


def test_runner_outputs_follow_the_declared_names(light_models):
    comp = COMPONENTS["object_pointer"]
    graph = build_graph(light_models, comp)
    runner = comp.torch_runner(graph)
    outputs = run_cases(runner, {"typical": comp.example()})["typical"]
    assert list(outputs) == comp.output_names and outputs["object_pointer"].shape == (2, 256)
