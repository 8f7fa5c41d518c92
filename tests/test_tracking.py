"""Video tracking: memory-bank rules, frame sources, `toolkit track` end to end against the golden.

The golden clip: three 600x400 frames, a positive click at relative (0.52, 0.45) on frame 0 =
pixel (312, 180), propagation to frames 1 and 2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import BANK_EXACT_RTOL
from PIL import Image

from toolkit.cli import main
from toolkit.errors import ToolkitError
from toolkit.model.tracker import effective_iou_score, memory_mask_probability
from toolkit.pipeline import memory_bank as mb
from toolkit.pipeline.intermediates import load_dump
from toolkit.pipeline.memory_bank import MemoryBank, PointerMemory, SpatialMemory
from toolkit.pipeline.video import ClickPrompt, mask_nms, natural_key, open_frames
from toolkit.verify.golden import compare_tensor, compare_tracker_dump, golden_path, load_stage, manifest

FRAMES = str(golden_path("inputs", "tracker_frames"))
CLICK = "312,180"
COND = mb.NUM_MASKMEM - 1  # tpos index of conditioning memories


# --- memory bank ------------------------------------------------------------------------------

def _bank(num_frames: int, cond=(0,), quality: dict[int, float] | None = None) -> MemoryBank:
    bank = MemoryBank(num_frames)
    for t in cond:
        bank.add_conditioning(t, f"cond{t}")
    for t, q in (quality or {}).items():
        bank.add_tracked(t, f"trk{t}", q)
    return bank


def _spatial(plan):
    return [(m.frame, m.tpos_index) for m in plan.spatial]


def _pointers(plan):
    return [(p.frame, p.distance) for p in plan.pointers]


def test_golden_clip_plans():
    """Frame 1 attends to the prompted frame only; frame 2 adds frame 1's memory but not its
    pointer (upstream never takes a pointer from the farthest candidate)."""
    bank = _bank(3)
    assert bank.plan(0) is None  # the prompted frame takes the no-memory path
    plan = bank.plan(1)
    assert _spatial(plan) == [(0, COND)] and _pointers(plan) == [(0, 1)] and plan.max_ptr_distance == 3
    bank.add_tracked(1, "trk1", 0.5)
    plan = bank.plan(2)
    assert _spatial(plan) == [(0, COND), (1, 0)] and _pointers(plan) == [(0, 2)]


def test_ten_frames_keep_the_six_most_recent():
    plan = _bank(10, quality={t: 0.5 for t in range(1, 9)}).plan(9)
    assert _spatial(plan) == [(0, COND), (3, 5), (4, 4), (5, 3), (6, 2), (7, 1), (8, 0)]
    assert len(plan.spatial) == mb.NUM_MASKMEM
    assert _pointers(plan) == [(0, 9)] + [(9 - d, d) for d in range(1, 8)]  # frame 1: farthest candidate
    assert plan.max_ptr_distance == 10


def test_absent_object_frames_are_skipped():
    """Frames 5, 6 without the object (quality 0) are passed over; distances are ranks among the kept."""
    quality = {t: 0.5 for t in range(1, 9)} | {5: 0.0, 6: 0.0}
    plan = _bank(10, quality=quality).plan(9)
    assert _spatial(plan) == [(0, COND), (1, 5), (2, 4), (3, 3), (4, 2), (7, 1), (8, 0)]
    assert _pointers(plan) == [(0, 9), (8, 1), (7, 2), (4, 3), (3, 4), (2, 5)]


def test_previous_frame_is_always_a_candidate():
    quality = {t: 0.5 for t in range(1, 8)} | {8: 0.0}
    plan = _bank(10, quality=quality).plan(9)
    assert _spatial(plan)[-1] == (8, 0) and _pointers(plan)[1] == (8, 1)
    assert mb.candidate_frames(9, quality, 10, reverse=False)[-2:] == [7, 8]


def test_long_video_caps_memories_and_pointers():
    plan = _bank(40, quality={t: 0.9 for t in range(1, 39)}).plan(39)
    assert _spatial(plan) == [(0, COND)] + [(39 - k, k - 1) for k in range(6, 0, -1)]
    # 15 candidates (38 .. 24); pointers from all but the farthest, plus the prompted frame.
    assert _pointers(plan) == [(0, 39)] + [(39 - d, d) for d in range(1, 15)]
    assert plan.max_ptr_distance == mb.MAX_OBJ_PTRS


def test_reverse_tracking_plan():
    """Backward from a prompt on the last frame: candidates come from the later frames."""
    plan = _bank(10, cond=(9,), quality={8: 0.5, 7: 0.5, 6: 0.5}).plan(5, reverse=True)
    assert _spatial(plan) == [(9, COND), (8, 2), (7, 1), (6, 0)]
    assert _pointers(plan) == [(9, 4), (6, 1), (7, 2)]
    assert mb.candidate_frames(9, {}, 10, reverse=True) == []
    assert mb.candidate_frames(0, {}, 10, reverse=False) == []


def test_at_most_four_conditioning_frames():
    """The closest before, the closest at or after, then the others by distance."""
    assert mb.select_conditioning(25, [0, 10, 20, 30, 40]) == [20, 30, 10, 40]
    plan = _bank(50, cond=(0, 10, 20, 30, 40)).plan(25)
    assert _spatial(plan) == [(20, COND), (30, COND), (10, COND), (40, COND)]
    assert _pointers(plan) == [(20, 5), (10, 15)]  # forward tracking: pointers from the past only


def test_plan_types_and_errors():
    plan = _bank(3).plan(1)
    assert plan.spatial == (SpatialMemory(0, COND),) and plan.pointers == (PointerMemory(0, 1),)
    with pytest.raises(ValueError, match="no conditioning frame"):
        MemoryBank(3).plan(1)
    with pytest.raises(ValueError, match="is a conditioning frame"):
        _bank(3).add_tracked(0, "x", 1.0)


def test_multimask_rule():
    assert mb.use_multimask(0) and mb.use_multimask(1)  # tracked frames, one click
    assert not mb.use_multimask(2)  # a box, or two clicks


def test_frame_quality_matches_the_module():
    scores = torch.tensor([[2.0], [-1.0], [0.3]])
    ious = torch.tensor([0.9, 0.8, 0.5])
    assert mb.frame_quality(scores.flatten().tolist(), ious.tolist()) == pytest.approx(
        float(effective_iou_score(scores, ious[:, None])), abs=1e-7)
    assert mb.frame_quality([-3.0], [0.99]) == 0.0  # absent object: never selected


# --- frame sources and prompts ---------------------------------------------------------------

def test_natural_order_of_frame_files(tmp_path):
    for i, name in enumerate(["f10.png", "f2.png", "f1.jpg", "notes.txt"]):
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / name)
    frames = open_frames(tmp_path)
    assert frames.names == ["f1.jpg", "f2.png", "f10.png"] and frames.size_hw == (4, 6)
    assert natural_key("a9") < natural_key("a10")


def test_video_file_frames(tmp_path):
    av = pytest.importorskip("av")
    pngs = [np.array(Image.open(golden_path("inputs", "tracker_frames", f"{t}.png")).convert("RGB")) for t in range(3)]
    path = tmp_path / "clip.mov"
    with av.open(str(path), "w") as out:  # lossless (PNG codec)
        stream = out.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 600, 400, "rgb24"
        for rgb in pngs:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    frames = open_frames(path)
    assert len(frames) == 3 and frames.size_hw == (400, 600) and frames.fps == 10
    assert all(np.array_equal(frames.rgb(t), pngs[t]) for t in range(3))


def test_click_maps_to_the_golden_prompt():
    """Pixel (312, 180) of 600x400 = upstream's relative (0.52, 0.45) scaled to 1008, bit for bit."""
    points, labels = ClickPrompt(((312.0, 180.0),), (1,)).model_points((400, 600))
    assert torch.equal(points, torch.tensor([[[0.52, 0.45]]], dtype=torch.float32) * 1008)
    assert labels.tolist() == [[1]]
    points, labels = ClickPrompt(((30.0, 40.0),), (0,), (60.0, 40.0, 300.0, 200.0)).model_points((400, 600))
    assert labels.tolist() == [[2, 3, 0]]  # the box corners first, as upstream
    torch.testing.assert_close(points[0, 1], torch.tensor([504.0, 504.0]))


def test_click_prompt_needs_a_positive_click_or_a_box():
    with pytest.raises(ToolkitError, match="needs a positive point or a box"):
        ClickPrompt(((3.0, 3.0),), (0,)).check((10, 10))
    ClickPrompt(((3.0, 3.0),), (0,), (1.0, 1.0, 5.0, 5.0)).check((10, 10))


def test_mask_nms_keeps_best_of_overlapping():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :5] = masks[1, :6] = masks[2, 8:] = True
    assert mask_nms(masks, np.array([0.6, 0.9, 0.7])).tolist() == [1, 2]


@pytest.fixture
def odd_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "sizes").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / "sizes" / "0.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "sizes" / "1.png")
    (tmp_path / "broken.mp4").write_text("not a video")
    return tmp_path


@pytest.mark.parametrize("argv,fragment", [
    (["--frames", "{tmp}/empty", "--point", CLICK], "no image files"),
    (["--frames", "{tmp}/nowhere", "--point", CLICK], "does not exist"),
    (["--frames", "{tmp}/broken.mp4", "--point", CLICK], "cannot read video"),
    (["--frames", "{tmp}/sizes", "--point", "1,1"], "all frames must have one size"),
    (["--frames", FRAMES + "/0.png", "--point", CLICK], "is a single image"),
    (["--frames", FRAMES, "--point", "700,10"], "point 700,10 is outside the 600x400 frame"),
    (["--frames", FRAMES, "--point", "10,-1"], "is outside the 600x400 frame"),
    (["--frames", FRAMES, "--box", "10,10,5,5"], "is not a non-empty box inside"),
    (["--frames", FRAMES, *["--point", CLICK] * 17], "17 prompt points (a box counts as two); at most 16"),
    (["--frames", FRAMES, "--point", CLICK, "--frame", "3"], "--frame 3 is out of range"),
    (["--frames", FRAMES, "--point", CLICK, "--frame", "-1"], "--frame -1 is out of range"),
    (["--frames", FRAMES], "no prompt"),
    (["--frames", FRAMES, "--neg-point", CLICK], "no prompt"),
    (["--frames", FRAMES, "--prompt", "cup", "--point", CLICK], "not both"),
    (["--frames", FRAMES, "--prompt", " "], "the text prompt is empty"),
    (["--frames", FRAMES, "--prompt", "cup", "--threshold", "1"], "--threshold must be in [0, 1)"),
    (["--frames", FRAMES, "--point", CLICK, "--checkpoint", "nope.pth"], "does not exist"),
])
def test_bad_input_is_one_line_error(argv, fragment, odd_folders, capsys, monkeypatch):
    monkeypatch.chdir(odd_folders)
    argv = [a.replace("{tmp}", str(odd_folders)) for a in argv]
    assert main(["track", *argv, "--out", "out"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (odd_folders / "out").exists()
    assert not any(p.name.startswith(".out.partial") for p in odd_folders.iterdir())


# --- the golden clip end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_track(tmp_path_factory):
    """`toolkit track` with the golden click and stage dumps; returns (out dir, dump)."""
    root = tmp_path_factory.mktemp("track")
    out, dump = root / "out", root / "stages"
    assert main(["track", "--frames", FRAMES, "--point", CLICK, "--out", str(out),
                 "--save-intermediates", str(dump)]) == 0
    return out, load_dump(dump)


@pytest.mark.full
def test_track_reproduces_every_golden_stage(golden_track):
    _, dump = golden_track
    results = compare_tracker_dump(dump)
    bad = [r["message"] for r in results if not r["ok"]]
    assert not bad, "\n".join(bad)
    golden_stages = [s for s in manifest()["stages"] if s.startswith("trk_")]
    assert len(golden_stages) == 27 and {r["stage"] for r in results} == set(golden_stages)
    assert len(results) == 87


@pytest.fixture(scope="module")
def golden_track_upstream_mask(tmp_path_factory):
    """`toolkit track` on the golden clip with the prompted frame's memory encoded from upstream's own
    mask (its stored 288 logits, resized and binarised the same way) instead of ours: our logits
    differ from upstream's by float error, and on some CPUs a few pixels near 0 flip and change the
    conditioning memory (see test_binarisation_flips_are_explained). With the binarisation at a
    boundary both sides share, what remains is the pipeline's memory bank. Returns the dump."""
    import torch.nn.functional as F

    from toolkit.pipeline import video
    from toolkit.verify.golden import stage_tensor
    upstream = F.interpolate(torch.from_numpy(stage_tensor("trk_f0_prompt__07_track_step", "out.pred_masks")),
                             size=(1008, 1008), mode="bilinear", align_corners=False)
    ours = video.memory_mask_probability

    def shared(logits, from_points):
        return ours(upstream if from_points else logits, from_points)
    dump = tmp_path_factory.mktemp("track-upstream-mask") / "stages"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video, "memory_mask_probability", shared)
        assert main(["track", "--frames", FRAMES, "--point", CLICK, "--out", str(dump.parent / "out"),
                     "--save-intermediates", str(dump)]) == 0
    return load_dump(dump)


@pytest.mark.full
@pytest.mark.parametrize("frame", [1, 2])
def test_memory_attention_is_exact(golden_track_upstream_mask, frame):
    """The memory bank equals upstream's: memory attention within BANK_EXACT_RTOL (the golden tolerance
    would also accept a bank with one pointer too many; see conftest for the measured separation)."""
    stage = f"trk_f{frame}_propagate__05_memory_attention"
    result = compare_tensor(stage, "out.memory", golden_track_upstream_mask[stage[4:]]["out.memory"],
                            load_stage(stage))
    assert result["max_abs"] <= BANK_EXACT_RTOL * result["max_ref"], result["message"]


@pytest.mark.full
def test_track_outputs_are_the_golden_masks(golden_track):
    out, _ = golden_track
    report = json.loads((out / "tracks.json").read_text())
    assert report["num_frames"] == 3 and [o["id"] for o in report["objects"]] == [1]
    assert "NOT the trained" in report["weights"]
    for t, frame in enumerate(report["per_frame"]):
        golden = load_stage(f"trk_f{t}_final__09_final")
        (obj,) = frame["objects"]
        assert frame["index"] == t and obj["score_logit"] == pytest.approx(float(golden["out.obj_scores"][0, 0]),
                                                                            abs=1e-3)
        mask = np.array(Image.open(out / obj["mask"])) > 0
        assert mask.shape == (400, 600) and obj["mask_area_px"] == int(mask.sum())
        idx, val = golden["out.video_res_masks@idx"], golden["out.video_res_masks@val"] > 0
        assert np.count_nonzero(mask.reshape(-1)[idx] != val) <= 1e-3 * len(idx)
    gif = Image.open(out / "overlay.gif")
    assert gif.n_frames == 3 and gif.size == (480, 320)
    assert Image.open(out / "overlay_strip.png").size == (3 * 480 + 2 * 4, 18 + 320)


def test_golden_choices_are_well_conditioned():
    """The tracker's discrete steps on the golden clip - the mask chosen by predicted IoU, the object
    present (score > 0) - are far from their decision boundaries compared with the fixture's float
    tolerance, so every CPU takes the same branch and the stages after them compare meaningfully.
    (The mask binarisation is not: see test_binarisation_flips_are_explained.)"""
    for stage in ("f0_prompt", "f1_propagate", "f2_propagate"):
        decoded = load_stage(f"trk_{stage}__03_sam_mask_decoder")
        ious, score = np.sort(decoded["out.1"][0])[::-1], float(decoded["out.3"][0, 0])
        assert ious[0] - ious[1] > 100 * (1e-3 * ious[0] + 1e-5), (stage, ious)
        assert abs(score) > 100 * (1e-3 * abs(score) + 1e-5), (stage, score)


PREFLIGHT = "preflight__06_memory_encoder"


def _flipped_preflight(dump: dict, tracker, pixels: np.ndarray, shift: float = 0.0) -> dict:
    """The preflight memory-encoder dump as another CPU would give it if these mask pixels had
    landed on the other side of 0: logits negated there, memory recomputed by the model."""
    logits = dump[PREFLIGHT]["in.binarised_mask_logits"].copy()
    logits.reshape(-1)[pixels] *= -1
    pix = torch.from_numpy(dump["f0_prompt__01_image_features"]["out.vision_features"])
    score = torch.from_numpy(dump["f0_prompt__07_track_step"]["out.object_score_logits"])
    with torch.no_grad():
        features, pos = tracker.encode_memory(pix, memory_mask_probability(torch.from_numpy(logits), True), score)
    features = features.numpy().copy()
    features[0, :, 0, 0] += shift  # a difference no flip explains (far from the flips below)
    return {**dump, PREFLIGHT: {"in.binarised_mask_logits": logits, "out.vision_features": features,
                                "out.vision_pos_enc.0": pos.numpy()}}


@pytest.mark.full
def test_binarisation_flips_are_explained(golden_track):
    """The clicked frame's mask is binarised at 0, and a logit within float error of 0 lands on either
    side on another CPU. Simulated: the pixels nearest 0 flip. The golden comparison accepts exactly the
    memory differences inside their receptive field; a difference elsewhere, or a flip of a logit far
    from 0, still fails."""
    from toolkit.api import load_video_tracker
    _, dump = golden_track
    tracker = load_video_tracker()[0].tracker
    logits = dump[PREFLIGHT]["in.binarised_mask_logits"].reshape(-1)
    # Pixels near 0 and near the image's centre row, so their receptive field misses the corner cell.
    rows = np.arange(logits.size) // 1008
    near_zero = np.argsort(np.abs(logits) + 1e3 * (np.abs(rows - 504) > 200))[:4]
    assert np.abs(logits[near_zero]).max() < 1e-5

    def judge(flipped: dict) -> list[dict]:
        return [r for r in compare_tracker_dump(flipped) if r["stage"] == "trk_" + PREFLIGHT]

    plain = compare_tensor("trk_" + PREFLIGHT, "out.vision_features",
                           _flipped_preflight(dump, tracker, near_zero)[PREFLIGHT]["out.vision_features"])
    assert not plain["ok"], "the simulated flips must change the sampled memory beyond the tolerance"
    explained = judge(_flipped_preflight(dump, tracker, near_zero))
    assert all(r["ok"] for r in explained), [r["message"] for r in explained]
    assert "4 mask pixel(s) flipped" in " ".join(r["message"] for r in explained)
    outside = judge(_flipped_preflight(dump, tracker, near_zero, shift=1.0))
    assert not all(r["ok"] for r in outside) and "1 outside" in " ".join(r["message"] for r in outside)
    far = judge(_flipped_preflight(dump, tracker, np.append(near_zero, np.argmax(np.abs(logits)))))
    assert not all(r["ok"] for r in far)


# --- text prompts --------------------------------------------------------------------------------

@pytest.mark.full
def test_text_prompt_tracks_the_detected_objects(tmp_path, monkeypatch):
    """The detector finds the objects on frame 0, then the tracker follows them as one batch.

    The untrained default weights score every query about 0.15 with near-identical blob masks,
    so mask NMS would leave one object; keeping the best two exercises the batched tracker.
    """
    from toolkit.pipeline import video
    monkeypatch.setattr(video, "mask_nms", lambda masks, scores: np.sort(np.argsort(-scores)[:2]))
    out = tmp_path / "out"
    assert main(["track", "--frames", FRAMES, "--prompt", "person", "--threshold", "0.1", "--out", str(out)]) == 0
    report = json.loads((out / "tracks.json").read_text())
    assert [o["id"] for o in report["objects"]] == [1, 2]
    assert all(o["detection_score"] > 0.1 and len(o["box_xyxy_px"]) == 4 for o in report["objects"])
    assert [f["index"] for f in report["per_frame"]] == [0, 1, 2]
    # The prompt frame shows the detected masks themselves (mask prompts: object score logit +10).
    assert [o["score_logit"] for o in report["per_frame"][0]["objects"]] == [10.0, 10.0]
    for frame in report["per_frame"]:
        assert [o["id"] for o in frame["objects"]] == [1, 2]
        for obj in frame["objects"]:
            assert np.isfinite(obj["score_logit"])
            assert np.array(Image.open(out / obj["mask"])).shape == (400, 600)


@pytest.mark.full
def test_backward_tracking_mirrors_forward_tracking(tmp_path):
    """A click on the last frame tracked backward equals the same click on the time-reversed clip
    tracked forward (the rules are symmetric on a 2-frame clip)."""
    from toolkit.api import load_video_tracker
    for name, order in (("clip", (0, 1)), ("reversed", (1, 0))):
        (tmp_path / name).mkdir()
        for i, t in enumerate(order):
            (tmp_path / name / f"{i}.png").write_bytes(golden_path("inputs", "tracker_frames", f"{t}.png").read_bytes())
    tracker, _ = load_video_tracker(None)
    click = ClickPrompt(((316.0, 182.0),), (1,))
    backward = list(tracker.prompt(open_frames(tmp_path / "clip"), 1, click).propagate())
    forward = list(tracker.prompt(open_frames(tmp_path / "reversed"), 0, click).propagate())
    assert [r.index for r in backward] == [1, 0] and [r.index for r in forward] == [0, 1]
    for b, f in zip(backward, forward):
        assert np.array_equal(b.masks, f.masks) and b.masks.any()
        np.testing.assert_array_equal(b.object_score_logits, f.object_score_logits)
