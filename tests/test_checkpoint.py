"""Checkpoint loading, validation and `toolkit inspect`."""
import json
import os
import zlib

import numpy as np
import pytest
import torch
from conftest import layout_state_dict

from toolkit.checkpoint import layout
from toolkit.checkpoint.inventory import component_rows
from toolkit.checkpoint.loader import load_checkpoint
from toolkit.checkpoint.weights import fill, synthetic_state_dict
from toolkit.cli import main

FULL_LAYOUT = {  # component -> (numbers, entries) of the released checkpoint
    "Total": (585_670_291, 2028), "Detector": (573_926_673, None), "Tracker": (11_743_618, None),
    "Text Encoder": (63_559_424, 151), "Vision Encoder": (477_621_979, 1171),
    "dead SAM3 ViT trunk": (447_417_344, 420), "Scoring Module": (1_182_976, 10),
    "Geometry Encoder": (8_215_808, 76), "Segmentation Head": (2_298_881, 28),
    "Transformer Fusion": (21_047_605, 283), "Memory Encoder Backbone": (1_384_608, 40),
    "Object Pointer": (213_824, 8), "SAM Mask Decoder": (4_215_109, 131),
    "SAM Prompt Encoder": (6_476, 17), "Memory Attention": (5_922_304, 106),
    "Mask Downsample": (17, 2), "Maskmem Tpos Enc": (448, 1), "No Mem Embed": (256, 1),
    "No Mem Pos Enc": (256, 1), "No Obj Embed Spatial": (64, 1), "No Obj Ptr": (256, 1),
}


def test_inventory_of_the_full_layout():
    rows = {r.name: r for r in component_rows({e.key: e.shape for e in layout.entries()})}
    for name, (numel, keys) in FULL_LAYOUT.items():
        assert rows[name].numel == numel, name
        if keys is not None:
            assert rows[name].keys == keys, name


def test_fill_rule_branches():
    rng = np.random.default_rng(zlib.crc32(b"x.weight"))
    np.testing.assert_array_equal(fill("x.weight", (3, 4), "float32"),
                                  (rng.standard_normal((3, 4)) / 2.0).astype(np.float32))
    assert fill("a.num_batches_tracked", (), "int64").shape == ()
    assert fill("tracker.sam_mask_decoder.pred_obj_score_head.layers.2.bias", (1,), "float32")[0] == 2.0


def test_default_checkpoint_loads_all_live_keys(default_checkpoint):
    ckpt = load_checkpoint(default_checkpoint)
    assert len(ckpt.state_dict) == 1608 and ckpt.dead_keys == 0
    assert sum(t.numel() for t in ckpt.state_dict.values()) == 138_252_947
    ref = synthetic_state_dict()
    for key in ("detector.backbone.vision_backbone.trunk.model.head.3.weight", "tracker.no_obj_ptr"):
        assert torch.equal(ckpt.state_dict[key], ref[key])


def test_bare_state_dict_and_dead_trunk_are_accepted(tmp_path):
    sd = layout_state_dict()
    dead = [e for e in layout.entries() if e.dead][:3]
    sd.update({e.key: torch.zeros(()).expand(e.shape) for e in dead if e.dtype == "float32"})
    torch.save(sd, tmp_path / "bare.pth")
    ckpt = load_checkpoint(tmp_path / "bare.pth")
    assert ckpt.container == "bare state_dict" and len(ckpt.state_dict) == 1608
    assert ckpt.dead_keys == sum(e.dtype == "float32" for e in dead)


@pytest.mark.full
def test_inspect_cli_on_the_full_released_layout(tmp_path, capsys):
    assert main(["make-default", str(tmp_path / "full.pth"), "--with-dead-trunk"]) == 0
    assert os.path.getsize(tmp_path / "full.pth") > 2.3e9
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "full.pth"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["components"]}
    for name, (numel, keys) in FULL_LAYOUT.items():
        assert rows[name]["numel"] == numel and (keys is None or rows[name]["keys"] == keys), name
    assert report["dead_trunk"] == {"keys": 420, "numel": 447_417_344, "dropped": True}
    assert report["live"] == {"keys": 1608, "numel": 138_252_947}
    assert main(["inspect", str(tmp_path / "full.pth")]) == 0
    text = capsys.readouterr().out
    assert "585,670,291" in text and "NOT the trained" in text and "dropped on load" in text


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def _mutations(tmp_path):
    """(name, writer, expected message fragment) for each bad-checkpoint case."""
    key = "detector.geometry_encoder.final_proj.weight"

    def save(sd, wrap=True):
        path = tmp_path / "bad.pth"
        torch.save({"model": sd} if wrap else sd, path)
        return path

    def missing():
        sd = layout_state_dict(); del sd[key]; return save(sd)

    def unexpected():
        sd = layout_state_dict(); sd["detector.extra.weight"] = torch.zeros(1); return save(sd)

    def shape():
        sd = layout_state_dict(); sd[key] = torch.zeros(3, 3); return save(sd)

    def dtype():
        sd = layout_state_dict(); sd[key] = sd[key].half(); return save(sd)

    def non_finite():
        sd = layout_state_dict(); sd[key] = torch.full(sd[key].shape, float("nan")); return save(sd)

    def truncated():
        path = save(layout_state_dict())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def not_a_checkpoint():
        path = tmp_path / "image.pth"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
        return path

    def full_sam3():
        sd = {k: v for k, v in layout_state_dict().items() if ".trunk.model." not in k}
        sd["detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight"] = torch.zeros(3072, 1024)
        sd["detector.backbone.language_backbone.encoder.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(1)
        return save(sd)

    def other_backbone():
        sd = layout_state_dict()
        sd["detector.backbone.vision_backbone.trunk.model.backbone.model.features.0.0.c.weight"] = torch.zeros(32, 3, 3, 3)
        return save(sd)

    def other_text_encoder():
        prefix = "detector.backbone.language_backbone.encoder.transformer."
        sd = {k: v for k, v in layout_state_dict().items()
              if not k.startswith(prefix) or int(k[len(prefix):].split(".")[0]) < 6}
        return save(sd)

    def runs_code():
        path = tmp_path / "evil.pth"
        torch.save({"model": _RunsCode()}, path)
        return path

    return [
        ("missing", missing, "missing keys: " + key),
        ("unexpected", unexpected, "unexpected keys: detector.extra.weight"),
        ("shape", shape, f"shape mismatch: {key} [3, 3] (expected [256, 256])"),
        ("dtype", dtype, f"dtype mismatch: {key} float16 (expected float32)"),
        ("non_finite", non_finite, f"non-finite values (NaN/Inf) in {key}"),
        ("truncated", truncated, "not a readable PyTorch checkpoint"),
        ("not_a_checkpoint", not_a_checkpoint, "not a PyTorch checkpoint"),
        ("full_sam3", full_sam3, "SAM3 ViT-H image encoder (full SAM3) and the SAM3 text encoder"),
        ("other_backbone", other_backbone, "RepViT-M1.1 image encoder"),
        ("other_text_encoder", other_text_encoder, "MobileCLIP text encoder of width 512 with 6 transformer layers"),
        ("runs_code", runs_code, "refused to unpickle"),
        ("absent", lambda: tmp_path / "nope.pth", "does not exist"),
    ]


@pytest.mark.parametrize("case", [m[0] for m in _mutations(None)])
def test_bad_checkpoint_is_one_line_error(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, writer, fragment = next(m for m in _mutations(tmp_path) if m[0] == case)
    path = writer()
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert fragment in lines[0]
    assert "supported: EfficientSAM3 RepViT-M0.9" in lines[0] or case not in ("full_sam3", "other_backbone")
    assert not (tmp_path / "pwned-by-checkpoint").exists()
