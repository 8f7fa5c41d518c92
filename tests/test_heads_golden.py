"""Scoring, segmentation head, post-processing and the assembled Detector against the golden outputs.

The full-model tests run the three image-path cases once (module fixture) through `Detector`
with the stage recorder, and compare every recorded stage with the fixture as it is recorded,
so that only the comparison results are kept in memory.
"""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolkit.checkpoint.weights import synthetic_state_dict
from toolkit.model.detector import Detector, detections
from toolkit.model.scoring import DotProductScoring
from toolkit.pipeline.postprocess import postprocess_grounding, resize_bilinear
from toolkit.pipeline.preprocess import load_rgb, preprocess_image
from toolkit.pipeline.tokenizer import Tokenizer
from toolkit.verify.golden import (
    check_stage,
    compare_tensor,
    golden_path,
    load_stage,
    manifest,
    stage_tensor,
)

IMAGE_HW = (400, 600)
BOX = [0.5, 0.42, 0.46, 0.5]  # normalised cx, cy, w, h; positive
# case -> (text prompt, the case whose text stages it shares, box or None)
CASES = {
    "txt_person": ("person", "txt_person", None),
    "txt_red_cup": ("a red cup", "txt_red_cup", None),
    "txt_person_box": ("person", "txt_person", BOX),
}
IMAGE_STAGES = ["00_preprocess", "01_repvit_backbone", "02_trunk_with_head", "03_neck"]
TEXT_STAGES = ["04_tokenizer", "05a_text_transformer", "05b_text_projector", "05c_text_encoder",
               "05d_forward_text"]
HEAD_STAGES = ["09_scoring", "10_seg_head", "11_grounding_out", "12_postprocess"]
PROMPT_STAGES = ["06_geometry_encoder", "07_fusion_encoder", "08_decoder", *HEAD_STAGES]


def _text_prompt(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens and mask of a case, assembled from the golden text and geometry outputs."""
    text_case = CASES[case][1]
    prompt = np.concatenate(
        [stage_tensor(f"{text_case}__05d_forward_text", "out.language_features"),
         stage_tensor(f"{case}__06_geometry_encoder", "out.0")]
    )
    mask = np.concatenate(
        [stage_tensor(f"{text_case}__05d_forward_text", "out.language_mask"),
         stage_tensor(f"{case}__06_geometry_encoder", "out.1")], axis=1
    )
    return torch.from_numpy(prompt), torch.from_numpy(mask).bool()


@pytest.fixture(scope="module")
def scoring():
    model = DotProductScoring().eval()
    model.load_state_dict(synthetic_state_dict("detector.dot_prod_scoring."), strict=True)
    return model


@pytest.mark.parametrize("case", CASES)
def test_scoring_last_layer_from_golden_queries(scoring, case):
    """The last layer's queries are stored whole (grounding output `queries`): score them alone."""
    prompt, mask = _text_prompt(case)
    queries = torch.from_numpy(stage_tensor(f"{case}__11_grounding_out", "out.queries"))
    with torch.no_grad():
        logits = scoring(queries[None], prompt, mask)
    ref = stage_tensor(f"{case}__09_scoring", "out")[-1]
    np.testing.assert_allclose(logits[0].numpy(), ref, rtol=0, atol=1e-3 * np.abs(ref).max() + 1e-5)


@pytest.mark.parametrize("case", CASES)
def test_postprocess_scores_and_boxes_from_golden(case):
    """Scores and pixel boxes depend only on whole-stored grounding outputs."""
    out = load_stage(f"{case}__11_grounding_out")
    masks = np.zeros((1, 200, 2, 2), np.float32)  # masks are checked in the full-model test
    found = postprocess_grounding(out["out.pred_logits"], out["out.pred_boxes"], masks,
                                  out["out.presence_logit_dec"], IMAGE_HW, score_threshold=0.0)
    check_stage(f"{case}__12_postprocess", {f"out.{k}": found[k] for k in ("boxes_xyxy_px", "scores")},
                names=["out.boxes_xyxy_px", "out.scores"])


@pytest.mark.parametrize(
    "in_hw, out_hw", [((288, 288), (400, 600)), ((5, 7), (11, 3)), ((72, 72), (1008, 1008))]
)
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    x = torch.randn(3, *in_hw, generator=torch.Generator().manual_seed(0)) * 5
    ref = F.interpolate(x[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(resize_bilinear(x.numpy(), out_hw), ref.numpy(), rtol=0, atol=1e-5)


def test_postprocess_threshold_keeps_query_order():
    logits = np.array([[[3.0], [-3.0], [2.0], [0.3]]], np.float32)
    boxes = np.tile(np.array([0.5, 0.5, 0.2, 0.4], np.float32), (1, 4, 1))
    masks = np.stack([np.full((4, 4), v, np.float32) for v in (1.0, -1.0, -2.0, 2.0)])[None]
    found = postprocess_grounding(logits, boxes, masks, np.array([[10.0]], np.float32), (8, 10), 0.6)
    expected = 1 / (1 + np.exp(-np.array([3.0, 2.0]))) / (1 + np.exp(-10.0))
    np.testing.assert_allclose(found["scores"], expected, rtol=1e-6)
    np.testing.assert_allclose(found["boxes_xyxy_px"], [[4.0, 2.4, 6.0, 5.6]] * 2, rtol=1e-6)
    assert found["mask_probs"].shape == (2, 1, 8, 10) and found["masks"].dtype == bool
    assert found["masks"][0].all() and not found["masks"][1].any()


@pytest.fixture(scope="module")
def detector_state():
    return synthetic_state_dict("detector.")


@pytest.fixture(scope="module")
def detector(detector_state):
    model = Detector().eval()
    model.load_state_dict(detector_state, strict=True)
    return model


@pytest.fixture(scope="module")
def recorded(detector):
    """{manifest stage: {"names": recorded tensor names, "results": comparisons}}, three cases."""
    recorded, seconds = {}, {}

    def recorder(case):
        def record(stage, tensors):
            full = f"{case}__{stage}"
            stored = load_stage(full)
            expected = manifest()["stages"][full]["tensors"]
            results = [compare_tensor(full, n, tensors[n], stored) for n in expected if n in tensors]
            recorded[full] = {"names": sorted(tensors), "results": results}
        return record

    tokenizer = Tokenizer()
    with torch.no_grad():
        start = time.perf_counter()
        pixels = preprocess_image(load_rgb(golden_path("inputs", "coffee.png")))
        image = detector.encode_image(pixels, recorder("img"))
        seconds["image"] = time.perf_counter() - start
        texts = {}
        for case, (prompt, text_case, box) in CASES.items():
            start = time.perf_counter()
            if text_case not in texts:
                texts[text_case] = detector.encode_text(tokenizer(prompt), recorder(text_case))
            boxes = labels = None
            if box is not None:
                boxes = torch.tensor(box).view(1, 1, 4)
                labels = torch.ones(1, 1, dtype=torch.bool)
            out = detector.forward_grounding(image, texts[text_case], boxes, labels, recorder(case))
            detections(out, IMAGE_HW, score_threshold=0.0, record=recorder(case))
            seconds[case] = time.perf_counter() - start
    print("heads golden run, seconds:", {k: round(v, 1) for k, v in seconds.items()})
    return recorded


@pytest.mark.full
def test_detector_holds_every_detector_key(detector, detector_state):
    result = detector.load_state_dict(detector_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(detector.state_dict()) == set(detector_state)


@pytest.mark.full
@pytest.mark.parametrize("case", CASES)
def test_recorded_stages_are_the_manifests(recorded, case):
    """Every image-path stage of the case is recorded once, under the manifest's tensor names."""
    text_case = CASES[case][1]
    wanted = ([f"img__{s}" for s in IMAGE_STAGES] + [f"{text_case}__{s}" for s in TEXT_STAGES]
              + [f"{case}__{s}" for s in PROMPT_STAGES])
    missing = [s for s in wanted if s not in recorded]
    assert not missing, f"stages not recorded: {missing}"
    for stage in wanted:
        assert recorded[stage]["names"] == sorted(manifest()["stages"][stage]["tensors"]), stage


@pytest.mark.full
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", HEAD_STAGES)
def test_heads_match_golden(recorded, case, stage):
    results = recorded[f"{case}__{stage}"]["results"]
    bad = [r["message"] for r in results if not r["ok"]]
    assert not bad, "golden mismatch:\n  " + "\n  ".join(bad)


@pytest.mark.full
def test_upstream_stages_match_golden_through_detector(recorded):
    """Stages 00-08 of the other modules, reached through the Detector's wiring."""
    own = tuple(f"__{s}" for s in HEAD_STAGES)
    bad = [r["message"] for stage, rec in recorded.items() if not stage.endswith(own)
           for r in rec["results"] if not r["ok"]]
    assert not bad, "golden mismatch:\n  " + "\n  ".join(bad)
