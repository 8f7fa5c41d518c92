"""Pre-processing, RepViT trunk + head and the two feature pyramids against the golden outputs."""

import pytest
import torch

from toolkit.checkpoint.weights import synthetic_state_dict
from toolkit.model.position import PositionEmbeddingSine
from toolkit.model.vision import VisionBackbone
from toolkit.pipeline.preprocess import load_rgb, preprocess_frame, preprocess_image
from toolkit.verify.golden import check_stage, golden_path

PREFIX = "detector.backbone.vision_backbone."
LEVEL_SHAPES = [(1, 256, 288, 288), (1, 256, 144, 144), (1, 256, 72, 72)]


def _named(features: dict) -> dict:
    """Feature dict -> the manifest's tensor names (`out.backbone_fpn.0`, ...)."""
    named = {"out.vision_features": features["vision_features"]}
    for key in ("vision_pos_enc", "backbone_fpn"):
        named.update({f"out.{key}.{i}": t for i, t in enumerate(features[key])})
    return named


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict(PREFIX)


@pytest.fixture(scope="module")
def backbone(state_dict):
    model = VisionBackbone().eval()
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def image():
    return preprocess_image(load_rgb(golden_path("inputs", "coffee.png")))


@pytest.fixture(scope="module")
def frame():
    return preprocess_frame(load_rgb(golden_path("inputs", "tracker_frames", "0.png")))


@pytest.fixture(scope="module")
def image_path_outputs(backbone, image):
    """(RepViT features, trunk output, detector features) of the image path."""
    with torch.no_grad():
        repvit_out = backbone.trunk.model.backbone(image)
        trunk_out = backbone.trunk(image)
        return repvit_out, trunk_out, backbone.detector_features(trunk_out)


@pytest.fixture(scope="module")
def video_path_outputs(backbone, frame):
    with torch.no_grad():
        return backbone.forward_dual(frame)


def test_state_dict_is_the_checkpoint_layout(backbone, state_dict):
    assert set(backbone.state_dict()) == set(state_dict)


def test_preprocess_image(image):
    assert image.dtype == torch.float32
    check_stage("img__00_preprocess", {"image": image})


def test_preprocess_frame(frame):
    assert frame.dtype == torch.float32
    check_stage("trk_f0_prompt__00_frame_input", {"image": frame})


def test_repvit_features(image_path_outputs):
    check_stage("img__01_repvit_backbone", {"out": image_path_outputs[0]})


def test_trunk_with_head(image_path_outputs):
    check_stage("img__02_trunk_with_head", {"out.0": image_path_outputs[1]})


def test_detector_neck(image_path_outputs):
    features = image_path_outputs[2]
    assert features["vision_features"] is features["backbone_fpn"][-1]
    check_stage("img__03_neck", _named(features))


def test_tracker_neck(video_path_outputs):
    detector, tracker = video_path_outputs
    for features in (detector, tracker):
        assert [tuple(t.shape) for t in features["backbone_fpn"]] == LEVEL_SHAPES
        assert [tuple(t.shape) for t in features["vision_pos_enc"]] == LEVEL_SHAPES
    # The golden tracker stage records fpn levels 0/1 after the tracker's conv_s0/conv_s1;
    # the rest comes straight from the tracker pyramid.
    names = ["out.vision_features", "out.backbone_fpn.2"] + [f"out.vision_pos_enc.{i}" for i in range(3)]
    check_stage("trk_f0_prompt__01_image_features", _named(tracker), names=names)


def test_position_encoding_layout():
    """Map channels are [sin/cos(y) | sin/cos(x)] of the 1-based pixel index over the size."""
    pe = PositionEmbeddingSine(256)
    pos = pe(torch.zeros(2, 1, 4, 6))
    assert pos.shape == (2, 256, 4, 6)
    pos_x, pos_y = pe.encode_xy(torch.arange(1, 7) / 6.0, torch.arange(1, 5) / 4.0)
    torch.testing.assert_close(pos[1, :128], pos_y.t()[:, :, None].expand(128, 4, 6))
    torch.testing.assert_close(pos[1, 128:], pos_x.t()[:, None, :].expand(128, 4, 6))
    boxes = pe.encode_boxes(torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([0.2]), torch.tensor([0.1]))
    assert boxes.shape == (1, 258) and boxes[0, -2:].tolist() == pytest.approx([0.1, 0.2])
