"""Bad-input corpus of the commands themselves: images, prompts, boxes, output paths, interrupts
(bundles, archives and target files: tests/test_bad_inputs.py).

Every case runs the real command line (`toolkit.cli.main`) and asserts the documented exit code
(2, or 130 for an interrupt), one line on stderr, no traceback, the inputs untouched and nothing
half-written left behind (the whole working folder is compared before and after). The model is
never run: every check happens before it, and where a case needs the write stage (disk full,
folder permissions, Ctrl-C during inference) the model is replaced by a stand-in that returns one
mask, so the output handling around it is the real one. A full disk is simulated by an
OSError(ENOSPC) at the write site (no tmpfs is mounted by the tests).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit import api
from toolkit.cli import main
from toolkit.errors import ToolkitError
from toolkit.files.images import image_size_hw, read_image
from toolkit.files.outputs import guard_outputs
from toolkit.pipeline import image as image_pipeline
from toolkit.pipeline.image import Detections
from toolkit.pipeline.tokenizer import MAX_PROMPT_TOKENS, check_prompt_text
from toolkit.pipeline.video import open_frames

sys.path.insert(0, str(Path(__file__).parent))
from conftest import layout_state_dict, with_make  # noqa: E402

LONG_PROMPT = " ".join(["person"] * 80)  # 80 tokens


# --- helpers -----------------------------------------------------------------------------------

def snapshot(root: Path) -> dict:
    """Every path under `root` with its mode and, for files, its bytes."""
    return {str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode), p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run(argv, capsys, code=2, fragment="", progress_allowed=False) -> str:
    """Run the CLI; assert the exit code and one error line (holding `fragment`); return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if progress_allowed:  # a failure after the work started may follow progress lines
        lines = [line for line in lines if not line.startswith("[toolkit]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "\x1b" not in lines[0]
    return lines[0]


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (Pillow's size check happens before any decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def with_orientation(img: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A working folder: s/photo.png (24x16) beside a user file, and a folder of two frames."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "s" / "photo.png")
    (tmp_path / "s" / "notes.txt").write_text("precious")
    (tmp_path / "frames").mkdir()
    for t in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "frames" / f"{t}.png")
    (tmp_path / "ckpt.pth").write_bytes(b"not read: the output check comes first")
    return tmp_path


@pytest.fixture
def stand_in_model(monkeypatch):
    """Everything but the model for real: the detector is a stand-in that finds the top half."""
    monkeypatch.setattr(api, "load_detector", lambda checkpoint=None: (object(), "stand-in weights"))
    monkeypatch.setattr(image_pipeline.ImageSegmenter, "__init__", lambda self, detector, tokenizer=None: None)

    def segment(self, rgb, prompt, boxes=(), positive=None, threshold=0.5, max_objects=None, record=None):
        h, w = rgb.shape[:2]
        masks = np.zeros((1, h, w), bool)
        masks[0, : h // 2] = True
        return Detections(np.array([[0, 0, w, h // 2]], np.float32), np.array([0.9], np.float32), masks,
                          masks.astype(np.float32), np.array([7]))
    monkeypatch.setattr(image_pipeline.ImageSegmenter, "__call__", segment)


def segment_argv(image="s/photo.png", out="out", *extra):
    return ["segment", "--image", str(image), "--prompt", "person", "--out", str(out), *extra]


# --- images ------------------------------------------------------------------------------------

def _bad_images(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment of the error)."""
    cases = {}
    png_header_only(root / "bomb.png", 30000, 30000)
    cases["decompression bomb"] = (root / "bomb.png", "900,000,000 pixels, more than the 89,478,485")
    png_header_only(root / "big.png", 10000, 10000)  # between Pillow's warning and error limits
    cases["over MAX_IMAGE_PIXELS"] = (root / "big.png", "decompression-bomb limit")
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "blue")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    cases["animated GIF"] = (root / "anim.gif", "holds 2 frames (GIF")
    frames[0].save(root / "pages.tif", save_all=True, append_images=frames[1:])
    cases["multi-page TIFF"] = (root / "pages.tif", "holds 2 frames (TIFF")
    Image.fromarray(np.full((6, 8), 2.5, np.float32)).save(root / "hdr.tif")
    cases["float beyond [0, 1]"] = (root / "hdr.tif", "float pixels outside [0, 1]")
    Image.fromarray(np.full((6, 8), 1 << 20, np.int32)).save(root / "int32.tif")
    cases["32-bit integer"] = (root / "int32.tif", "32-bit integer pixels")
    (root / "text.png").write_text("not an image")
    cases["not an image"] = (root / "text.png", "cannot read image")
    buffer = root / "whole.png"
    Image.new("RGB", (64, 64), "green").save(buffer)
    (root / "truncated.png").write_bytes(buffer.read_bytes()[:80])
    buffer.unlink()
    cases["truncated"] = (root / "truncated.png", "cannot read image")
    cases["a folder"] = (root / "s", "cannot read image s: Is a directory")
    return cases


@pytest.mark.parametrize("case", ["decompression bomb", "over MAX_IMAGE_PIXELS", "animated GIF", "multi-page TIFF",
                                  "float beyond [0, 1]", "32-bit integer", "not an image", "truncated", "a folder"])
def test_bad_image_to_segment(ws, capsys, case):
    image, fragment = _bad_images(ws)[case]
    before = snapshot(ws)
    run(segment_argv(image.relative_to(ws)), capsys, fragment=fragment)
    assert snapshot(ws) == before


@pytest.mark.parametrize("case", ["decompression bomb", "animated PNG"])
def test_bad_frame_to_track(ws, capsys, case):
    if case == "decompression bomb":
        png_header_only(ws / "frames" / "2.png", 30000, 30000)
        fragment = "900,000,000 pixels"
    else:
        frames = [Image.new("RGB", (16, 12), c) for c in ("red", "blue")]
        frames[0].save(ws / "frames" / "2.png", save_all=True, append_images=frames[1:])
        fragment = "holds 2 frames (PNG"
    before = snapshot(ws)
    run(["track", "--frames", "frames", "--point", "3,3", "--out", "out"], capsys, fragment=fragment)
    assert snapshot(ws) == before


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    assert got.rgb.dtype == np.uint8 and got.rgb.shape == (1, 4, 3)
    assert got.rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (got.rgb == got.rgb[..., :1]).all()
    assert got.notes == ["16-bit grey scaled to 8 bits"]


def test_float_image_in_unit_range_is_scaled(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif").rgb[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied_and_reported(tmp_path):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # 3 wide, 2 high as stored
    with_orientation(Image.fromarray(stored), tmp_path / "o6.png", 6)  # 6: shown rotated 90° clockwise
    got = read_image(tmp_path / "o6.png")
    assert np.array_equal(got.rgb, np.rot90(stored, k=-1)) and got.orientation == 6
    assert got.notes == ["EXIF orientation 6 applied (rotated 90° clockwise)"]
    assert image_size_hw(tmp_path / "o6.png") == (3, 2)


def test_segment_output_follows_exif_orientation(ws, capsys, stand_in_model):
    with_orientation(Image.new("RGB", (24, 16), "white"), ws / "s" / "turned.png", 8)
    assert main(segment_argv("s/turned.png", "out")) == 0
    assert "EXIF orientation 8 applied" in capsys.readouterr().err
    report = json.loads((ws / "out" / "detections.json").read_text())
    assert report["image_size_wh"] == [16, 24] and report["image_notes"][0].startswith("EXIF orientation 8")
    assert Image.open(ws / "out" / "mask_000.png").size == (16, 24)


def test_tracking_frames_are_upright(tmp_path):
    stored = np.zeros((4, 6, 3), np.uint8)  # 6 wide as stored, shown 4 wide and 6 high
    with_orientation(Image.fromarray(stored), tmp_path / "0.png", 6)
    Image.new("RGB", (4, 6)).save(tmp_path / "1.png")
    frames = open_frames(tmp_path)
    assert frames.size_hw == (6, 4) and frames.rgb(0).shape == frames.rgb(1).shape == (6, 4, 3)


# --- prompts -----------------------------------------------------------------------------------

PROMPTS = [("", "the text prompt is empty"), ("   ", "the text prompt is empty"),
           ("\x01\x02", "empty (only whitespace, control or format characters)"),
           ("\x1b[31m", "empty (only whitespace, control or format characters)"),
           ("\u200b\ufeff", "empty (only whitespace, control or format characters)"),
           (LONG_PROMPT, "the text prompt is 80 tokens long; the text encoder takes at most 75")]


@pytest.mark.parametrize("prompt,fragment", PROMPTS)
def test_bad_prompt_to_segment(ws, capsys, prompt, fragment):
    before = snapshot(ws)
    line = run(["segment", "--image", "s/photo.png", "--prompt", prompt, "--out", "out"], capsys, fragment=fragment)
    assert len(line) < 200 and "person person" not in line  # not echoed
    assert snapshot(ws) == before


@pytest.mark.parametrize("prompt,fragment", PROMPTS)
def test_bad_prompt_to_track(ws, capsys, prompt, fragment):
    before = snapshot(ws)
    run(["track", "--frames", "frames", "--prompt", prompt, "--out", "out"], capsys, fragment=fragment)
    assert snapshot(ws) == before


def test_prompt_length_limit_is_the_context():
    check_prompt_text(" ".join(["person"] * MAX_PROMPT_TOKENS))
    with pytest.raises(ToolkitError, match="76 tokens long"):
        check_prompt_text(" ".join(["person"] * (MAX_PROMPT_TOKENS + 1)))
    check_prompt_text("per\x01son")  # control characters inside text are dropped by the cleaning, as upstream


# --- boxes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", ["nan,0,5,5", "0,0,inf,5", "5,5,1,1", "0,0,25,5", "-1,0,5,5", "3,3,3,9"])
def test_bad_box_to_segment(ws, capsys, box):
    before = snapshot(ws)
    run(segment_argv("s/photo.png", "out", f"--box={box}"), capsys, fragment="is not a non-empty box inside the 24x16")
    assert snapshot(ws) == before


@pytest.mark.parametrize("box", ["nan,0,5,5", "9,9,1,1", "0,0,17,5"])
def test_bad_box_to_track(ws, capsys, box):
    before = snapshot(ws)
    run(["track", "--frames", "frames", f"--box={box}", "--out", "out"], capsys, fragment="is not a non-empty box")
    assert snapshot(ws) == before


@pytest.mark.parametrize("box", ["1,2,3", "a,b,c,d", ""])
def test_malformed_box_is_a_usage_error(ws, capsys, box):
    with pytest.raises(SystemExit) as exit_info:
        main(segment_argv("s/photo.png", "out", f"--box={box}"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "expected x0,y0,x1,y1" in err


# --- output paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (segment_argv("s/photo.png", "s", "--force"), "--out s contains the input --image s/photo.png"),
    (segment_argv("s/photo.png", "s/photo.png", "--force"), "--out s/photo.png is the input --image"),
    (segment_argv("s/photo.png", ".", "--force"), "--out . contains the input --image"),
    (segment_argv("s/photo.png", "s/..", "--force"), "contains the input --image"),
    (segment_argv("s/photo.png", "out", "--checkpoint", "ckpt.pth") + [], ""),  # placeholder replaced below
    (segment_argv("s/photo.png", "out", "--save-intermediates", "out"), "--out out and --save-intermediates out "
                                                                        "overlap"),
    (segment_argv("s/photo.png", "out", "--save-intermediates", "out/stages"), "overlap"),
    (segment_argv("s/photo.png", "/proc/toolkit-test"), "cannot create --out /proc/toolkit-test"),
    (segment_argv("s/photo.png", "/sys/toolkit-test"), "cannot create --out /sys/toolkit-test"),
    (segment_argv("s/photo.png", "s/notes.txt/out"), "s/notes.txt is a file, not a folder"),
    (segment_argv("s/photo.png", "s/notes.txt", "--force"), "--out s/notes.txt exists and is not a directory"),
    (segment_argv("s/photo.png", "s", "--checkpoint", "x.pth"), "contains the input --image"),
    (["segment", "--image", "s/photo.png", "--prompt", "p", "--checkpoint", "s/notes.txt", "--out", "s", "--force"],
     "contains the input --image"),
    (["track", "--frames", "frames", "--point", "3,3", "--out", "frames", "--force"],
     "--out frames is the input --frames frames"),
    (["track", "--frames", "frames", "--point", "3,3", "--out", ".", "--force"], "--out . contains the input --frames"),
    (["track", "--frames", "frames", "--point", "3,3", "--out", "out", "--save-intermediates", "out"], "overlap"),
    (["track", "--frames", "frames", "--point", "3,3", "--out", "/proc/toolkit-test"], "cannot create --out /proc"),
    (["export", "--out", ".", "--checkpoint", "ckpt.pth"], "--out . contains the input --checkpoint ckpt.pth"),
    (["export", "--out", "s/notes.txt"], "s/notes.txt exists and is not a directory"),
    (["build", "--target", "cpu", "--out", ".", "--checkpoint", "ckpt.pth", "--force"],
     "--out . contains the input --checkpoint"),
    (["build", "--target", "cpu", "--out", "s", "--cache", "s/cache", "--force"], "--out s contains the input --cache"),
    (["run", "s", "--image", "frames/0.png", "--prompt", "p", "--out", "s", "--force"], "--out s is the input BUNDLE"),
    (["run", "b", "--image", "s/photo.png", "--prompt", "p", "--out", "s", "--force"], "contains the input --image"),
    (["bench", "--out", ".", "--artifacts", "s", "--force"], "--out . contains the input --artifacts s"),
    (["make-default", "s", "--force"], "is a directory; name the .pth file"),
    (["make-default", "/proc/toolkit-test.pth"], "cannot write /proc/toolkit-test.pth"),
])
def test_output_path_is_refused(ws, capsys, argv, fragment):
    if "--checkpoint" in argv and fragment == "":  # an --out that holds the checkpoint
        argv, fragment = segment_argv("s/photo.png", ".", "--checkpoint", "ckpt.pth", "--force"), "--out . contains"
    before = snapshot(ws)
    run(argv, capsys, fragment=fragment)
    assert snapshot(ws) == before


def test_out_may_not_replace_the_current_directory(ws, capsys, monkeypatch):
    """`--out . --force` with the inputs elsewhere: refused before the model runs, nothing left beside it."""
    (ws / "results").mkdir()
    (ws / "results" / "old.txt").write_text("old")
    monkeypatch.chdir(ws / "results")
    before = snapshot(ws)
    run(segment_argv(ws / "s" / "photo.png", ".", "--force"), capsys, fragment="is the current directory or holds it")
    assert snapshot(ws) == before


def test_out_inside_an_input_folder_is_fine(ws):
    guard_outputs({"--out": "frames/masks"}, {"--frames": "frames"})
    guard_outputs({"--out": "s/out", "--save-intermediates": "s/stages"}, {"--image": "s/photo.png"})
    with pytest.raises(ToolkitError, match="is the input"):  # a symlink to an input is the input
        (ws / "link").symlink_to(ws / "frames")
        guard_outputs({"--out": "link"}, {"--frames": "frames"})


def test_disk_full_while_writing_segment_results(ws, capsys, stand_in_model, monkeypatch):
    def full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(Image.Image, "save", full)
    before = snapshot(ws)
    run(segment_argv("s/photo.png", "out", "--save-intermediates", "stages"), capsys,
        fragment="cannot write the results: No space left on device", progress_allowed=True)
    assert snapshot(ws) == before


def test_disk_full_while_writing_a_checkpoint(ws, capsys, monkeypatch):
    import torch

    from toolkit.checkpoint import weights
    monkeypatch.setattr(weights, "synthetic_state_dict", lambda **kw: {"w": torch.zeros(3)})

    def full(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full)
    before = snapshot(ws)
    run(["make-default", "new.pth"], capsys, fragment="new.pth: No space left on device")
    assert snapshot(ws) == before


def test_output_folder_permissions(ws, stand_in_model):
    """A new folder gets the umask's permissions (not the temporary folder's 0700); --force keeps the
    permissions of the folder it replaces."""
    old = os.umask(0o022)
    try:
        assert main(segment_argv("s/photo.png", "new")) == 0
        assert stat.S_IMODE((ws / "new").stat().st_mode) == 0o755
        (ws / "kept").mkdir()
        (ws / "kept" / "old.txt").write_text("old")
        (ws / "kept").chmod(0o750)
        assert main(segment_argv("s/photo.png", "kept", "--force")) == 0
        assert stat.S_IMODE((ws / "kept").stat().st_mode) == 0o750 and not (ws / "kept" / "old.txt").exists()
    finally:
        os.umask(old)
    assert not [p for p in ws.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --- export: the folder is a cache ---------------------------------------------------------------

@pytest.fixture(scope="module")
def light_reference():
    """The real PyTorch reference over zero weights (built once): export runs without the model's cost."""
    from toolkit.verify.compare import Reference
    state = layout_state_dict()
    return state, Reference(state, golden=False)


@pytest.fixture
def light_export(light_reference, monkeypatch):
    """`toolkit export` with zero weights and the module's reference; returns the FORMATS to patch."""
    from toolkit.checkpoint import weights
    from toolkit.deploy import export
    state, reference = light_reference
    monkeypatch.setattr(weights, "synthetic_state_dict", lambda *a, **k: state)
    monkeypatch.setattr(export, "Reference", lambda *a, **k: reference)
    return export.FORMATS


def export_argv(out="exp", *extra):
    return ["export", "--out", out, "--components", "object_pointer", "--format", "onnx", *extra]


@pytest.mark.parametrize("force", [False, True])
def test_export_never_replaces_a_users_files(ws, capsys, force):
    (ws / "exp").mkdir()
    (ws / "exp" / "export_report.json").write_text('{"mine": true}')
    (ws / "exp" / "object_pointer.onnx").write_bytes(b"my model")
    before = snapshot(ws)
    run(export_argv("exp", *(["--force"] if force else [])), capsys,
        fragment="exp holds export_report.json, object_pointer.onnx, not written by an export")
    assert snapshot(ws) == before


def test_export_reuses_its_own_folder_and_leaves_other_files(ws, capsys, light_export, monkeypatch):
    from toolkit.components.spec import DIMS
    from toolkit.convert.onnx_export import export_onnx

    def legacy(comp, graph, args, path):  # the quick exporter: this test is about the folder
        info = export_onnx(graph, args, comp.input_names, comp.output_names, comp.dynamic_axes(), DIMS, path,
                           "legacy", 17)
        return {"exporter": info.exporter, "opset": info.opset, "nodes": info.nodes, "export_seconds": info.seconds}
    monkeypatch.setitem(light_export, "onnx", with_make(light_export["onnx"], legacy))
    (ws / "exp").mkdir()
    (ws / "exp" / "notes.txt").write_text("precious")
    assert main(export_argv("exp")) == 0
    assert main(export_argv("exp", "--force")) == 0  # its own artifact, record and report: replaced
    assert (ws / "exp" / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in (ws / "exp").iterdir()) == [
        "export_report.json", "notes.txt", "object_pointer.onnx", "object_pointer.onnx.json"]


def test_export_failure_is_one_line_with_details_in_the_report(ws, capsys, light_export, monkeypatch):
    def failing(comp, graph, args, path):
        path.write_bytes(b"half")
        raise RuntimeError("Failed to export. \x1b[96mThis is step 1/3\x1b[0m of exporting.\n- line two\n## Exception")
    monkeypatch.setitem(light_export, "onnx", with_make(light_export["onnx"], failing))
    line = run(export_argv("exp"), capsys, fragment="object_pointer [onnx]: export failed: RuntimeError: Failed to "
               "export. This is step 1/3 of exporting.", progress_allowed=True)
    assert "line two" not in line and "details in exp/export_report.json" in line
    failure = json.loads((ws / "exp" / "export_report.json").read_text())["artifacts"][0]["failures"][0]
    assert "- line two\n## Exception" in failure and "\x1b" not in failure
    assert not [p.name for p in (ws / "exp").iterdir() if "partial" in p.name]


def test_disk_full_during_export(ws, capsys, light_export, monkeypatch):
    def full(comp, graph, args, path):
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setitem(light_export, "onnx", with_make(light_export["onnx"], full))
    before = snapshot(ws)
    run(export_argv("exp"), capsys, fragment="cannot write exp: No space left on device", progress_allowed=True)
    assert snapshot(ws) == before  # the folder it had made is gone too


@pytest.mark.parametrize("out", ["/proc/toolkit-test", "/sys/toolkit-test", "s/notes.txt/exp"])
def test_export_to_an_impossible_folder(ws, capsys, light_export, out):
    before = snapshot(ws)
    run(export_argv(out), capsys, fragment="cannot create", progress_allowed=True)
    assert snapshot(ws) == before


# --- interrupts --------------------------------------------------------------------------------

def test_ctrl_c_during_segment(ws, capsys, stand_in_model, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(image_pipeline.ImageSegmenter, "__call__", interrupted)
    before = snapshot(ws)
    run(segment_argv("s/photo.png", "out", "--save-intermediates", "stages"), capsys, code=130,
        fragment="error: interrupted", progress_allowed=True)
    assert snapshot(ws) == before


def test_ctrl_c_during_export_is_not_swallowed(ws, capsys, light_export, monkeypatch):
    """The exporter turns the Ctrl-C into an ordinary error (as torch.onnx does when it lands in one of
    its lazy imports): the command still stops with 130 and leaves nothing half-written."""
    def swallowing(comp, graph, args, path):
        path.write_bytes(b"half")
        try:
            signal.raise_signal(signal.SIGINT)  # a real SIGINT, through the installed handlers
        except KeyboardInterrupt as err:
            raise RuntimeError("Failed to export the model with torch.export") from err
        return {"exporter": "swallowing", "opset": 20, "nodes": 0, "export_seconds": 0.0}
    monkeypatch.setitem(light_export, "onnx", with_make(light_export["onnx"], swallowing))
    # what an interactive shell gives: a job started in the background (`cmd &`) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = snapshot(ws)
        run(export_argv("exp"), capsys, code=130, fragment="error: interrupted", progress_allowed=True)
        assert snapshot(ws) == before
    finally:
        signal.signal(signal.SIGINT, previous)
