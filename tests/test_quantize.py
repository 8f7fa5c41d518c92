"""toolkit.quantize: calibration sets, metrics, the gate and ladder, and each format's stage on tiny
graphs built here (every artifact is run and compared with its fp32 source)."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.quantize import (
    CalibrationSet,
    Gate,
    QuantizeError,
    QuantSettings,
    choose_precision,
    ladder,
    settle_end_to_end,
)
from toolkit.quantize.calibration import DEFAULT_DIR
from toolkit.quantize.feeds import FeedRecorder, FeedStore, RecordingRunner
from toolkit.quantize.metrics import (
    cosine,
    detection_figures,
    mask_iou,
    match_detections,
    sqnr_db,
    tensor_figures,
    track_figures,
    worst,
)
from toolkit.quantize.ort import qdq_summary, quantize_onnx
from toolkit.runners.ort_runner import OrtRunner
from toolkit.runners.torch_runner import TorchRunner

warnings.filterwarnings("ignore", category=DeprecationWarning)


# --- tiny graphs -----------------------------------------------------------------------------------

class ConvNet(nn.Module):
    """Conv + residual + token MLP + softmax: the kinds of layers of the real components."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = self.conv2(y) + y
        tokens = y.flatten(2).transpose(1, 2)
        tokens = self.fc2(nn.functional.gelu(self.fc1(tokens)))
        return tokens.softmax(-1), y


class Mlp(nn.Module):
    """MatMul-only: the shape of the text encoder's weight-heavy layers."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(128, 256)
        self.fc2 = nn.Linear(256, 128)

    def forward(self, x):
        return (self.fc2(torch.relu(self.fc1(x))),)


def _export(model: nn.Module, shape: tuple, path: Path, outputs: list[str], **options) -> Path:
    """`model` to ONNX at `path` (TorchScript exporter, opset 17, input "x" of `shape`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), input_names=["x"], output_names=outputs,
                          dynamo=False, opset_version=17, **options)
    return path


def _feeds(shape, n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def convnet_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = ConvNet().eval()
    path = tmp_path_factory.mktemp("onnx") / "convnet.onnx"
    _export(model, (1, 3, 16, 16), path, ["probs", "features"])
    return path


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    _export(Mlp().eval(), (1, 4, 128), path, ["y"])
    return path


def _measure(src, dst, feeds, masks=()):
    from toolkit.quantize.evaluate import measure_component
    return measure_component(OrtRunner(src), OrtRunner(dst), feeds, masks)


# --- calibration sets --------------------------------------------------------------------------------

def test_shipped_set_is_split_and_complete():
    cal = CalibrationSet.load()
    assert cal.root == DEFAULT_DIR
    c, e = cal.calibration, cal.evaluation
    assert len(c.images) >= 3 and len(e.images) >= 2
    assert not {p.name for p in c.images} & {p.name for p in e.images}
    assert not set(c.frames) & set(e.frames) and len(c.frames) >= 2 and len(e.frames) >= 2
    assert not {p.text for p in c.prompts} & {p.text for p in e.prompts}
    assert any(p.boxes for p in c.prompts) and any(p.boxes for p in e.prompts)
    assert c.track.kind == "point" and e.track.kind == "point"
    # round-robin: a limit covers every photo before one comes back, with another prompt
    samples = c.samples(len(c.images) + 1)
    assert [s.image for s in samples[:len(c.images)]] == list(c.images)
    assert samples[-1].image == c.images[0] and samples[-1].prompt != samples[0].prompt
    assert len(c.samples()) == len(c.images) * len(c.prompts)
    # the README records every shipped file's source and licence; the folder stays small
    readme = (DEFAULT_DIR / "README.md").read_text()
    for path in (*c.images, *e.images):
        assert path.name in readme
    assert sum(p.stat().st_size for p in DEFAULT_DIR.rglob("*") if p.is_file()) < 5 * 2**20


def _copy_default(tmp_path):
    target = tmp_path / "set"
    shutil.copytree(DEFAULT_DIR, target, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return target


def test_digest_follows_content_split_and_settings(tmp_path):
    first = _copy_default(tmp_path)
    base = CalibrationSet.load(first).digest({"method": "minmax"})
    # the same content elsewhere: same digest (no absolute paths in it)
    assert CalibrationSet.load(shutil.copytree(first, tmp_path / "copy")).digest({"method": "minmax"}) == base
    assert CalibrationSet.load(first).digest({"method": "entropy"}) != base
    # one pixel of one photo
    photo = first / "images" / "calibration" / "astronaut.png"
    rgb = np.array(Image.open(photo))
    rgb[0, 0, 0] ^= 1
    Image.fromarray(rgb).save(photo)
    changed = CalibrationSet.load(first).digest({"method": "minmax"})
    assert changed != base
    # one prompt
    prompts = first / "prompts.txt"
    prompts.write_text(prompts.read_text().replace("a rocket", "a tall rocket"))
    assert CalibrationSet.load(first).digest({"method": "minmax"}) != changed
    # moving a photo from one part to the other changes the split, and so the digest
    moved = _copy_default(tmp_path / "moved")
    before = CalibrationSet.load(moved).digest()
    shutil.move(moved / "images" / "calibration" / "coins.png", moved / "images" / "evaluation" / "coins.png")
    assert CalibrationSet.load(moved).digest() != before


def _photo(path, size=(40, 30), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((size[1], size[0], 3), value, np.uint8)
    rgb[::3, ::2] = 200
    Image.fromarray(rgb).save(path)


def test_user_set_flat_folders_split(tmp_path):
    for i in range(5):
        _photo(tmp_path / "images" / f"p{i}.png", value=i)
    for i in range(4):
        _photo(tmp_path / "frames" / f"{i}.png", value=10 * i)
    (tmp_path / "prompts.txt").write_text("dog\ncat | 0.1,0.1,0.5,0.5\ncar\nbus\n@track box 0.1,0.1,0.6,0.6\n")
    cal = CalibrationSet.load(tmp_path)
    assert [p.name for p in cal.evaluation.images] == ["p3.png"]
    assert [p.name for p in cal.calibration.images] == ["p0.png", "p1.png", "p2.png", "p4.png"]
    assert [p.name for p in cal.calibration.frames] == ["0.png", "1.png"]
    assert [p.name for p in cal.evaluation.frames] == ["2.png", "3.png"]
    assert [p.text for p in cal.evaluation.prompts] == ["bus"]
    assert cal.calibration.prompts[1].boxes == ((0.1, 0.1, 0.5, 0.5),)
    assert cal.calibration.track.kind == cal.evaluation.track.kind == "box"
    click = cal.calibration.track.click_prompt((30, 40))
    assert click.box_xyxy == pytest.approx((4.0, 3.0, 24.0, 18.0))
    assert cal.calibration.prompts[1].boxes_px((30, 40)) == [pytest.approx((4.0, 3.0, 20.0, 15.0))]


def _bad_sets():
    def two(root):
        _photo(root / "images" / "a.png")
        _photo(root / "images" / "b.png")

    def prompts(text):
        def make(root):
            two(root)
            (root / "prompts.txt").write_text(text)
        return make

    def frames(sizes):
        def make(root):
            two(root)
            for i, size in enumerate(sizes):
                _photo(root / "frames" / f"{i}.png", size=size)
        return make

    return {
        "no images folder": (lambda root: root.mkdir(exist_ok=True), "no images/ folder"),
        "one image": (lambda root: _photo(root / "images" / "a.png"), "at least 2"),
        "only a calibration part": (lambda root: _photo(root / "images" / "calibration" / "a.png"),
                                    "without images/evaluation/"),
        "empty evaluation part": (lambda root: (_photo(root / "images" / "calibration" / "a.png"),
                                                (root / "images" / "evaluation").mkdir()), "no image files"),
        "not an image": (lambda root: (two(root), (root / "images" / "c.png").write_bytes(b"not a png")),
                         "cannot read image"),
        "box of 3 numbers": (prompts("dog | 0.1,0.2,0.3\ncat\n"), "has 3 numbers, expected 4"),
        "box outside 0..1": (prompts("dog | 0.1,0.2,1.3,0.5\ncat\n"), "leaves 0..1"),
        "empty box": (prompts("dog | 0.5,0.2,0.5,0.6\ncat\n"), "is empty"),
        "not numbers": (prompts("dog | a,b,c,d\ncat\n"), "not 4 comma-separated numbers"),
        "unknown section": (prompts("[train]\ndog\n"), "unknown section [train]"),
        "empty section": (prompts("[calibration]\ndog\n[evaluation]\n"), "[evaluation] section has no concept"),
        "unknown directive": (prompts("dog\ncat\n@click 0.5,0.5\n"), "is not '@track point X,Y'"),
        "empty concept": (prompts("dog\n | 0.1,0.1,0.5,0.5\ncat\n"), "the text prompt is empty"),
        "one concept": (prompts("dog\n"), "at least 2"),
        "frames of two sizes": (frames([(40, 30), (40, 30), (40, 30), (41, 30)]), "the frames of a clip have one size"),
        "three flat frames": (frames([(40, 30)] * 3), "needs at least 4"),
    }


@pytest.mark.parametrize("case", list(_bad_sets()))
def test_bad_calibration_sets_fail_in_one_line(tmp_path, case):
    make, expected = _bad_sets()[case]
    root = tmp_path / "set"
    root.mkdir()
    make(root)
    with pytest.raises(ToolkitError) as err:
        CalibrationSet.load(root)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_missing_calibration_dir(tmp_path):
    with pytest.raises(ToolkitError, match="not a directory"):
        CalibrationSet.load(tmp_path / "nowhere")


# --- metrics -----------------------------------------------------------------------------------------

def test_sqnr_cosine_and_errors():
    ref = np.array([3.0, -4.0, 0.0, 0.0], np.float32)
    assert sqnr_db(ref, ref) == 300.0
    # error energy 1/25 of the signal's: 10 log10(25) = 13.98 dB
    assert sqnr_db(ref, ref + np.array([1.0, 0, 0, 0], np.float32)) == pytest.approx(13.979, abs=1e-3)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)
    figures = tensor_figures(ref, ref + np.array([0, 0.5, 0, 0], np.float32))
    assert figures["max_abs"] == 0.5 and figures["max_rel"] == pytest.approx(0.125)
    assert tensor_figures(np.array([True, False]), np.array([True, True])) == {"mismatch": 0.5}
    assert worst([{"sqnr_db": 30, "max_abs": 1}, {"sqnr_db": 20, "max_abs": 0.5}]) == {"sqnr_db": 20, "max_abs": 1}


def test_mask_iou_leaves_out_undecided_pixels():
    ref = np.array([5.0, 4.0, -3.0, 0.2, -0.1, 0.3], np.float32)
    got = np.array([5.0, 4.0, -3.0, -0.2, 0.1, 0.3], np.float32)  # flips only where |ref| <= 0.5
    figures = mask_iou(ref, got, margin=0.5)
    assert figures["mask_iou"] == 1.0 and figures["flips_near_threshold"] == 2
    assert figures["uncertain_fraction"] == pytest.approx(0.5)
    flipped = got.copy()
    flipped[1] = -4.0  # a decided pixel lost: IoU 1/2
    assert mask_iou(ref, flipped, margin=0.5)["mask_iou"] == pytest.approx(0.5)
    # the margin is in logits, fixed in advance: a zero margin counts every flip
    assert mask_iou(ref, got, margin=0.0)["mask_iou"] < 1.0


class _Dets:
    def __init__(self, queries, boxes, scores, probs):
        self.query_indices, self.scores, self.mask_probs = np.array(queries), np.array(scores), probs
        self.boxes_xyxy_px = np.array(boxes, np.float32)


def test_detections_pair_by_query_not_by_rank():
    # the reference's top 3 (queries 5, 7, 9: near-tied scores); the candidate kept other queries too,
    # with the order changed, query 9 ranked 4th, and query 7's box moved away
    ref = _Dets([5, 7, 9], [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.50, 0.49, 0.48],
                np.full((3, 4, 4), 0.99, np.float32))
    got = _Dets([7, 5, 2, 9, 3], [[80, 80, 90, 90], [0, 0, 10, 11], [0, 0, 10, 10], [50, 50, 61, 60], [1, 1, 9, 9]],
                [0.52, 0.51, 0.50, 0.47, 0.46], np.full((5, 4, 4), 0.99, np.float32))
    pairs = match_detections(ref.query_indices, ref.boxes_xyxy_px, got.query_indices, got.boxes_xyxy_px)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (2, 3)]  # query 2's box equals query 5's: not a match
    figures = detection_figures(ref, got)
    assert figures["matched_fraction"] == pytest.approx(2 / 3) and figures["candidate_detections"] == 5
    assert figures["max_score_delta"] == pytest.approx(0.01) and figures["max_box_delta_px"] == 1.0
    assert figures["mask_iou"] == 1.0
    track = track_figures([np.ones((1, 1, 4, 4)), -np.ones((1, 1, 4, 4))], [np.ones((1, 1, 4, 4)), np.ones((1, 1, 4, 4))])
    assert track["track_iou_per_frame"] == [1.0, 0.0] and track["track_iou"] == 0.0


# --- settings, gate, ladder ----------------------------------------------------------------------------

def test_settings_from_a_target_table():
    settings = QuantSettings.from_dict({"method": "percentile", "percentile": 99.9, "keep_float": ["Softmax"],
                                        "samples": 4, "gate": {"min_sqnr_db": 25},
                                        "components": {"text_encoder": {"method": "entropy"}}})
    assert settings.gate.min_sqnr_db == 25 and settings.gate.min_cosine == 0.99
    assert settings.for_component("text_encoder").method == "entropy"
    assert settings.for_component("vision_encoder").method == "percentile"
    assert settings.to_dict()["gate"]["min_sqnr_db"] == 25
    for table, expected in (({"methd": "minmax"}, "unknown key 'methd'"), ({"method": "kl"}, "method = 'kl'"),
                            ({"gate": {"min_sqnr": 3}}, "unknown key 'min_sqnr'"),
                            ({"gate": {"min_sqnr_db": "high"}}, "expected a number"),
                            ({"samples": 0}, "positive integer"), ({"block_size": 100}, "power of two"),
                            ({"mixed_headroom_db": -1}, "mixed_headroom_db = -1: expected >= 0"),
                            ({"components": {"x": {"samples": -1}}}, "positive integer")):
        with pytest.raises(ToolkitError, match=expected.replace("(", r"\(").replace("[", r"\[")):
            QuantSettings.from_dict(table)


def test_ladders_are_data():
    assert ladder("ort", "int8") == ["int8", "int8-weights", "mixed-weights", "int16-weights", "fp32"]
    assert ladder("tensorrt", "int8") == ["int8", "fp16", "fp32"]
    assert ladder("coreml", "palette4") == ["palette4", "palette6", "int8-weights", "fp16", "fp32"]
    assert ladder("ptl", "int8") == ["int8", "int8-weights", "fp32"]
    with pytest.raises(ToolkitError, match="not available for format tensorrt"):
        ladder("tensorrt", "int8-weights")


def test_ladder_steps_down_with_the_reason(convnet_onnx, mlp_onnx, tmp_path):
    """A gate int8 cannot meet sends the component down the ladder; each step says why."""
    calibration, evaluation = _feeds((1, 3, 16, 16), 4, 0), _feeds((1, 3, 16, 16), 2, 1)

    def attempt(precision):
        result = quantize_onnx(convnet_onnx, tmp_path / f"{precision}.onnx", precision, QuantSettings(),
                               lambda: iter(calibration))
        return result, _measure(convnet_onnx, result.path, evaluation)["figures"]

    strict = Gate(min_sqnr_db=200.0)  # only an exact copy passes
    result = choose_precision("convnet", "ort", "int8", attempt, strict)
    assert result.chosen == "fp32"
    assert [r.precision for r in result.rungs] == ["int8", "int8-weights", "mixed-weights", "int16-weights", "fp32"]
    assert not result.rungs[0].passed and "(min_sqnr_db)" in result.rungs[0].failures[0]
    assert result.rungs[0].figures["sqnr_db"] < 200
    # int8-weights (dynamic, on the token MLP's Gemms), mixed-weights and int16-weights cannot be exact either
    assert len(result.steps) == 4 and result.steps[0].startswith("convnet: int8 -> int8-weights: sqnr_db ")
    assert result.steps[2].startswith("convnet: mixed-weights -> int16-weights: sqnr_db ")
    assert result.to_dict()["chosen"] == "fp32" and result.to_dict()["rungs"][0]["figures"]

    reachable = Gate(min_sqnr_db=20.0, min_cosine=0.99)
    passed = choose_precision("convnet", "ort", "int8", attempt, reachable)
    assert passed.chosen == "int8" and passed.steps == [] and passed.artifact.precision == "int8"

    # a quantizer that cannot make a precision is a reason to step down too (a graph without weights)
    class NoWeights(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2.0
    path = tmp_path / "plain.onnx"
    _export(NoWeights().eval(), (1, 3, 8, 8), path, ["y"])

    def weights_only(precision):
        result = quantize_onnx(path, tmp_path / f"c-{precision}.onnx", precision, feeds=_feeds((1, 3, 8, 8), 1, 0))
        return result, {"sqnr_db": 300.0}
    down = choose_precision("plain", "ort", "int8-weights", weights_only, reachable)
    assert down.chosen == "fp32" and "with constant weights: weight-only int8 would change nothing" in down.steps[0]
    assert "mixed weights would change nothing" in down.steps[1]
    assert "16-bit weights would change nothing" in down.steps[2]


def test_settle_end_to_end_steps_the_most_sensitive_component():
    measured = []

    def measure(precisions):
        measured.append(dict(precisions))
        # passes once the fusion encoder is off int8
        return {"matched_fraction": 1.0 if precisions["fusion_encoder"] != "int8" else 0.5}
    final, history = settle_end_to_end({"vision_encoder": "int8", "fusion_encoder": "int8"},
                                       {"vision_encoder": "ort", "fusion_encoder": "ort"},
                                       {"vision_encoder": 31.0, "fusion_encoder": 18.0}, measure, Gate())
    assert final == {"vision_encoder": "int8", "fusion_encoder": "int8-weights"}
    assert "fusion_encoder: int8 -> int8-weights: end to end matched_fraction 0.5 < 0.8" in history[0]["step"]
    assert not history[-1]["failures"] and len(measured) == 2


def test_settle_end_to_end_steps_down_only_behind_a_failing_figure():
    from toolkit.quantize.session import components_behind

    def measure(precisions):  # the detector fails until the fusion decoder leaves int8; the tracker passes
        return {"matched_fraction": 0.5 if precisions["fusion_decoder"] == "int8" else 1.0, "track_iou": 1.0}
    # the prompt encoder (tracker only) is the least accurate alone, but cannot mend the detector's figure
    final, history = settle_end_to_end({"prompt_encoder": "int8", "fusion_decoder": "int8"},
                                       {"prompt_encoder": "ort", "fusion_decoder": "ort"},
                                       {"prompt_encoder": 21.0, "fusion_decoder": 25.0}, measure, Gate(),
                                       behind=components_behind)
    assert final == {"prompt_encoder": "int8", "fusion_decoder": "int8-weights"}
    assert history[0]["step"].startswith("fusion_decoder: int8 -> int8-weights") and len(history) == 2
    assert "prompt_encoder" not in components_behind("matched_fraction") and components_behind("nope") == ()


# --- ONNX Runtime stages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_ort_static_int8_qdq_per_channel(convnet_onnx, tmp_path, method):
    result = quantize_onnx(convnet_onnx, tmp_path / "q.onnx", "int8", QuantSettings(method=method),
                           lambda: iter(_feeds((1, 3, 16, 16), 4, 0)))
    assert result.operators["QuantizeLinear"] > 0 and result.operators["DequantizeLinear"] > 0
    summary = qdq_summary(result.path)
    assert summary["per_channel"] > 0 and summary["zero_point_types"].get("UINT8", 0) > 0
    assert result.settings["samples"] == 4 and result.settings["calibration"] == method
    figures = _measure(convnet_onnx, result.path, _feeds((1, 3, 16, 16), 2, 1))["figures"]
    assert figures["sqnr_db"] > 25 and figures["cosine"] > 0.995
    assert result.to_dict()["file"] == "q.onnx"


@pytest.mark.parametrize("method,calibrater", [("minmax", "MinMaxCalibrater"), ("entropy", "HistogramCalibrater")])
def test_ort_calibration_is_streamed_sample_by_sample(convnet_onnx, tmp_path, monkeypatch, method, calibrater):
    """The calibrator reduces after every sample (memory: one sample's activations), not after all."""
    from onnxruntime.quantization import calibrate
    calls = []
    cls = getattr(calibrate, calibrater)
    original = cls.collect_data

    def counting(self, reader):
        before = len(self.intermediate_outputs)
        original(self, reader)
        calls.append(before)
    monkeypatch.setattr(cls, "collect_data", counting)
    from toolkit.quantize.ort import _quantize_onnx  # in this process (quantize_onnx forks), to count the calls
    result = _quantize_onnx(convnet_onnx, tmp_path / "q.onnx", "int8", QuantSettings(method=method),
                            lambda: iter(_feeds((1, 3, 16, 16), 5, 0)), "ort")
    assert len(calls) == 5 and calls == [0] * 5 and result.settings["samples"] == 5
    with pytest.raises(QuantizeError, match="feeds are empty"):
        quantize_onnx(convnet_onnx, tmp_path / "e.onnx", "int8", QuantSettings(method=method), lambda: iter([]))


def test_ort_keep_float_excludes_operator_types(convnet_onnx, tmp_path):
    result = quantize_onnx(convnet_onnx, tmp_path / "q.onnx", "int8", QuantSettings(keep_float=("Gemm", "MatMul")),
                           lambda: iter(_feeds((1, 3, 16, 16), 2, 0)))
    model = onnx.load(str(result.path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    kept = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert kept and all(n.input[1] in floats for n in kept)  # float weights: computed in float
    assert any(n.op_type == "Conv" for n in model.graph.node) and qdq_summary(model)["per_channel"] > 0
    assert result.kept_float == ["Gemm", "MatMul"] and result.settings["nodes_kept_float"] > 0


def test_ort_static_int8_quantizes_the_weighted_layers_unless_told_all(convnet_onnx, tmp_path):
    feeds = lambda: iter(_feeds((1, 3, 16, 16), 2, 0))  # noqa: E731
    weighted = quantize_onnx(convnet_onnx, tmp_path / "w.onnx", "int8", QuantSettings(), feeds)
    every = quantize_onnx(convnet_onnx, tmp_path / "a.onnx", "int8", QuantSettings(operators="all"), feeds)
    assert weighted.settings["op_types_to_quantize"] == ["Conv", "ConvTranspose", "MatMul", "Gemm"]
    assert every.settings["op_types_to_quantize"] == "all"

    def quantized_outputs(path):  # operator types whose output a QuantizeLinear reads
        model = onnx.load(str(path))
        q = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        return {n.op_type for n in model.graph.node if any(o in q for o in n.output)}
    # (Relu, Reshape: the quantizer carries a quantized tensor through them in both)
    assert "Conv" in quantized_outputs(weighted.path) and not {"Add", "Softmax"} & quantized_outputs(weighted.path)
    assert {"Add", "Softmax"} <= quantized_outputs(every.path)
    with pytest.raises(ToolkitError, match="operators = 'some'"):
        QuantSettings.from_dict({"operators": "some"})


class Attention(nn.Module):
    """One attention head: weighted projections and two products of activations."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x):
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 32 ** 0.5, dim=-1)
        return (weights @ self.v(x),)


def test_ort_weighted_int8_leaves_products_of_activations_in_float(tmp_path):
    torch.manual_seed(3)
    src = tmp_path / "attention.onnx"
    _export(Attention().eval(), (1, 16, 32), src, ["y"])
    feeds = lambda: iter(_feeds((1, 16, 32), 4, 0))  # noqa: E731

    def quantized_inputs(path):  # per MatMul / Gemm (the projections export as Gemm): inputs read from a DQ
        model = onnx.load(str(path))
        dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return [(n.op_type, sum(i in dq for i in n.input)) for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    weighted = quantize_onnx(src, tmp_path / "w.onnx", "int8", QuantSettings(), feeds)
    every = quantize_onnx(src, tmp_path / "a.onnx", "int8", QuantSettings(operators="all"), feeds)
    assert weighted.settings["activation_products_kept_float"] == 2
    assert every.settings["activation_products_kept_float"] == 0
    assert quantized_inputs(weighted.path) == [("Gemm", 3)] * 3 + [("MatMul", 0)] * 2
    assert quantized_inputs(every.path) == [("Gemm", 3)] * 3 + [("MatMul", 2)] * 2
    evaluation = _feeds((1, 16, 32), 2, 5)
    assert _measure(src, weighted.path, evaluation)["figures"]["sqnr_db"] > 20


def test_tensorrt_explicit_quantization(convnet_onnx, tmp_path):
    result = quantize_onnx(convnet_onnx, tmp_path / "trt.onnx", "int8", QuantSettings(),
                           lambda: iter(_feeds((1, 3, 16, 16), 4, 0)), flavour="tensorrt")
    summary = result.settings["qdq"]
    assert set(summary["zero_point_types"]) == {"INT8"} and summary["nonzero_zero_points"] == 0
    assert summary["per_channel"] > 0 and result.format == "tensorrt"
    model = onnx.load(str(result.path))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    # Q/DQ exist only for the layers TensorRT runs in int8: every activation DQ feeds one of them,
    # and no weighted layer's output is quantized
    weighted = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert set(consumers.get(node.output[0], [])) & weighted
        if node.op_type == "QuantizeLinear":
            assert producers.get(node.input[0]) not in weighted
    figures = _measure(convnet_onnx, result.path, _feeds((1, 3, 16, 16), 2, 1))["figures"]
    assert figures["sqnr_db"] > 25
    with pytest.raises(QuantizeError, match="no weight-only int8"):
        quantize_onnx(convnet_onnx, tmp_path / "w.onnx", "int8-weights", flavour="tensorrt")


def test_ort_weight_only_int8_and_int4_and_fp16(mlp_onnx, tmp_path):
    evaluation = _feeds((1, 4, 128), 3, 2)  # 3-D tokens: MatMul, as the dynamo export of the encoders
    dynamic = quantize_onnx(mlp_onnx, tmp_path / "w8.onnx", "int8-weights")
    assert "MatMulInteger" in dynamic.operators and "DynamicQuantizeLinear" in dynamic.operators
    assert dynamic.size_bytes < 0.4 * dynamic.source_bytes
    assert _measure(mlp_onnx, dynamic.path, evaluation)["figures"]["sqnr_db"] > 30
    nbits = quantize_onnx(mlp_onnx, tmp_path / "w4.onnx", "int4-weights", QuantSettings(block_size=32))
    assert nbits.operators.get("com.microsoft.MatMulNBits") == 2 and nbits.size_bytes < 0.25 * nbits.source_bytes
    assert 12 < _measure(mlp_onnx, nbits.path, evaluation)["figures"]["sqnr_db"] < 40
    half = quantize_onnx(mlp_onnx, tmp_path / "fp16.onnx", "fp16")
    assert "Cast" in half.operators and half.size_bytes < 0.6 * half.source_bytes
    assert _measure(mlp_onnx, half.path, evaluation)["figures"]["sqnr_db"] > 50
    session = ort.InferenceSession(str(half.path))
    assert session.get_inputs()[0].type == "tensor(float)"  # fp32 I/O kept


class ConvGemm(nn.Module):
    """Convolutions (the vision encoder's and tracker neck's kinds: plain, depthwise, transposed) and a
    2-D Linear (exported as Gemm: dynamic int8, as MatMul)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 128, 3, padding=1)
        self.depthwise = nn.Conv2d(128, 128, 3, padding=1, groups=128)
        self.up = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.head = nn.Linear(128, 32)

    def forward(self, x):
        y = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.up(y), self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def convgemm_onnx(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("onnx") / "convs.onnx"
    _export(ConvGemm().eval(), (1, 3, 16, 16), path, ["y", "z"])
    return path


def _weights_behind_dequantize(result):
    """The DequantizeLinear nodes of a quantized graph, their stored weights and their scales."""
    model = onnx.load(str(result.path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return nodes, [inits[n.input[0]] for n in nodes], sorted(tuple(inits[n.input[1]].dims) for n in nodes)


def _as_ort(src, result, tmp_path, output, feeds):
    """.ort of the quantized graph and of its source: size ratio, required operators, SQNR of `output`."""
    from toolkit.convert.ort_mobile import convert_to_ort
    converted = convert_to_ort({"q": result.path, "f": src}, tmp_path / "ort")
    ratio = converted.files["q"].stat().st_size / converted.files["f"].stat().st_size
    sqnr = tensor_figures(OrtRunner(src).infer(feeds)[output], OrtRunner(converted.files["q"]).infer(feeds)[output])
    return ratio, converted.config.read_text(), sqnr["sqnr_db"]


def test_ort_int8_weights_of_convolutions_dequantize_to_float_compute(convgemm_onnx, tmp_path):
    src = convgemm_onnx
    result = quantize_onnx(src, tmp_path / "w8.onnx", "int8-weights")
    dequantize, stored, scales = _weights_behind_dequantize(result)
    assert result.settings["dequantized_weights"] == 3 and len(dequantize) == 3
    assert "MatMulInteger" in result.operators  # the Gemm, rewritten by quantize_dynamic
    assert all(w.data_type == onnx.TensorProto.INT8 for w in stored)
    assert scales == [(64,), (128,), (128,)]  # per output channel; ConvTranspose's is its axis 1
    assert not {"ConvInteger", "QLinearConv"} & set(result.operators)  # float compute
    assert result.size_bytes < 0.4 * result.source_bytes
    evaluation = _feeds((1, 3, 16, 16), 3, 4)
    assert _measure(src, result.path, evaluation)["figures"]["sqnr_db"] > 35
    # ONNX Runtime's converter keeps the DequantizeLinear (it does not fold the weights back to float)
    ratio, config, sqnr = _as_ort(src, result, tmp_path, "y", evaluation[0])
    assert ratio < 0.4 and "DequantizeLinear" in config and sqnr > 35


def test_ort_int16_weights_of_every_weighted_layer_halve_the_file_near_lossless(convgemm_onnx, tmp_path):
    src = convgemm_onnx  # opset 17: ONNX's DequantizeLinear has no int16 before 21, com.microsoft's has
    result = quantize_onnx(src, tmp_path / "w16.onnx", "int16-weights")
    dequantize, stored, scales = _weights_behind_dequantize(result)
    assert result.settings["dequantized_weights"] == 4 and len(dequantize) == 4  # 3 convolutions + the Gemm
    assert all(n.domain == "com.microsoft" for n in dequantize)
    assert all(w.data_type == onnx.TensorProto.INT16 for w in stored)
    assert scales == [(32,), (64,), (128,), (128,)]
    assert {"Conv", "ConvTranspose", "Gemm"} <= set(result.operators)  # float compute
    assert 0.45 * result.source_bytes < result.size_bytes < 0.55 * result.source_bytes
    evaluation = _feeds((1, 3, 16, 16), 3, 4)
    # 16-bit per-channel rounding is about 2**-16 of each channel's range: ~90 dB measured
    assert _measure(src, result.path, evaluation)["figures"]["sqnr_db"] > 70
    # kept behind the DequantizeLinear (folded back to float it would be the fp32 file's size; biases stay float)
    ratio, config, sqnr = _as_ort(src, result, tmp_path, "z", evaluation[0])
    assert ratio < 0.6 and "com.microsoft;1;DequantizeLinear" in config and sqnr > 70


class Sensitive(nn.Module):
    """Three convolutions whose int8 rounding matters unequally: the largest (`faint`, 1600 weights)
    adds a thousandth of its output to the result, so its rounding is about 60 dB below the others'."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)  # 216 weights
        self.second = nn.Conv2d(8, 8, 3, padding=1)  # 576
        self.faint = nn.Conv2d(8, 8, 5, padding=2)  # 1600

    def forward(self, x):
        h = torch.relu(self.first(x))
        return self.second(h) + 1e-3 * self.faint(h)


@pytest.fixture(scope="module")
def sensitive_onnx(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("onnx") / "sensitive.onnx"
    _export(Sensitive().eval(), (1, 3, 16, 16), path, ["y"])
    return path


def test_ort_mixed_weights_store_int8_where_the_outputs_tolerate_it(sensitive_onnx, tmp_path):
    calibration, evaluation = _feeds((1, 3, 16, 16), 3, 5), _feeds((1, 3, 16, 16), 2, 6)
    # each weight alone at int8 leaves about 40-50 dB (`faint`: about 100); every one at int16 about 90:
    # a 60 dB target can only be met by `faint` at int8 and the two others at int16
    settings = QuantSettings(gate=Gate(min_sqnr_db=54.0), mixed_headroom_db=6.0)
    result = quantize_onnx(sensitive_onnx, tmp_path / "mixed.onnx", "mixed-weights", settings, calibration)
    dequantize, stored, _ = _weights_behind_dequantize(result)
    widths = {tuple(w.dims): w.data_type for w in stored}  # by shape: ONNX Runtime's folding renames `faint`'s
    assert widths == {(8, 8, 5, 5): onnx.TensorProto.INT8, (8, 3, 3, 3): onnx.TensorProto.INT16,
                      (8, 8, 3, 3): onnx.TensorProto.INT16}
    used = result.settings
    assert (used["int8_weights"], used["int16_weights"], used["target_sqnr_db"]) == (1, 2, 60.0)
    assert used["int8_parameter_share"] == round(1600 / 2392, 4) and used["calibration_sqnr_db"] >= 60
    assert _measure(sensitive_onnx, result.path, evaluation)["figures"]["sqnr_db"] > 60  # held-out feeds
    # a low target takes every weight to int8; one no weight meets is a reason to step down the ladder
    low = quantize_onnx(sensitive_onnx, tmp_path / "low.onnx", "mixed-weights", QuantSettings(), calibration)
    assert low.settings["int8_weights"] == 3
    with pytest.raises(QuantizeError, match="no weight can be int8"):
        quantize_onnx(sensitive_onnx, tmp_path / "high.onnx", "mixed-weights",
                      QuantSettings(gate=Gate(min_sqnr_db=150.0)), calibration)
    with pytest.raises(QuantizeError, match="needs calibration feeds"):
        quantize_onnx(sensitive_onnx, tmp_path / "none.onnx", "mixed-weights")
    assert not (tmp_path / "high.onnx").exists()


class Encoded(nn.Module):
    """A convolution plus a position encoding computed in the graph (1 MiB once ONNX Runtime folds it),
    as the vision encoder and mask decoder add theirs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 1)

    def forward(self, x):
        steps = torch.arange(256 * 32 * 32, dtype=torch.float32, device=x.device).reshape(1, 256, 32, 32)
        return self.conv(x) + torch.sin(steps * 0.01) + x.mean() * 0


def test_ort_quantized_graphs_store_large_constants_at_the_weight_width(tmp_path):
    torch.manual_seed(4)
    src = tmp_path / "encoded.onnx"
    _export(Encoded().eval(), (1, 3, 32, 32), src, ["y"], do_constant_folding=False)
    assert not any(4 * np.prod(i.dims) >= 1 << 20 for i in onnx.load(str(src)).graph.initializer)  # computed
    evaluation = _feeds((1, 3, 32, 32), 2, 7)
    # int16 rungs: about 90 dB; 8-bit ones: a sinusoid at 8 bits per tensor keeps about 48 dB
    calibration = _feeds((1, 3, 32, 32), 2, 8)
    for precision, bits, domain, floor in (("int16-weights", 16, "com.microsoft", 70), ("int8", 8, "", 25),
                                           ("mixed-weights", 8, "", 25)):
        result = quantize_onnx(src, tmp_path / f"{precision}.onnx", precision, feeds=calibration)
        model = onnx.load(str(result.path))
        inits = {i.name: i for i in model.graph.initializer}
        encoding = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] in inits and tuple(inits[n.input[0]].dims) == (1, 256, 32, 32)]
        assert len(encoding) == 1 and encoding[0].domain == domain, precision  # folded, then narrowed
        assert inits[encoding[0].input[0]].data_type == {8: onnx.TensorProto.INT8, 16: onnx.TensorProto.INT16}[bits]
        assert result.settings["narrowed_constants"] == {"count": 1, "bits": bits,
                                                         "bytes_saved": (4 - bits // 8) * 256 * 32 * 32}
        assert any(f"large float constants stored int{bits}" in note for note in result.notes)
        assert _measure(src, result.path, evaluation)["figures"]["sqnr_db"] > floor, precision
    # mixed-weights' search measured its probes, narrow constant included, against the fp32 graph
    searched = _measure(src, result.path, calibration)["figures"]["sqnr_db"]
    assert result.settings["calibration_sqnr_db"] == pytest.approx(searched, abs=0.05)
    # the .ort conversion keeps the constant narrow (the fp32 graph's .ort holds it folded, float)
    ratio, config, sqnr = _as_ort(src, result, tmp_path, "y", evaluation[0])
    assert ratio < 0.4 and "DequantizeLinear" in config and sqnr > 25


def test_ort_mobile_conversion_of_a_quantized_graph(convnet_onnx, mlp_onnx, tmp_path):
    from toolkit.convert.ort_mobile import convert_to_ort
    static = quantize_onnx(convnet_onnx, tmp_path / "static.onnx", "int8", feeds=_feeds((1, 3, 16, 16), 2, 0))
    dynamic = quantize_onnx(mlp_onnx, tmp_path / "dynamic.onnx", "int8-weights")
    converted = convert_to_ort({"static": static.path, "dynamic": dynamic.path}, tmp_path / "ort")
    config = converted.config.read_text()
    # the 'Fixed' optimisation fuses Q/DQ into ONNX Runtime's int8 kernels: those are what a
    # reduced-operator build must contain
    for op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "DynamicQuantizeMatMul"):
        assert op in config
    feeds = _feeds((1, 3, 16, 16), 1, 3)[0]
    got = OrtRunner(converted.files["static"]).infer(feeds)
    ref = OrtRunner(convnet_onnx).infer(feeds)
    assert tensor_figures(ref["features"], got["features"])["sqnr_db"] > 25


# --- calibration feeds ---------------------------------------------------------------------------------------

def test_recorder_streams_distinct_feeds_to_disk_and_back(convnet_onnx, tmp_path):
    torch.manual_seed(0)
    runner = TorchRunner(ConvNet().eval(), ["x"], ["probs", "features"])
    store = FeedStore(tmp_path / "feeds")
    recorder = FeedRecorder(store, limit=3)
    wrapped = RecordingRunner(runner, "convnet", recorder)
    feeds = _feeds((1, 3, 16, 16), 5, 0)
    for f in (feeds[0], feeds[0], *feeds[1:]):  # a repeated call is stored once
        out = wrapped.infer(f)
        assert set(out) == {"probs", "features"}
    assert store.count("convnet") == 3
    assert recorder.summary() == {"convnet": {"recorded": 3, "dropped": 2}}
    back = list(store.iter("convnet"))
    assert [np.array_equal(b["x"], f["x"]) for b, f in zip(back, feeds)] == [True] * 3
    # the store is a feed source for the quantizers
    result = quantize_onnx(convnet_onnx, tmp_path / "q.onnx", "int8", feeds=lambda: store.iter("convnet"))
    assert result.settings["samples"] == 3
    with pytest.raises(ToolkitError, match="no calibration feeds recorded for text_encoder"):
        next(store.iter("text_encoder"))


# --- Core ML ----------------------------------------------------------------------------------------------------

def _specs():
    from toolkit.components.spec import TensorSpec
    inputs = (TensorSpec("x", (1, 3, 16, 16), "float32", "image"),)
    outputs = (TensorSpec("probs", (1, 256, 16), "float32", "tokens"),
               TensorSpec("features", (1, 16, 16, 16), "float32", "features"))
    return inputs, outputs


@pytest.mark.parametrize("precision,ops", [("int8", {"quantize", "dequantize", "constexpr_affine_dequantize"}),
                                           ("int8-weights", {"constexpr_affine_dequantize"}),
                                           ("palette4", {"constexpr_lut_to_dense"})])
def test_coreml_stages(tmp_path, precision, ops):
    torch.manual_seed(0)
    graph = ConvNet().eval()
    inputs, outputs = _specs()
    calibration, evaluation = _feeds((1, 3, 16, 16), 4, 0), _feeds((1, 3, 16, 16), 2, 1)
    result = quantize_coreml_stage(graph, inputs, outputs, calibration, tmp_path / f"{precision}.mlpackage", precision)
    assert ops <= set(result.operators), result.operators
    assert result.path.is_dir() and result.size_bytes > 0
    from toolkit.quantize.evaluate import measure_component
    figures = measure_component(TorchRunner(graph, ["x"], ["probs", "features"]),
                                TorchRunner(result.simulation, ["x"], ["probs", "features"]), evaluation)["figures"]
    floor = {"int8": 20, "int8-weights": 35, "palette4": 12}[precision]
    assert figures["sqnr_db"] > floor and figures["sqnr_db"] < 300  # quantized, not a copy


def quantize_coreml_stage(graph, inputs, outputs, feeds, dst, precision):
    from toolkit.quantize.coreml import quantize_coreml
    return quantize_coreml(graph, inputs, outputs, feeds[0], dst, precision, feeds=feeds)


# --- TorchScript lite --------------------------------------------------------------------------------------------

class FxConvNet(nn.Module):
    """What FX static quantization takes: modules and functional calls, no data-dependent flow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv(x)))
        return (self.fc(y.mean((2, 3))),)


class Branchy(FxConvNet):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
            return (self.fc(self.conv2(self.conv(x)).mean((2, 3))),)
        return (self.fc(self.conv2(self.conv(-x)).mean((2, 3))),)


def test_ptl_int8_runs_in_the_lite_interpreter(tmp_path):
    from toolkit.quantize.ptl import quantize_ptl, use_qnnpack
    from toolkit.runners.ptl_runner import PtlRunner
    torch.manual_seed(0)
    graph = FxConvNet().eval()
    calibration, evaluation = _feeds((1, 3, 16, 16), 8, 0), _feeds((1, 3, 16, 16), 3, 1)
    result = quantize_ptl(graph, ["x"], ["y"], calibration[0], tmp_path / "int8.ptl", "int8", feeds=calibration)
    assert any(k.startswith("quantized::conv2d") for k in result.operators), result.operators
    with use_qnnpack():
        runner = PtlRunner(result.path)
        from toolkit.quantize.evaluate import measure_component
        figures = measure_component(TorchRunner(graph, ["x"], ["y"]), runner, evaluation)["figures"]
    assert 15 < figures["sqnr_db"] < 300

    mlp = Mlp().eval()
    dynamic = quantize_ptl(mlp, ["x"], ["y"], {"x": np.zeros((4, 128), np.float32)}, tmp_path / "w8.ptl",
                           "int8-weights")
    assert any(k.startswith("quantized::linear_dynamic") for k in dynamic.operators), dynamic.operators
    with use_qnnpack():
        figures = measure_component(TorchRunner(mlp, ["x"], ["y"]), PtlRunner(dynamic.path), _feeds((4, 128), 2, 3))
    assert figures["figures"]["sqnr_db"] > 30

    with pytest.raises(QuantizeError, match="torch.fx cannot trace"):
        quantize_ptl(Branchy().eval(), ["x"], ["y"], calibration[0], tmp_path / "b.ptl", "int8", feeds=calibration)


# --- the real pipelines (full size) ------------------------------------------------------------------------------

@pytest.mark.full
def test_calibration_feeds_from_the_real_pipelines(tmp_path):
    """The fp32 detector and tracker pipelines over the shipped calibration part (1 sample): every
    component's real inputs are recorded, the vision encoder once per distinct frame."""
    from toolkit.checkpoint.weights import synthetic_state_dict
    from toolkit.components.registry import COMPONENTS
    from toolkit.pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
    from toolkit.quantize.feeds import record_feeds, torch_runners
    from toolkit.verify.compare import Reference
    cal = CalibrationSet.load()
    names = sorted(set(DETECTOR_COMPONENTS) | set(TRACKER_COMPONENTS))
    runners = torch_runners(Reference(synthetic_state_dict(), golden=False).graphs, names)
    store, summary = record_feeds(runners, cal, tmp_path / "feeds", samples=1)
    assert set(store.components()) == set(names)
    for name in names:
        sample = next(store.iter(name))
        assert set(sample) == set(COMPONENTS[name].input_names)
    assert summary["vision_encoder"]["recorded"] == 1 and summary["vision_encoder"]["dropped"] >= 1
    fusion = next(store.iter("fusion_encoder"))
    assert fusion["image_features"].shape == (1, 256, 72, 72) and fusion["prompt"].shape[1:] == (1, 256)
    memory = next(store.iter("memory_attention"))
    assert memory["memory"].shape[0] >= 1 and np.abs(memory["memory"]).max() > 0


# --- the sensitivity report ----------------------------------------------------------------------------------------

def test_sensitivity_report(convnet_onnx, tmp_path):
    from toolkit.quantize.report import op_type_sensitivity, quantizable_op_types, write_report
    calibration, evaluation = _feeds((1, 3, 16, 16), 4, 0), _feeds((1, 3, 16, 16), 2, 1)
    types = set(quantizable_op_types(convnet_onnx))
    assert {"Conv", "Softmax"} <= types and {"MatMul", "Gemm"} & types
    rows = op_type_sensitivity(convnet_onnx, lambda: iter(calibration), lambda: iter(evaluation))
    by_type = {r["op_type"]: r for r in rows}
    assert by_type["Conv"]["nodes"] == 2 and 20 < by_type["Conv"]["sqnr_db"] < 300
    # an operator type quantized only after a quantized input is a row that says so, not a perfect score
    assert by_type["Relu"] == {"op_type": "Relu", "nodes": 1, "error": "not quantized on its own"}
    sqnrs = [r["sqnr_db"] for r in rows if "sqnr_db" in r]
    assert sqnrs == sorted(sqnrs)  # worst first

    def attempt(precision):
        result = quantize_onnx(convnet_onnx, tmp_path / f"{precision}.onnx", precision, feeds=lambda: iter(calibration))
        return result, _measure(convnet_onnx, result.path, evaluation)["figures"]
    ladder = choose_precision("convnet", "ort", "int8", attempt, Gate(min_sqnr_db=200.0))
    md, png = write_report([ladder], tmp_path / "report", {"convnet": rows})
    text = md.read_text()
    assert "| convnet | ort | int8 |  |" in text and "(min_sqnr_db)" in text and "| convnet | ort | fp32 | **yes** |" in text
    assert "| Conv | 2 |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 100


def _crash():
    import os
    import signal
    os.kill(os.getpid(), signal.SIGSEGV)


def _refuse(message):
    raise ValueError(message)


def test_a_quantizer_crash_is_a_reason_to_step_down_not_the_end_of_the_build():
    from toolkit.quantize.stage import isolated
    with pytest.raises(QuantizeError, match=r"the quantizer crashed \(signal SIGSEGV\) in _crash"):
        isolated(_crash)
    with pytest.raises(QuantizeError, match="ValueError: no way"):
        isolated(_refuse, "no   way")
    assert isolated(sorted, [3, 1, 2]) == [1, 2, 3]


def _reserve(nbytes):
    return np.empty(nbytes, dtype=np.uint8).nbytes  # address space only: no page is touched


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="the ceiling reads Linux's /proc/meminfo")
def test_a_quantizer_child_that_would_exhaust_memory_fails_inside_itself():
    from toolkit.quantize.stage import _available_bytes, isolated
    available = _available_bytes()
    # without the ceiling the kernel grants this untouched reservation (overcommit); with it, the child
    # cannot map more than 80 % of what was available, and says so instead of meeting the OOM killer
    with pytest.raises(QuantizeError, match="out of memory: needed more than 80% of the memory available"):
        isolated(_reserve, available)
    assert isolated(_reserve, 64 << 20) == 64 << 20


def test_a_quantized_graph_is_run_on_the_evaluation_feeds_in_the_quantizer_process(convnet_onnx, tmp_path):
    result = quantize_onnx(convnet_onnx, tmp_path / "q.onnx", "int8", QuantSettings(),
                           lambda: iter(_feeds((1, 3, 16, 16), 2, 0)), runs_on=lambda: iter(_feeds((1, 3, 16, 16), 3, 1)))
    assert "ran on 3 evaluation samples in the quantizer's process first" in result.notes
    with pytest.raises(QuantizeError, match="RuntimeError|INVALID_ARGUMENT|Fail"):  # a feed the graph cannot take
        quantize_onnx(convnet_onnx, tmp_path / "b.onnx", "int8", QuantSettings(),
                      lambda: iter(_feeds((1, 3, 16, 16), 2, 0)), runs_on=[{"x": np.zeros((1, 5), np.float32)}])


def test_the_gate_runs_the_fp32_reference_once_per_component(convnet_onnx, tmp_path):
    """Every rung of a ladder, and the verification of the chosen file, compare with the reference outputs
    computed on the first measurement (the PyTorch reference per rung cost ~2 min of the android build)."""
    from toolkit.quantize.session import Calibration
    evaluation = _feeds((1, 3, 16, 16), 3, 5)
    calibration = Calibration(QuantSettings(samples=3), ["convnet"], None, work=tmp_path / "work")
    store = FeedStore(tmp_path / "evaluation")
    for index, feed in enumerate(evaluation):
        store.add("convnet", index, feed)
    calibration._stores["evaluation"] = store  # as recorded by the fp32 pipelines (which a tiny graph has not)

    class Counting(OrtRunner):
        calls = 0

        def infer(self, feeds):
            Counting.calls += 1
            return super().infer(feeds)
    reference = Counting(convnet_onnx)
    quantized = quantize_onnx(convnet_onnx, tmp_path / "w8.onnx", "int8-weights")
    first = calibration.alone("convnet", reference, OrtRunner(quantized.path))
    again = calibration.alone("convnet", reference, OrtRunner(convnet_onnx))
    assert Counting.calls == 3 and first["samples"] == again["samples"] == 3
    assert first["figures"] == _measure(convnet_onnx, quantized.path, evaluation)["figures"]
    assert again["figures"]["max_abs"] == 0.0  # the fp32 graph against its own stored outputs
