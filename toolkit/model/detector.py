"""The EfficientSAM3 detector: image + text (+ boxes) -> scored boxes and masks for 200 queries.

Checkpoint prefix ``detector.``. The stages run in this order (upstream ``Sam3Image`` with
``Sam3Processor``), each a method a pipeline can call on its own:

  encode_image   image (B,3,1008,1008) -> FPN levels + position encodings
  encode_text    token ids (B,77) -> text tokens (77,B,256) + padding mask
  encode_geometry  geometry tokens from boxes; the prompt (L,B,256) is the text tokens ++ them
  fuse           fusion encoder: image tokens attend to the prompt -> memory (5184,B,256)
  decode         200 queries + presence token -> hs, boxes, presence logits
  score          dot product of every query with the pooled prompt
  segment        mask logits of every query (B,200,288,288) + semantic map
  forward_grounding  encode_geometry .. segment, walked as the component chain
                     (``toolkit.model.chain.ground``) into the outputs of upstream's
                     ``Sam3Image.forward_grounding``
  detections     (module function) post-processing to pixel boxes, scores and masks (numpy)

Every method takes an optional ``record(stage, tensors)`` callback. It receives the golden
manifest's stage suffix (``"03_neck"``, ``"09_scoring"``, ...) and the tensors under the manifest's
names (``"out.backbone_fpn.0"``, ...), so a caller can dump every stage boundary (00-12).
"""

import numpy as np
import torch
from torch import Tensor, nn

from toolkit.model.box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from toolkit.model.chain import ground
from toolkit.model.fusion_decoder import FusionDecoder
from toolkit.model.fusion_encoder import FusionEncoder
from toolkit.model.geometry import GeometryEncoder
from toolkit.model.recording import Recorder, recording_output, stage_tensors
from toolkit.model.scoring import DotProductScoring
from toolkit.model.segmentation_head import SegmentationHead
from toolkit.model.text import TextEncoder
from toolkit.model.vision import Features, VisionBackbone
from toolkit.pipeline.postprocess import postprocess_grounding


class VisionLanguageBackbone(nn.Module):
    """Holds the two encoders under the checkpoint's ``backbone.`` names."""

    def __init__(self):
        super().__init__()
        self.vision_backbone = VisionBackbone()
        self.language_backbone = TextEncoder()


class FusionTransformer(nn.Module):
    """Holds the fusion encoder and decoder under the checkpoint's ``transformer.`` names."""

    def __init__(self):
        super().__init__()
        self.encoder = FusionEncoder()
        self.decoder = FusionDecoder()


class Detector(nn.Module):
    """All of ``detector.*``: both encoders, geometry encoder, fusion transformer and the heads."""

    def __init__(self):
        super().__init__()
        self.backbone = VisionLanguageBackbone()
        self.geometry_encoder = GeometryEncoder()
        self.transformer = FusionTransformer()
        self.segmentation_head = SegmentationHead()
        self.dot_prod_scoring = DotProductScoring()

    def encode_image(self, image: Tensor, record: Recorder | None = None) -> Features:
        """Normalised image (B,3,1008,1008) -> {"vision_features", "vision_pos_enc", "backbone_fpn"}
        with three levels (B,256,288|144|72,...), finest first."""
        vision = self.backbone.vision_backbone
        if record is not None:
            record("00_preprocess", {"image": image})
        with recording_output(vision.trunk.model.backbone, record, "01_repvit_backbone"):
            trunk_out = vision.trunk(image)
        features = vision.detector_features(trunk_out)
        if record is not None:
            record("02_trunk_with_head", stage_tensors([trunk_out]))
            record("03_neck", stage_tensors(features))
        return features

    def encode_text(self, token_ids: Tensor, record: Recorder | None = None) -> dict[str, Tensor]:
        """Token ids (B,77) -> language_features (77,B,256), language_mask (B,77) True = padding,
        language_embeds (77,B,512)."""
        text = self.backbone.language_backbone
        if record is not None:
            record("04_tokenizer", {"ids": token_ids})
        with (
            recording_output(text.encoder.final_layer_norm, record, "05a_text_transformer"),
            recording_output(text.projector, record, "05b_text_projector"),
        ):
            encoded = text(token_ids)
        mask, memory, embeds = encoded
        out = {"language_features": memory, "language_mask": mask, "language_embeds": embeds}
        if record is not None:
            record("05c_text_encoder", stage_tensors(encoded))
            record("05d_forward_text", stage_tensors(out))
        return out

    def encode_geometry(self, boxes: Tensor, box_labels: Tensor, image_features: Tensor, image_pos: Tensor,
                        record: Recorder | None = None) -> tuple[Tensor, Tensor]:
        """Geometry tokens: boxes (N,B,4) normalised cx,cy,w,h with box_labels (N,B) bool, True =
        positive, on the last pyramid level (B,256,72,72) and its position encoding -> tokens
        (N+1,B,256) (the boxes and a CLS token), padding mask (B,N+1). They follow the text tokens
        in the prompt."""
        geometry = self.geometry_encoder(boxes, box_labels, image_features, image_pos)
        if record is not None:
            record("06_geometry_encoder", stage_tensors(geometry))
        return geometry

    def fuse(self, image_features: Tensor, image_pos: Tensor, prompt: Tensor, prompt_mask: Tensor,
             record: Recorder | None = None) -> dict[str, Tensor]:
        """Fusion encoder -> {"memory" (5184,B,256), "pos_embed", "memory_text", ...}."""
        encoded = self.transformer.encoder(image_features, image_pos, prompt, prompt_mask)
        if record is not None:
            record("07_fusion_encoder", stage_tensors(encoded))
        return encoded

    def decode(self, memory: Tensor, pos_embed: Tensor, prompt: Tensor, prompt_mask: Tensor,
               record: Recorder | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decoder -> hs (6,200,B,256), reference boxes (6,200,B,4), presence logits (6,1,B),
        presence feats (1,B,256), seq-first. As upstream, it reads the prompt before the encoder."""
        decoded = self.transformer.decoder(memory, pos_embed, prompt, prompt_mask)
        if record is not None:
            record("08_decoder", stage_tensors(decoded))
        return decoded

    def score(
        self, hs: Tensor, prompt: Tensor, prompt_mask: Tensor, record: Recorder | None = None
    ) -> Tensor:
        """hs (layers,B,Q,256) batch-first -> raw logits (layers,B,Q,1), before presence.

        Every layer is scored, as upstream does (stage 09); only the last one is an output."""
        logits = self.dot_prod_scoring(hs, prompt, prompt_mask)
        if record is not None:
            record("09_scoring", stage_tensors(logits))
        return logits

    def predict_boxes(self, queries: Tensor, reference_boxes: Tensor) -> Tensor:
        """Last layer's queries (B,Q,256) and starting boxes (Q,B,4) -> boxes (B,Q,4) cx,cy,w,h.

        The decoder refines boxes after every layer but returns each layer's starting box:
        the last refinement is applied here, as upstream does."""
        box_deltas = self.transformer.decoder.bbox_embed(queries)
        return (inverse_sigmoid(reference_boxes.transpose(0, 1)) + box_deltas).sigmoid()

    def segment(self, backbone_fpn: list[Tensor], queries: Tensor, memory: Tensor, prompt: Tensor,
                prompt_mask: Tensor, record: Recorder | None = None) -> dict[str, Tensor]:
        """Last layer's queries (B,Q,256) -> pred_masks (B,Q,288,288), semantic_seg (B,1,288,288)."""
        masks = self.segmentation_head(backbone_fpn, queries, memory, prompt, prompt_mask)
        if record is not None:
            record("10_seg_head", stage_tensors(masks))
        return masks

    def forward_grounding(
        self,
        features: Features,
        text: dict[str, Tensor],
        boxes: Tensor | None = None,
        box_labels: Tensor | None = None,
        record: Recorder | None = None,
    ) -> dict[str, Tensor]:
        """Image features + text (+ boxes (N,B,4) normalised cx,cy,w,h with box_labels (N,B) bool,
        True = positive; None = text only) -> outputs of upstream ``forward_grounding`` (last layer):

        encoder_hidden_states (5184,B,256), presence_feats (1,B,256), queries (B,200,256),
        presence_logit_dec (B,1), pred_logits (B,200,1) (query logits, presence not applied),
        pred_boxes (B,200,4) normalised cx,cy,w,h, pred_boxes_xyxy (B,200,4),
        pred_masks (B,200,288,288) logits, semantic_seg (B,1,288,288) logits.

        The stages are walked by the component chain (`toolkit.model.chain.ground`), as a bundle's are.
        """
        fpn, pos = features["backbone_fpn"], features["vision_pos_enc"]
        if boxes is None:
            boxes = fpn[-1].new_zeros(0, fpn[-1].shape[0], 4)
            box_labels = torch.zeros(0, fpn[-1].shape[0], dtype=torch.bool, device=fpn[-1].device)
        stages = _ChainStages(self, fpn[-1], record)
        image = {"fpn_288": fpn[0], "fpn_144": fpn[1], "fpn_72": fpn[-1], "image_pos": pos[-1]}
        prompt = {"text_features": text["language_features"], "text_mask": text["language_mask"]}
        found = ground(stages, image, prompt, boxes, box_labels, concat=torch.cat)
        out = {
            "encoder_hidden_states": found["memory"],
            "presence_feats": stages.presence_feats,
            "queries": found["queries"],
            "presence_logit_dec": found["presence_logit"],
            "pred_logits": found["pred_logits"],
            "pred_boxes": found["pred_boxes"],
            "pred_boxes_xyxy": box_cxcywh_to_xyxy(found["pred_boxes"]),
            "pred_masks": found["pred_masks"],
            "semantic_seg": found["semantic_seg"],
        }
        if record is not None:
            record("11_grounding_out", stage_tensors(out))
        return out

    def forward(
        self,
        image: Tensor,
        token_ids: Tensor,
        boxes: Tensor | None = None,
        box_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The whole detector in one graph: image (B,3,1008,1008) + ids (B,77) (+ boxes) ->
        grounding outputs."""
        features = self.encode_image(image)
        return self.forward_grounding(features, self.encode_text(token_ids), boxes, box_labels)


class _ChainStages:
    """The Detector's stage methods under the component chain's names and feeds (`ground` calls it as a
    `run`), recording the golden stages. Beyond the components' outputs it keeps what the grounding
    outputs and stage 09 hold: every decoder layer (all are scored, as upstream does) and the
    presence features."""

    def __init__(self, detector: Detector, coarsest: Tensor, record: Recorder | None):
        self.detector, self.coarsest, self.record = detector, coarsest, record
        self.layers = self.presence_feats = None

    def __call__(self, name: str, **feeds: Tensor) -> dict[str, Tensor]:
        return getattr(self, name)(**feeds)

    def geometry_encoder(self, boxes, box_labels, image_features, image_pos):
        tokens, mask = self.detector.encode_geometry(boxes, box_labels, image_features, image_pos, self.record)
        return {"geometry_tokens": tokens, "geometry_mask": mask}

    def fusion_encoder(self, image_features, image_pos, prompt, prompt_mask):
        return {"memory": self.detector.fuse(image_features, image_pos, prompt, prompt_mask, self.record)["memory"]}

    def fusion_decoder(self, memory, image_pos, prompt, prompt_mask):
        pos_embed = image_pos.flatten(2).permute(2, 0, 1)  # sequence-first, as the fusion encoder's
        hs, reference_boxes, presence_logits, self.presence_feats = self.detector.decode(
            memory, pos_embed, prompt, prompt_mask, self.record)
        self.layers = hs.transpose(1, 2)  # -> batch-first (layers, B, Q, C)
        queries = self.layers[-1]
        return {"queries": queries, "pred_boxes": self.detector.predict_boxes(queries, reference_boxes[-1]),
                "presence_logit": presence_logits[-1].transpose(0, 1)}

    def scoring(self, queries, prompt, prompt_mask):
        # `queries` is the last of the decoder layers kept above; the image model keeps the raw
        # query logits (presence enters at post-processing)
        return {"pred_logits": self.detector.score(self.layers, prompt, prompt_mask, self.record)[-1]}

    def segmentation_head(self, fpn_288, fpn_144, queries, memory, prompt, prompt_mask):
        return self.detector.segment([fpn_288, fpn_144, self.coarsest], queries, memory, prompt, prompt_mask,
                                     self.record)


def detections(
    outputs: dict[str, Tensor],
    image_hw: tuple[int, int],
    score_threshold: float = 0.5,
    record: Recorder | None = None,
) -> dict[str, np.ndarray]:
    """Grounding outputs (batch 1) -> detections at the original image size (toolkit.pipeline.postprocess)."""
    arrays = {
        name: outputs[name].detach().cpu().numpy()
        for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logit_dec")
    }
    found = postprocess_grounding(
        arrays["pred_logits"],
        arrays["pred_boxes"],
        arrays["pred_masks"],
        arrays["presence_logit_dec"],
        image_hw,
        score_threshold,
    )
    if record is not None:
        # query_indices is ours (which queries were kept); the stage holds upstream's outputs.
        record("12_postprocess", stage_tensors({k: v for k, v in found.items() if k != "query_indices"}))
    return found
