"""Geometry encoder, fusion encoder and fusion decoder against the golden outputs, plus RoIAlign.

The golden stores the neck outputs only sampled, so the inputs come from our own vision and
text modules (checked against the golden in their own tests): coffee.png -> preprocess ->
vision backbone -> (text encoder, geometry encoder) -> fusion encoder -> fusion decoder.
"""

import math

import pytest
import torch

from toolkit.checkpoint.weights import synthetic_state_dict
from toolkit.model.fusion_decoder import FusionDecoder
from toolkit.model.fusion_encoder import FusionEncoder
from toolkit.model.geometry import GeometryEncoder
from toolkit.model.roi_align import roi_align
from toolkit.model.text import TextEncoder
from toolkit.model.vision import VisionBackbone
from toolkit.pipeline.preprocess import load_rgb, preprocess_image
from toolkit.pipeline.tokenizer import Tokenizer
from toolkit.verify.golden import check_stage, golden_path

MODULES = {
    "geometry": (GeometryEncoder, "detector.geometry_encoder."),
    "encoder": (FusionEncoder, "detector.transformer.encoder."),
    "decoder": (FusionDecoder, "detector.transformer.decoder."),
}
# case -> (text prompt, positive boxes [cx, cy, w, h] normalised)
CASES = {
    "txt_person": ("person", []),
    "txt_red_cup": ("a red cup", []),
    "txt_person_box": ("person", [[0.5, 0.42, 0.46, 0.5]]),
}


@pytest.fixture(scope="module")
def weights():
    """The whole synthetic state dict, generated once (it is drawn key by key)."""
    return synthetic_state_dict()


def _under(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _load(cls, prefix: str, weights: dict) -> torch.nn.Module:
    model = cls().eval()
    model.load_state_dict(_under(weights, prefix), strict=True)
    return model


@pytest.fixture(scope="module")
def models(weights):
    return {name: _load(cls, prefix, weights) for name, (cls, prefix) in MODULES.items()}


@pytest.fixture(scope="module")
def image_features(weights):
    """Last detector pyramid level (1,256,72,72) and its position encoding."""
    vision = _load(VisionBackbone, "detector.backbone.vision_backbone.", weights)
    image = preprocess_image(load_rgb(golden_path("inputs", "coffee.png")))
    with torch.no_grad():
        features = vision(image)
    return features["backbone_fpn"][-1], features["vision_pos_enc"][-1]


@pytest.fixture(scope="module")
def text_encoder(weights):
    return _load(TextEncoder, "detector.backbone.language_backbone.", weights)


@pytest.fixture(scope="module", params=list(CASES))
def case_outputs(request, models, image_features, text_encoder):
    """(case, geometry output, encoder output, decoder output) for one golden case."""
    case = request.param
    text, box_list = CASES[case]
    image, image_pos = image_features
    boxes = torch.tensor(box_list, dtype=torch.float32).view(len(box_list), 1, 4)
    labels = torch.ones(len(box_list), 1, dtype=torch.bool)
    with torch.no_grad():
        text_mask, text_memory, _ = text_encoder(Tokenizer()(text))
        geo_tokens, geo_mask = models["geometry"](boxes, labels, image, image_pos)
        prompt = torch.cat((text_memory, geo_tokens), dim=0)
        prompt_mask = torch.cat((text_mask, geo_mask), dim=1)
        encoded = models["encoder"](image, image_pos, prompt, prompt_mask)
        decoded = models["decoder"](encoded["memory"], encoded["pos_embed"], prompt, prompt_mask)
    return case, (geo_tokens, geo_mask), encoded, decoded


@pytest.mark.parametrize("name", list(MODULES))
def test_strict_load(name, weights):
    cls, prefix = MODULES[name]
    result = cls().load_state_dict(_under(weights, prefix), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_geometry_golden(case_outputs):
    case, (tokens, mask), _, _ = case_outputs
    check_stage(f"{case}__06_geometry_encoder", {"out.0": tokens, "out.1": mask})


def test_fusion_encoder_golden(case_outputs):
    case, _, encoded, _ = case_outputs
    check_stage(f"{case}__07_fusion_encoder", {f"out.{k}": v for k, v in encoded.items()})


def test_fusion_decoder_golden(case_outputs):
    case, _, _, decoded = case_outputs
    check_stage(f"{case}__08_decoder", {f"out.{i}": t for i, t in enumerate(decoded)})


def test_geometry_points_and_boxes_shapes(models, image_features):
    """Points (not in the golden cases) go first, then boxes, then CLS; batch of two."""
    image, image_pos = (t.expand(2, -1, -1, -1) for t in image_features)
    points = torch.tensor([[[0.3, 0.6], [0.5, 0.5]], [[0.9, 0.1], [0.2, 0.2]]])  # (M=2, B=2, 2)
    point_labels = torch.tensor([[1, 0], [0, 1]])
    boxes = torch.tensor([[[0.5, 0.4, 0.2, 0.3], [0.6, 0.5, 0.4, 0.4]]])  # (N=1, B=2, 4)
    box_labels = torch.tensor([[True, False]])
    with torch.no_grad():
        tokens, mask = models["geometry"](boxes, box_labels, image, image_pos,
                                          points=points, point_labels=point_labels)
    assert tokens.shape == (4, 2, 256) and torch.isfinite(tokens).all()
    assert mask.shape == (2, 4) and not mask.any()


# --- RoIAlign -------------------------------------------------------------------------------

def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """The reference's per-sample interpolation: clamp below at 0, read the last row/column
    for coordinates at or past it."""
    height, width = feature.shape[-2:]
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
            + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])


def _roi_align_brute_force(features, boxes, size, spatial_scale, aligned):
    """Loops over boxes, bins and samples (torchvision's pure-PyTorch semantics, which
    evaluate at most H (W) samples per bin)."""
    batch, channels, height, width = features.shape
    out = torch.zeros(batch, boxes.shape[1], channels, size, size, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for b in range(batch):
        for n in range(boxes.shape[1]):
            x0, y0, x1, y1 = (float(v) * spatial_scale - offset for v in boxes[b, n])
            box_w, box_h = x1 - x0, y1 - y0
            if not aligned:
                box_w, box_h = max(box_w, 1.0), max(box_h, 1.0)
            bin_h, bin_w = box_h / size, box_w / size
            grid_h, grid_w = math.ceil(box_h / size), math.ceil(box_w / size)
            count = max(grid_h * grid_w, 1)
            for ph in range(size):
                for pw in range(size):
                    acc = torch.zeros(channels, dtype=torch.float64)
                    for iy in range(min(grid_h, height)):
                        y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(min(grid_w, width)):
                            x = x0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            acc += _bilinear(features[b].double(), y, x)
                    out[b, n, :, ph, pw] = acc / count
    return out


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("size,spatial_scale", [(7, 1.0), (3, 0.5)])
def test_roi_align_matches_brute_force(aligned, size, spatial_scale):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 11, generator=gen)
    s = 1.0 / spatial_scale  # boxes are given in input coordinates
    boxes = torch.tensor([
        [[1.0, 2.0, 8.0, 7.5], [0.2, 0.3, 0.9, 0.6],         # inside; smaller than a cell
         [-2.0, -1.5, 12.5, 10.0], [3.3, 4.1, 10.9, 8.9]],   # past every edge; touching the last cells
        [[0.0, 0.0, 11.0, 9.0], [5.5, 1.25, 6.0, 8.75],
         [2.0, 3.0, 2.0, 3.0], [7.9, 0.1, 10.99, 8.99]],     # empty box; near the far edges
    ]) * s
    want = _roi_align_brute_force(features, boxes, size, spatial_scale, aligned)
    got64 = roi_align(features.double(), boxes.double(), size, spatial_scale, aligned)
    got32 = roi_align(features, boxes, size, spatial_scale, aligned)
    assert got32.shape == (2, 4, 3, size, size) and got32.dtype == torch.float32
    assert (got64 - want).abs().max() < 1e-12
    assert (got32.double() - want).abs().max() < 1e-5


def test_roi_align_no_boxes():
    features = torch.randn(1, 4, 6, 6)
    out = roi_align(features, torch.zeros(1, 0, 4), 7)
    assert out.shape == (1, 0, 4, 7, 7)
