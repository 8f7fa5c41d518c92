"""The torch-free bundle runtime (toolkit/runtime): its numpy re-implementations against the torch
operations they replace, and a bundle run in a virtual environment without torch against
`toolkit segment` / `toolkit track` and the golden fixture.

Thresholded outputs are compared well-conditioned: pixels whose reference value is within float
error of the threshold (CPUs and runtimes round differently) are counted apart, every other pixel
must agree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import masks_agree, with_prompt_cache

from toolkit.verify.golden import golden_available, golden_path

REPO = Path(__file__).resolve().parents[1]
needs_golden = pytest.mark.skipif(not golden_available(), reason="golden fixture not on this machine")


# --- numpy re-implementations == the torch operations --------------------------------------------

@pytest.mark.parametrize("hw", [(400, 600), (1008, 1008), (37, 2999), (1500, 1200), (2000, 3000), (1009, 1007),
                                (5, 5), (1008, 17)])
def test_uint8_antialiased_resize_is_bit_identical_to_torch(hw):
    from toolkit.runtime.preprocess import resize_uint8_antialiased
    x = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = F.interpolate(torch.tensor(x).permute(2, 0, 1)[None], size=(1008, 1008), mode="bilinear", antialias=True,
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(resize_uint8_antialiased(x, (1008, 1008)), ref)


@needs_golden
def test_preprocessing_of_both_paths_equals_the_reference():
    from toolkit.files.images import load_rgb
    from toolkit.pipeline import preprocess as ref
    from toolkit.runtime import preprocess as rt
    rgb = load_rgb(golden_path("inputs", "coffee.png"))
    np.testing.assert_array_equal(rt.preprocess_image(rgb), ref.preprocess_image(rgb).numpy())
    np.testing.assert_array_equal(rt.preprocess_frame(rgb), ref.preprocess_frame(rgb).numpy())
    noise = np.random.default_rng(1).integers(0, 256, (333, 1500, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rt.preprocess_image(noise), ref.preprocess_image(noise).numpy())


def test_bfloat16_storage_rounds_as_torch():
    from toolkit.runtime.video import from_bfloat16, to_bfloat16
    x = np.random.default_rng(2).normal(0, 3, 100_000).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.00390625, 1.01171875]  # exact halfway cases: ties to even
    ref = torch.from_numpy(x).to(torch.bfloat16)
    np.testing.assert_array_equal(to_bfloat16(x), ref.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(from_bfloat16(to_bfloat16(x)), ref.float().numpy())


def test_mask_choice_equals_the_reference():
    from toolkit.model.tracker import mask_decoder
    from toolkit.runtime import video
    assert (video.STABILITY_DELTA, video.STABILITY_THRESH) == (mask_decoder.STABILITY_DELTA,
                                                                mask_decoder.STABILITY_THRESH)
    rng = np.random.default_rng(3)
    masks = rng.normal(0, 1, (6, 4, 288, 288)).astype(np.float32)
    masks[:3, 0] = np.where(masks[:3, 0] > 0, 5.0, -5.0)  # objects 0-2 stable, 3-5 not
    iou = rng.random((6, 4)).astype(np.float32)
    got = video._stable_single_mask(masks, iou)
    ref = mask_decoder.SamMaskDecoder._single_mask_with_stability_fallback(torch.from_numpy(masks),
                                                                          torch.from_numpy(iou))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r.numpy())


def test_tokenizer_ids_equal_the_reference():
    from importlib.resources import files

    from toolkit.pipeline.tokenizer import Tokenizer
    from toolkit.runtime.tokenizer import BpeTokenizer
    ours = BpeTokenizer(Path(str(files("toolkit").joinpath("data", "bpe_simple_vocab_16e6.txt.gz"))))
    for text in ("person", "a red cup", "  Caf\u00e9 &amp; <b>na\u00efve</b> r\u00e9sum\u00e9's  ", "don't 42 \u4eba",
                 "x " * 90):
        np.testing.assert_array_equal(ours(text), Tokenizer()(text).numpy())


def test_the_runtime_imports_no_torch_and_only_the_shared_modules():
    code = ("import sys, toolkit.runtime, toolkit.runtime.cli; "
            "print(json.dumps(['torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('toolkit.') "
            "and not m.startswith('toolkit.runtime'))]))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    torch_loaded, outside = json.loads(done.stdout)
    assert not torch_loaded
    assert outside == ["toolkit.model", "toolkit.model.chain", "toolkit.pipeline", "toolkit.pipeline.memory_bank",
                       "toolkit.pipeline.postprocess"]


# --- a bundle in a virtual environment without torch ---------------------------------------------

RUNTIME_DEPS = ["numpy", "onnxruntime", "pillow", "regex", "ftfy", "jsonschema"]


@pytest.fixture(scope="session")
def torchless_python(tmp_path_factory) -> Path:
    """A venv with the runtime's dependencies and this project installed without its extras (from a
    copy of the sources, so that the build writes nothing into the working tree)."""
    import shutil
    root = tmp_path_factory.mktemp("torchless")
    source = root / "src"
    shutil.copytree(REPO / "toolkit", source / "toolkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *RUNTIME_DEPS], check=True, capture_output=True)
    subprocess.run([*pip, "--no-deps", str(source)], check=True, capture_output=True)
    return python


def _run_torchless(python: Path, script: str, *args: str) -> str:
    # cwd outside the repository: `toolkit` must come from the venv's installed copy
    done = subprocess.run([str(python), "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          check=False, cwd=python.parents[2], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_torchless_venv_has_no_torch_and_the_installed_runtime(torchless_python):
    out = _run_torchless(torchless_python, """
        import importlib.util, json, sys, toolkit.runtime
        print(json.dumps([importlib.util.find_spec("torch") is None, toolkit.runtime.__file__,
                          "torch" in sys.modules]))""")
    no_torch, where, loaded = json.loads(out)
    assert no_torch and not loaded
    assert str(REPO) not in where and "site-packages" in where


SEGMENT_SCRIPT = """
    import sys, numpy as np
    from pathlib import Path
    from toolkit.runtime import Segmenter, open_bundle
    from toolkit.runtime.cli import load_rgb
    bundle, image, out = open_bundle(sys.argv[1]), load_rgb(Path(sys.argv[2])), Path(sys.argv[3])
    segmenter = Segmenter(bundle)
    for case, boxes in (("txt_person", []), ("txt_person_box", [(162.0, 68.0, 438.0, 268.0)])):
        (out / case).mkdir(parents=True)
        record = lambda stage, arrays, d=out / case: np.savez(d / f"{stage}.npz", **arrays)
        found = segmenter(image, "person", boxes, threshold=0.0, record=record)
        np.savez(out / f"{case}.npz", **vars(found))
    print(",".join(segmenter.sessions.loads))
"""

TRACK_SCRIPT = """
    import sys, numpy as np
    from pathlib import Path
    from toolkit.runtime import Tracker, open_bundle
    from toolkit.runtime.cli import Clicks, Folder
    bundle, frames, out = open_bundle(sys.argv[1]), Folder(Path(sys.argv[2])), Path(sys.argv[3])
    (out / "dump").mkdir(parents=True)
    record = lambda stage, arrays: np.savez(out / "dump" / f"{stage}.npz", **arrays)
    session = Tracker(bundle).prompt(frames, 0, Clicks(((312.0, 180.0),), (1,)), record=record)
    results = {f"frame{r.index}": r.masks for r in session.propagate()}
    np.savez(out / "masks.npz", **results)
"""


def _compared(results) -> list[dict]:
    compared = [r for r in results if "not in the dump" not in r["message"]]
    assert compared, "no golden stage was compared"
    return compared


@pytest.mark.full
@needs_golden
def test_torchless_runtime_reproduces_segment_on_the_golden_image_cases(torchless_python, cpu_bundle, tmp_path):
    from toolkit.api import load_detector
    from toolkit.files.images import load_rgb
    from toolkit.pipeline.image import ImageSegmenter
    from toolkit.pipeline.intermediates import load_dump
    from toolkit.verify.golden import compare_dump
    image = golden_path("inputs", "coffee.png")
    loads = _run_torchless(torchless_python, SEGMENT_SCRIPT, str(cpu_bundle), str(image), str(tmp_path)).split(",")
    # sessions are released after use: each component was loaded once per image, the text encoder too
    assert loads.count("vision_encoder") == 2 and loads.count("text_encoder") == 2
    segmenter = ImageSegmenter(load_detector(None)[0])
    rgb = load_rgb(image)
    for case, boxes in (("txt_person", []), ("txt_person_box", [(162.0, 68.0, 438.0, 268.0)])):
        compared = _compared(compare_dump(load_dump(tmp_path / case), case))
        assert [r["message"] for r in compared if not r["ok"]] == [], case
        assert {f"{case}__12_postprocess", f"{case}__07_fusion_encoder", "img__00_preprocess"} <= {
            r["stage"] for r in compared}
        ref = segmenter(rgb, "person", boxes, threshold=0.0)  # `toolkit segment`'s pipeline, PyTorch
        with np.load(tmp_path / f"{case}.npz") as z:
            got = {k: z[k] for k in z.files}
        np.testing.assert_array_equal(got["query_indices"], ref.query_indices)
        np.testing.assert_allclose(got["scores"], ref.scores, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(got["boxes_xyxy_px"], ref.boxes_xyxy_px, atol=1e-2)
        np.testing.assert_allclose(got["mask_probs"], ref.mask_probs, atol=1e-3)
        masks_agree(got["masks"], ref.masks, ref.mask_probs, 0.5, 1e-3)


@pytest.mark.full
@needs_golden
def test_torchless_runtime_reproduces_track_on_the_golden_clip(torchless_python, cpu_bundle, tmp_path):
    from toolkit.api import load_video_tracker
    from toolkit.pipeline.intermediates import load_dump
    from toolkit.pipeline.video import ClickPrompt, open_frames
    from toolkit.verify.golden import compare_tracker_dump
    frames = golden_path("inputs", "tracker_frames")
    _run_torchless(torchless_python, TRACK_SCRIPT, str(cpu_bundle), str(frames), str(tmp_path))
    compared = _compared(compare_tracker_dump(load_dump(tmp_path / "dump")))
    assert [r["message"] for r in compared if not r["ok"]] == []
    assert {"trk_f1_propagate__05_memory_attention", "trk_f2_final__09_final", "trk_f2_propagate__07_track_step",
            "trk_preflight__06_memory_encoder"} <= {r["stage"] for r in compared}
    # `toolkit track`'s pipeline (PyTorch): the same masks on every frame
    tracker = load_video_tracker(None)[0]
    captured = {}
    session = tracker.prompt(open_frames(frames), 0, ClickPrompt(((312.0, 180.0),), (1,)),
                             record=lambda stage, arrays: captured.update(
                                 {stage: {k: np.asarray(v) for k, v in arrays.items()}} if "09_final" in stage else {}))
    ref = {f"frame{r.index}": r.masks for r in session.propagate()}
    with np.load(tmp_path / "masks.npz") as z:
        assert sorted(z.files) == sorted(ref) == ["frame0", "frame1", "frame2"]
        for name, masks in ref.items():
            logits = captured[f"f{name[5:]}_final__09_final"]["out.video_res_masks"][:, 0]
            masks_agree(z[name], masks, logits, 0.0, 1e-3 * np.abs(logits).max() + 1e-5)


@pytest.mark.full
@needs_golden
def test_toolkit_run_uses_the_runtime_and_keeps_its_outputs(cpu_bundle, small_cpu_bundle, tmp_path, monkeypatch,
                                                            capsys):
    """`toolkit run` goes through toolkit.runtime (the PyTorch pipelines are not called), writes what
    `toolkit segment` writes, keeps `--save-intermediates`, and a runtime error is one line, exit 2."""
    from toolkit.cli import main
    from toolkit.pipeline.image import ImageSegmenter

    def forbidden(*_a, **_k):
        raise AssertionError("toolkit run called the PyTorch pipeline")
    monkeypatch.setattr(ImageSegmenter, "__call__", forbidden)
    image = str(golden_path("inputs", "coffee.png"))
    out, dump = tmp_path / "out", tmp_path / "dump"
    assert main(["run", str(cpu_bundle), "--image", image, "--prompt", "person", "--threshold", "0",
                 "--max-objects", "3", "--out", str(out), "--save-intermediates", str(dump)]) == 0
    objects = json.loads((out / "detections.json").read_text())["objects"]
    assert len(objects) == 3 and (out / "overlay.png").is_file() and (out / "mask_002.png").is_file()
    assert {"00_preprocess", "07_fusion_encoder", "12_postprocess"} <= {p.stem for p in dump.glob("*.npz")}
    # an error of the runtime itself (here: a partial bundle without the tracker) is one line, exit 2
    capsys.readouterr()
    assert main(["run", str(small_cpu_bundle), "--frames", str(golden_path("inputs", "tracker_frames")),
                 "--point", "312,180", "--out", str(tmp_path / "t")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[toolkit]")]
    assert len(errors) == 1 and "lacks vision_encoder" in errors[0]


def test_a_bundle_without_text_encoder_takes_only_its_cached_concepts(small_cpu_bundle, tmp_path):
    """A prompt-cache bundle (`--concepts`, text encoder left out): a cached concept passes the check, any
    other prompt is refused in one line before anything runs."""
    from toolkit.runtime import open_bundle
    from toolkit.runtime.errors import RuntimeInputError
    from toolkit.runtime.image import Segmenter
    from toolkit.runtime.tokenizer import BpeTokenizer
    manifest = open_bundle(small_cpu_bundle, checksums=False).manifest
    assert "text_encoder" not in manifest["components"]
    ids = BpeTokenizer(small_cpu_bundle / manifest["tokenizer"]["vocabulary"])("person")
    cached = with_prompt_cache(small_cpu_bundle, tmp_path / "cached", ["person"], ids,
                               np.zeros((1, 77, 256), np.float32), np.zeros((1, 77), bool), "this test")
    segmenter = Segmenter(open_bundle(cached))
    segmenter.check("person", (), (32, 32))
    with pytest.raises(RuntimeInputError, match="'a zebra' is not one of the 1 concepts of the bundle's prompt cache"):
        segmenter.check("a zebra", (), (32, 32))
