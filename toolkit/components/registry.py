"""The component registry: every deployable part of EfficientSAM3, declared once.

A `Component` names its checkpoint prefixes, the export graph that computes it (a thin
`nn.Module` over the loaded `Detector` / `TrackerModules` with a tensor-only positional
`forward` whose argument names are the input names, returning the outputs in declared order),
its input and output `TensorSpec`s with symbolic dimensions, tolerances, which outputs are mask
logits, and how it is exported to ONNX. Export, verification, benchmarks and pipelines read these
declarations; nothing else lists components.

Graph boundaries are chosen for an app that runs the components one by one:
  detector  image -> vision_encoder -> (fpn_*, image_pos, backbone_features)
            token ids -> text_encoder;  boxes -> geometry_encoder
            prompt = text tokens ++ geometry tokens (concatenation: the pipeline's)
            fusion_encoder -> fusion_decoder -> scoring, segmentation_head
  tracker   backbone_features -> tracker_neck (once per frame)
            points -> prompt_encoder -> mask_decoder (all 4 mask tokens; choosing the output
            mask / token is the pipeline's) -> object_pointer, memory_encoder
            memory bank (stacked memories + pointers) -> memory_attention -> mask_decoder
Constants that are the same for every frame live inside the graph that uses them (the memory
position encoding, the SAM image PE); learned tensors used between steps sit with the graph that
applies them (`no_mem_embed` in the tracker neck, the temporal encodings in memory attention).

Exporter choice: dynamo (`torch.export` + onnxscript) is the maintained path and takes every
component with real dynamic dimensions, so every component uses it; the legacy exporter stays
available per declaration for a graph it cannot take.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn

from ..model.chain import ground
from ..model.detector import Detector
from ..model.tracker import TrackerModules, memory_mask_probability
from .spec import DIMS, Dim, TensorSpec, linear_form

GRID = 72  # 1008 / 14: the image token grid of both the detector and the tracker
IMAGE_SIZE = 1008
DEFAULT_OPSET = 20  # first opset with a Gelu op (opset 18 splits it into Erf/Div/Mul, 1.6x slower)


@dataclass(frozen=True)
class Tolerance:
    """An artifact passes when, for every output, |got - ref| <= atol + rtol * max|ref| holds for all
    but a fraction `outliers` of the elements, and, for mask-logit outputs, the IoU of (got > 0) and
    (ref > 0) over the pixels whose reference logit is farther from 0 than that bound is at least
    `mask_iou` (a pixel within float error of the threshold may land on either side on another CPU
    or runtime: such flips are counted and reported, not failed). `outliers` stays 0 for float32
    artifacts: no exported graph thresholds a value (see memory_encoder); only reduced-precision
    checks allow some."""

    atol: float = 1e-4
    rtol: float = 1e-3
    mask_iou: float = 0.99
    outliers: float = 0.0


@dataclass(frozen=True)
class OnnxStrategy:
    """How a component goes to ONNX, and why (every declaration says why)."""

    reason: str
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET


class Models:
    """The PyTorch model the graphs are built from, each half (detector, tracker) built and loaded
    strictly on first use: a graph of the tracker never pays for the detector, and the reverse."""

    def __init__(self, state: Mapping[str, Tensor]):
        self.state = state

    def _load(self, module: nn.Module, prefix: str) -> nn.Module:
        module.load_state_dict({k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)},
                               strict=True)
        return module.eval()

    @cached_property
    def detector(self) -> Detector:
        return self._load(Detector(), "detector.")

    @cached_property
    def tracker(self) -> TrackerModules:
        return self._load(TrackerModules(), "tracker.")


@dataclass(frozen=True)
class Component:
    name: str
    doc: str
    prefixes: tuple[str, ...]
    graph: Callable[[Models], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx: OnnxStrategy
    masks: tuple[str, ...] = ()
    tolerance: Tolerance = Tolerance()
    reparameterize: bool = False  # fold BatchNorms / RepVGG branches before export (the reference stays unfused)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def torch_runner(self, graph: nn.Module):
        """`graph` (this component's PyTorch graph) as a runner fed and read by the declared names: the
        fp32 reference that artifacts, gates, calibration and bench compare with."""
        from ..runners.torch_runner import TorchRunner
        return TorchRunner(graph, self.input_names, self.output_names)

    def dims(self) -> list[Dim]:
        """The dynamic dimensions of the inputs, in first-use order."""
        names = dict.fromkeys(name for spec in self.inputs for name in spec.dims())
        return [DIMS[name] for name in names]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {s.name: s.dynamic_axes() for s in self.inputs}

    def example(self, dims: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Random feeds at the given dimension values (typical values for the others)."""
        values = {d.name: d.typical for d in self.dims()} | dict(dims or {})
        rng = np.random.default_rng(seed)
        return {spec.name: spec.sample(values, rng) for spec in self.inputs}

    def output_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Expected output shapes for these feeds (dimension values read off the inputs)."""
        values = {}
        for spec in self.inputs:
            for axis, expr in spec.dynamic_axes().items():
                name, scale, offset = linear_form(expr)
                values[name] = (feeds[spec.name].shape[axis] - offset) // scale
        return {spec.name: spec.concrete(values) for spec in self.outputs}

    def declaration(self) -> dict:
        """Everything declared, as JSON data (hashed into the artifact cache key)."""
        return {
            "name": self.name, "doc": self.doc, "prefixes": list(self.prefixes),
            "graph": f"{self.graph.__module__}.{self.graph.__qualname__}",
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "dims": {d.name: [d.min, d.max, d.typical] for d in self.dims()},
            "masks": list(self.masks), "tolerance": vars(self.tolerance), "onnx": vars(self.onnx),
            "reparameterize": self.reparameterize,
        }

    def check_graph_signature(self, graph: nn.Module) -> None:
        names = list(inspect.signature(graph.forward).parameters)
        if names != self.input_names:
            raise TypeError(f"{self.name}: graph takes {names}, declared inputs are {self.input_names}")


def load_models(state: Mapping[str, Tensor]) -> Models:
    """Detector and tracker with every `detector.*` / `tracker.*` key loaded strictly (on first use)."""
    return Models(state)


# --- samplers for inputs whose values have structure -----------------------------------------

START_ID, END_ID = 49406, 49407  # CLIP BPE start / end of text


def token_ids(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """[start, words..., end, 0 padding] per row, like the tokenizer."""
    ids = np.zeros(shape, np.int64)
    for row in ids.reshape(-1, shape[-1]):
        words = rng.integers(0, shape[-1] - 1)
        row[0], row[1:words + 1], row[words + 1] = START_ID, rng.integers(1, START_ID, words), END_ID
    return ids


def prompt_padding(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random padding with the last token (the geometry CLS token) always valid."""
    mask = rng.random(shape) < 0.3
    mask[..., -1] = False
    return mask


def boxes_cxcywh(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    centre = rng.uniform(0.2, 0.8, (*shape[:-1], 2))
    size = rng.uniform(0.05, 0.4, (*shape[:-1], 2))
    return np.concatenate([centre, size], axis=-1)


def pixel_points(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, IMAGE_SIZE, shape)


def mask_blobs(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Smooth mask logits like a predicted mask: an ellipse per map, positive inside."""
    *lead, height, width = shape
    ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    centre = rng.uniform(0.3, 0.7, (*lead, 1, 1, 2))
    radius = rng.uniform(0.1, 0.3, (*lead, 1, 1, 2))
    distance = ((xs - centre[..., 0]) / radius[..., 0]) ** 2 + ((ys - centre[..., 1]) / radius[..., 1]) ** 2
    return 8.0 * (1.0 - distance)


def mask_probabilities(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Memory-encoder mask inputs: a binarised ellipse (a clicked frame) for the first mask, the
    sigmoid of smooth logits (a tracked frame) for the others."""
    logits = mask_blobs(shape, rng)
    probability = 1.0 / (1.0 + np.exp(-logits))
    probability.reshape(-1, *shape[-2:])[:1] = logits.reshape(-1, *shape[-2:])[:1] > 0
    return probability


def _spec(name: str, shape: tuple, doc: str, dtype: str = "float32", **kw) -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype, doc, **kw)


def _seq(x: Tensor) -> Tensor:
    """(B,C,H,W) -> (H*W,B,C), the sequence-first layout of the transformers."""
    return x.flatten(2).permute(2, 0, 1)


IMAGE_FEATURES = _spec("image_features", (1, 256, GRID, GRID), "last (72x72) pyramid level: fpn_72 of "
                       "vision_encoder for the detector, tracker_features of tracker_neck for the tracker")
IMAGE_POS = _spec("image_pos", (1, 256, GRID, GRID), "sine position encoding of the 72x72 grid "
                  "(vision_encoder output)")
PROMPT = _spec("prompt", ("prompt_tokens", 1, 256), "text_features ++ geometry_tokens (sequence-first)")
PROMPT_MASK = _spec("prompt_mask", (1, "prompt_tokens"), "text_mask ++ geometry_mask, True = padding",
                    "bool", sampler=prompt_padding)
QUERIES = _spec("queries", (1, 200, 256), "last decoder layer's normalised queries")
MEMORY = _spec("memory", (GRID * GRID, 1, 256), "prompt-conditioned image tokens (fusion_encoder)")
OBJECT_SCORE = _spec("object_score_logits", ("objects", 1), "object present when > 0")


# --- detector graphs ---------------------------------------------------------------------------

class VisionEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.vision = models.detector.backbone.vision_backbone

    def forward(self, image: Tensor):
        trunk = self.vision.trunk(image)
        features = self.vision.detector_features(trunk)
        fpn = features["backbone_fpn"]
        return trunk, fpn[0], fpn[1], fpn[2], features["vision_pos_enc"][2]


class TextEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.text = models.detector.backbone.language_backbone

    def forward(self, token_ids: Tensor):
        pad_mask, memory, _ = self.text(token_ids)
        return memory, pad_mask


class GeometryEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.encoder = models.detector.geometry_encoder

    def forward(self, boxes: Tensor, box_labels: Tensor, image_features: Tensor, image_pos: Tensor):
        return self.encoder(boxes, box_labels, image_features, image_pos)


class FusionEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.encoder = models.detector.transformer.encoder

    def forward(self, image_features: Tensor, image_pos: Tensor, prompt: Tensor, prompt_mask: Tensor):
        return (self.encoder(image_features, image_pos, prompt, prompt_mask)["memory"],)


class FusionDecoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.detector = models.detector

    def forward(self, memory: Tensor, image_pos: Tensor, prompt: Tensor, prompt_mask: Tensor):
        hs, reference_boxes, presence_logits, _ = self.detector.transformer.decoder(
            memory, _seq(image_pos), prompt, prompt_mask)
        queries = hs[-1].transpose(0, 1)
        boxes = self.detector.predict_boxes(queries, reference_boxes[-1])
        return queries, boxes, presence_logits[-1].transpose(0, 1)


class ScoringGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.scoring = models.detector.dot_prod_scoring

    def forward(self, queries: Tensor, prompt: Tensor, prompt_mask: Tensor):
        return (self.scoring(queries, prompt, prompt_mask),)


class SegmentationHeadGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.head = models.detector.segmentation_head

    def forward(self, fpn_288: Tensor, fpn_144: Tensor, queries: Tensor, memory: Tensor, prompt: Tensor,
                prompt_mask: Tensor):
        # The head reads only the shape of the coarsest level: the conditioned memory replaces it.
        coarsest = fpn_144.new_zeros(()).expand(fpn_144.shape[0], fpn_144.shape[1], GRID, GRID)
        out = self.head([fpn_288, fpn_144, coarsest], queries, memory, prompt, prompt_mask)
        return out["pred_masks"], out["semantic_seg"]


# --- tracker graphs ----------------------------------------------------------------------------

class TrackerNeckGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.vision = models.detector.backbone.vision_backbone
        self.tracker = models.tracker

    def forward(self, backbone_features: Tensor):
        fpn = self.vision.tracker_features(backbone_features)["backbone_fpn"]
        feat_s0, feat_s1 = self.tracker.high_res_features(fpn[0], fpn[1])
        return feat_s0, feat_s1, fpn[2], self.tracker.no_memory_features(_seq(fpn[2]))


class PromptEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.encoder = models.tracker.sam_prompt_encoder

    def forward(self, points: Tensor, point_labels: Tensor):
        return self.encoder(points, point_labels)


class MaskDecoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.decoder = models.tracker.sam_mask_decoder
        self.prompt_encoder = models.tracker.sam_prompt_encoder

    def forward(self, image_embeddings: Tensor, sparse_embeddings: Tensor, dense_embeddings: Tensor,
                feat_s0: Tensor, feat_s1: Tensor):
        return self.decoder.predict_all(image_embeddings, self.prompt_encoder.dense_pe(), sparse_embeddings,
                                        dense_embeddings, feat_s0, feat_s1)


class ObjectPointerGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.tracker = models.tracker

    def forward(self, sam_token: Tensor, object_score_logits: Tensor):
        return (self.tracker.object_pointer(sam_token, object_score_logits),)


class MemoryEncoderGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.tracker = models.tracker

    def forward(self, image_features: Tensor, mask_probability: Tensor, object_score_logits: Tensor):
        features, _ = self.tracker.encode_memory(image_features, mask_probability, object_score_logits)
        return (features,)


class MemoryAttentionGraph(nn.Module):
    def __init__(self, models: Models):
        super().__init__()
        self.tracker = models.tracker
        # The memory encoder's position encoding depends on the grid only: the same for every memory.
        with torch.no_grad():
            _, memory_pos = models.tracker.maskmem_backbone(torch.zeros(1, 256, GRID, GRID),
                                                            torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
        self.register_buffer("memory_pos", _seq(memory_pos), persistent=False)  # (5184, 1, 64)

    def forward(self, image_features: Tensor, image_pos: Tensor, memory: Tensor, memory_time_index: Tensor,
                object_pointers: Tensor, pointer_frame_distance: Tensor, max_pointer_distance: Tensor):
        objects, channels = memory.shape[1:3]
        current = _seq(image_features).expand(-1, objects, -1)
        current_pos = _seq(image_pos).expand(-1, objects, -1)
        # (M, objects, 64, 72, 72) -> (M*5184, objects, 64), each memory with its temporal encoding.
        memory_seq = memory.permute(0, 3, 4, 1, 2).reshape(-1, objects, channels)
        temporal = self.tracker.maskmem_tpos_enc[memory_time_index]  # (M, 1, 1, 64)
        memory_pos = (self.memory_pos[None] + temporal).expand(-1, -1, objects, -1).reshape(-1, objects, channels)
        pointers, pointers_pos = self.tracker.pointer_tokens(object_pointers, pointer_frame_distance,
                                                             max_pointer_distance)
        return (self.tracker.condition_on_memory(current, current_pos, memory_seq, memory_pos, pointers, pointers_pos),)


# --- the registry ------------------------------------------------------------------------------

_VISION = "detector.backbone.vision_backbone."
_MASK_DECODER = tuple(f"tracker.sam_mask_decoder.{m}." for m in (
    "transformer", "iou_token", "mask_tokens", "obj_score_token", "output_upscaling",
    "output_hypernetworks_mlps", "iou_prediction_head", "pred_obj_score_head"))
_PROMPT_ENCODER = tuple(f"tracker.sam_prompt_encoder.{m}." for m in (
    "pe_layer", "point_embeddings", "not_a_point_embed", "no_mask_embed"))
_FPN = {level: _spec(f"fpn_{level}", (1, 256, level, level), f"detector pyramid level at {level}x{level}")
        for level in (288, 144, 72)}

COMPONENT_LIST: tuple[Component, ...] = (
    Component(
        "vision_encoder", "RepViT-M0.9 trunk + projection head + detector pyramid (one pass per image)",
        (_VISION + "trunk.", _VISION + "convs."), VisionEncoderGraph,
        inputs=(_spec("image", (1, 3, IMAGE_SIZE, IMAGE_SIZE), "RGB resized to 1008x1008, (x/255 - 0.5) / 0.5",
                      range=(-1.0, 1.0)),),
        outputs=(_spec("backbone_features", (1, 1024, GRID, GRID), "trunk output, input of tracker_neck"),
                 _FPN[288], _FPN[144], _FPN[72], IMAGE_POS),
        reparameterize=True,
        onnx=OnnxStrategy("dynamo: a static 1008x1008 graph; the trunk is re-parameterised first"),
    ),
    Component(
        "text_encoder", "MobileCLIP-S1 text tower + 512->256 projector, from token ids",
        ("detector.backbone.language_backbone.",), TextEncoderGraph,
        inputs=(_spec("token_ids", (1, "text_tokens"), "CLIP BPE ids: start, words, end, 0 padding", "int64",
                      sampler=token_ids),),
        outputs=(_spec("text_features", ("text_tokens", 1, 256), "text prompt tokens (sequence-first)"),
                 _spec("text_mask", (1, "text_tokens"), "True = padding (id 0)", "bool")),
        onnx=OnnxStrategy("dynamo: the token count is dynamic (2..77) through the learned-position slice and "
                          "SDPA"),
    ),
    Component(
        "geometry_encoder", "box prompts -> geometry tokens (boxes, then a CLS token)",
        ("detector.geometry_encoder.",), GeometryEncoderGraph,
        inputs=(_spec("boxes", ("boxes", 1, 4), "normalised cx, cy, w, h", sampler=boxes_cxcywh),
                _spec("box_labels", ("boxes", 1), "True = positive box", "bool"),
                IMAGE_FEATURES, IMAGE_POS),
        outputs=(_spec("geometry_tokens", ("boxes+1", 1, 256), "box tokens + CLS token (sequence-first)"),
                 _spec("geometry_mask", (1, "boxes+1"), "all False (prompts are not padded)", "bool")),
        onnx=OnnxStrategy("dynamo: the box count is dynamic, 0 included (text only); RoIAlign is plain tensor "
                          "ops"),
    ),
    Component(
        "fusion_encoder", "6 layers: image tokens attend to themselves and to the prompt",
        ("detector.transformer.encoder.",), FusionEncoderGraph,
        inputs=(IMAGE_FEATURES, IMAGE_POS, PROMPT, PROMPT_MASK),
        outputs=(MEMORY,),
        onnx=OnnxStrategy("dynamo: the prompt length is dynamic through the key-padding mask (the checkpoint "
                          "report's 'not exportable, use TorchScript' does not hold)"),
    ),
    Component(
        "fusion_decoder", "6 layers over 200 queries + presence token, box refinement (last layer out)",
        ("detector.transformer.decoder.",), FusionDecoderGraph,
        inputs=(MEMORY, IMAGE_POS, PROMPT, PROMPT_MASK),
        outputs=(QUERIES, _spec("pred_boxes", (1, 200, 4), "normalised cx, cy, w, h"),
                 _spec("presence_logit", (1, 1), "is the prompted concept in the image")),
        onnx=OnnxStrategy("dynamo: the prompt length is dynamic; boxRPB and box refinement are plain ops"),
    ),
    Component(
        "scoring", "query logits: dot product with the pooled prompt (presence not applied)",
        ("detector.dot_prod_scoring.",), ScoringGraph,
        inputs=(QUERIES, PROMPT, PROMPT_MASK),
        outputs=(_spec("pred_logits", (1, 200, 1), "per-query logit, clamped to +-12"),),
        onnx=OnnxStrategy("dynamo: the prompt length is dynamic through the masked mean"),
    ),
    Component(
        "segmentation_head", "pixel decoder + mask embeddings: a mask per query and a semantic map",
        ("detector.segmentation_head.",), SegmentationHeadGraph,
        inputs=(_FPN[288], _FPN[144], QUERIES, MEMORY, PROMPT, PROMPT_MASK),
        outputs=(_spec("pred_masks", (1, 200, 288, 288), "mask logits per query"),
                 _spec("semantic_seg", (1, 1, 288, 288), "semantic mask logits")),
        masks=("pred_masks", "semantic_seg"),
        onnx=OnnxStrategy("dynamo: the prompt length is dynamic; masks are a static 288x288 grid"),
    ),
    Component(
        "tracker_neck", "tracker pyramid + conv_s0/conv_s1 high-res projections (once per frame)",
        (_VISION + "sam2_convs.", "tracker.sam_mask_decoder.conv_s0.", "tracker.sam_mask_decoder.conv_s1.",
         "tracker.no_mem_embed"), TrackerNeckGraph,
        inputs=(_spec("backbone_features", (1, 1024, GRID, GRID), "vision_encoder output"),),
        outputs=(_spec("feat_s0", (1, 32, 288, 288), "high-res features for the mask decoder"),
                 _spec("feat_s1", (1, 64, 144, 144), "high-res features for the mask decoder"),
                 _spec("tracker_features", (1, 256, GRID, GRID), "frame features (memory encoder, memory attention)"),
                 _spec("no_memory_features", (1, 256, GRID, GRID),
                       "tracker_features + no_mem_embed: the mask decoder's input on a frame without memory")),
        onnx=OnnxStrategy("dynamo: a static per-frame graph"),
    ),
    Component(
        "prompt_encoder", "SAM prompt encoder: clicks / box corners -> sparse tokens, 'no mask' dense map",
        _PROMPT_ENCODER, PromptEncoderGraph,
        inputs=(_spec("points", ("objects", "points", 2), "x, y in 1008-pixel coordinates", sampler=pixel_points),
                _spec("point_labels", ("objects", "points"), "1 positive, 0 negative, 2/3 box corners, -1 padding",
                      "int32", range=(-1, 3))),
        outputs=(_spec("sparse_embeddings", ("objects", "points+1", 256), "point tokens + a padding token"),
                 _spec("dense_embeddings", ("objects", 256, GRID, GRID), "the learned 'no mask' embedding")),
        onnx=OnnxStrategy("dynamo: objects and points are dynamic; labels pick embeddings with torch.where"),
    ),
    Component(
        "mask_decoder", "SAM two-way transformer: all 4 mask tokens, IoU, object score",
        _MASK_DECODER + ("tracker.sam_prompt_encoder.pe_layer.",), MaskDecoderGraph,
        inputs=(_spec("image_embeddings", ("objects", 256, GRID, GRID),
                      "memory_attention output, or no_memory_features on a frame without memory"),
                _spec("sparse_embeddings", ("objects", "points+1", 256), "prompt_encoder output"),
                _spec("dense_embeddings", ("objects", 256, GRID, GRID), "prompt_encoder output"),
                _spec("feat_s0", (1, 32, 288, 288), "tracker_neck output"),
                _spec("feat_s1", (1, 64, 144, 144), "tracker_neck output")),
        outputs=(_spec("masks", ("objects", 4, 288, 288), "mask logits; token 0 single-mask, 1..3 multimask"),
                 _spec("iou", ("objects", 4), "predicted IoU per mask"),
                 _spec("mask_tokens", ("objects", 4, 256), "SAM output tokens (object-pointer candidates)"),
                 OBJECT_SCORE),
        masks=("masks",),
        onnx=OnnxStrategy("dynamo: objects and sparse tokens (points+1, a derived dimension) are dynamic; the "
                          "frame's high-res features broadcast over objects"),
    ),
    Component(
        "object_pointer", "SAM output token -> object pointer (no_obj_ptr when the object is absent)",
        ("tracker.obj_ptr_proj.", "tracker.no_obj_ptr"), ObjectPointerGraph,
        inputs=(_spec("sam_token", ("objects", 256), "the chosen mask's token from mask_tokens"), OBJECT_SCORE),
        outputs=(_spec("object_pointer", ("objects", 256), "pointer stored in the memory bank"),),
        onnx=OnnxStrategy("dynamo: objects are dynamic"),
    ),
    Component(
        "memory_encoder", "frame features + predicted mask -> 64-channel memory",
        ("tracker.maskmem_backbone.", "tracker.no_obj_embed_spatial"), MemoryEncoderGraph,
        inputs=(_spec("image_features", (1, 256, GRID, GRID), "tracker_features of the frame (not conditioned)"),
                _spec("mask_probability", ("objects", 1, IMAGE_SIZE, IMAGE_SIZE), "the chosen mask resized to "
                      "1008: binarised (> 0) on a clicked frame, its sigmoid on a tracked one",
                      sampler=mask_probabilities),
                OBJECT_SCORE),
        outputs=(_spec("memory_features", ("objects", 64, GRID, GRID), "memory of this frame (upstream stores "
                       "it in bfloat16)"),),
        # The binarisation of a clicked frame's mask is the pipeline's (memory_mask_probability): inside
        # the graph, float rounding near logit 0 (which differs between CPUs and runtimes) would flip
        # pixels and make the check ill-conditioned; outside, graph and reference take the same mask.
        onnx=OnnxStrategy("dynamo: objects are dynamic"),
    ),
    Component(
        "memory_attention", "4 RoPE layers: the frame attends to its memories and object pointers",
        ("tracker.transformer.encoder.", "tracker.maskmem_tpos_enc", "tracker.obj_ptr_tpos_proj."),
        MemoryAttentionGraph,
        inputs=(_spec("image_features", (1, 256, GRID, GRID), "tracker_features of the current frame"),
                IMAGE_POS,
                _spec("memory", ("memory_frames", "objects", 64, GRID, GRID), "memory_features of the memory "
                      "frames, stacked: conditioning frames first, then tracked frames, oldest first"),
                _spec("memory_time_index", ("memory_frames",), "temporal encoding of each memory: 6 for a "
                      "conditioning frame, k-1 for the k-th most recent tracked frame", "int64", range=(0, 6)),
                _spec("object_pointers", ("pointers", "objects", 256), "object pointers of the bank"),
                _spec("pointer_frame_distance", ("pointers",), "frame distance of each pointer", "int64",
                      range=(1, 15)),
                _spec("max_pointer_distance", (), "min(frames in the video, 16): scales the pointer distances",
                      "int64", range=(16, 16))),
        outputs=(_spec("conditioned_features", ("objects", 256, GRID, GRID),
                       "memory-conditioned frame features, the mask decoder's image_embeddings"),),
        onnx=OnnxStrategy("dynamo: memory frames (1..7), pointers (0..16) and objects are dynamic; RoPE "
                          "tables indexed by token % 5184 keep the frame count free"),
    ),
)

COMPONENTS: dict[str, Component] = {c.name: c for c in COMPONENT_LIST}

# Live checkpoint entries no component reads, and why.
UNUSED = {
    "tracker.mask_downsample.": "only for mask prompts (a mask as a frame's output), not supported",
    "tracker.no_mem_pos_enc": "upstream's only use of it is unreachable",
    "tracker.sam_prompt_encoder.mask_downscaling.": "only for mask prompts, not supported",
}


def component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}") from None


def weights(state: Mapping[str, Tensor], comp: Component) -> dict[str, Tensor]:
    """The checkpoint entries a component is built from (full keys)."""
    return {k: v for k, v in state.items() if k.startswith(comp.prefixes)}


def parameter_count(state: Mapping[str, Tensor], comp: Component) -> int:
    return sum(v.numel() for v in weights(state, comp).values() if v.is_floating_point())


def build_graph(models: Models, comp: Component) -> nn.Module:
    graph = comp.graph(models).eval()
    comp.check_graph_signature(graph)
    return graph


# --- feeds from the golden fixture ---------------------------------------------------------------

GOLDEN_BOX = [0.5, 0.42, 0.46, 0.5]  # txt_person_box: cx, cy, w, h
GOLDEN_CLICK = [0.52, 0.45]  # tracker case: relative x, y on frame 0


# --- the component chains -------------------------------------------------------------------------

# The detector's walk is `toolkit.model.chain.ground` (the Detector walks it too); the tracker's is below.
DETECTOR_CHAIN = ("vision_encoder", "text_encoder", "geometry_encoder", "fusion_encoder", "fusion_decoder",
                  "scoring", "segmentation_head")
TRACKER_CHAIN = ("vision_encoder", "tracker_neck", "prompt_encoder", "mask_decoder", "object_pointer",
                 "memory_encoder", "memory_attention")


# --- feeds from the golden fixture ---------------------------------------------------------------

GOLDEN_BOX = [0.5, 0.42, 0.46, 0.5]  # txt_person_box: cx, cy, w, h
GOLDEN_CLICK = [0.52, 0.45]  # tracker case: relative x, y on frame 0


class _Enough(Exception):
    """Every wanted component's feeds are recorded: the rest of the walk is not needed."""


@dataclass
class _Chain:
    """Runs the PyTorch graphs and records each component's feeds; stops the walk (raises `_Enough`)
    once the feeds of every component in `wanted` are recorded."""

    graphs: Mapping[str, nn.Module]
    wanted: set[str]
    feeds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __call__(self, name: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        comp = COMPONENTS[name]
        self.feeds.setdefault(name, {n: np.asarray(feeds[n]) for n in comp.input_names})
        if self.wanted <= set(self.feeds):
            raise _Enough
        with torch.inference_mode():
            out = self.graphs[name](*(torch.from_numpy(np.asarray(feeds[n])) for n in comp.input_names))
        return {n: t.detach().numpy() for n, t in zip(comp.output_names, out)}


def golden_feeds(graphs: Mapping[str, nn.Module], wanted: Iterable[str] | None = None
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Feeds of the `wanted` components (default: all) on the golden fixture's cases, each computed by
    the PyTorch graphs upstream of it: the image path on coffee.png with "person" and the golden box;
    the tracker on frame 0 with the golden click, then attention to the memory of that frame. A walk
    stops once its wanted components are reached; one with none of them is not run."""
    wanted = set(COMPONENTS if wanted is None else wanted)
    feeds: dict[str, dict[str, np.ndarray]] = {}
    for walk, chain in ((_golden_detector_walk, DETECTOR_CHAIN), (_golden_tracker_walk, TRACKER_CHAIN)):
        mine = wanted & set(chain)
        if mine:
            run = _Chain(graphs, mine)
            try:
                walk(run)
            except _Enough:
                pass
            feeds.update({name: run.feeds[name] for name in mine})
    return feeds


def _golden_detector_walk(run: _Chain) -> None:
    from ..pipeline.preprocess import load_rgb, preprocess_image
    from ..verify.golden import golden_path, stage_tensor

    image = run("vision_encoder", image=preprocess_image(load_rgb(golden_path("inputs", "coffee.png"))).numpy())
    text = run("text_encoder", token_ids=stage_tensor("txt_person__04_tokenizer", "ids"))
    ground(run, image, text, np.array([[GOLDEN_BOX]], np.float32), np.ones((1, 1), bool))


def _golden_tracker_walk(run: _Chain) -> None:
    from ..pipeline.preprocess import load_rgb, preprocess_frame
    from ..verify.golden import golden_path

    frame = run("vision_encoder", image=preprocess_frame(
        load_rgb(golden_path("inputs", "tracker_frames", "0.png"))).numpy())
    neck = run("tracker_neck", backbone_features=frame["backbone_features"])
    prompts = run("prompt_encoder", points=np.array([[GOLDEN_CLICK]], np.float32) * IMAGE_SIZE,
                  point_labels=np.ones((1, 1), np.int32))
    decoded = run("mask_decoder", image_embeddings=neck["no_memory_features"], feat_s0=neck["feat_s0"],
                  feat_s1=neck["feat_s1"], **prompts)
    best = 1 + int(decoded["iou"][0, 1:].argmax())  # one click: multimask output, best IoU
    pointer = run("object_pointer", sam_token=decoded["mask_tokens"][:, best],
                  object_score_logits=decoded["object_score_logits"])
    high_res = nn.functional.interpolate(torch.from_numpy(decoded["masks"][:, best:best + 1]), size=(IMAGE_SIZE,) * 2,
                                         mode="bilinear", align_corners=False)
    encoded = run("memory_encoder", image_features=neck["tracker_features"],
                  mask_probability=memory_mask_probability(high_res, mask_from_points=True).numpy(),
                  object_score_logits=decoded["object_score_logits"])
    run("memory_attention", image_features=neck["tracker_features"], image_pos=frame["image_pos"],
        memory=encoded["memory_features"][None], memory_time_index=np.array([6]),
        object_pointers=pointer["object_pointer"][None], pointer_frame_distance=np.array([1]),
        max_pointer_distance=np.array(3))
