"""The JavaScript / TypeScript runtime (runtimes/js) on onnxruntime-node against the Python runtime
(toolkit/runtime): the same tokenizer ids on a corpus of prompts, bit-identical pre-processing, and
on the full-size cpu bundle the same detections on the golden image cases and the same tracker masks
on the golden click clip, within the golden tolerances (masks compared well-conditioned); bundle
refusals in one line; the web example segmenting an image in headless Chromium.

The JS side runs through `runtimes/js/test/driver.mjs` (and the two examples). Needs Node 20+;
`npm ci` in runtimes/js is run here when node_modules is missing, and `tsc` once per session.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import masks_agree, with_prompt_cache

from toolkit.verify.golden import golden_available, golden_path

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "runtimes" / "js"
VOCAB = REPO / "toolkit" / "data" / "bpe_simple_vocab_16e6.txt.gz"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (the JS runtime needs Node 20+; CI has it)")
needs_golden = pytest.mark.skipif(not golden_available(), reason="golden fixture not on this machine")
BOX = (162.0, 68.0, 438.0, 268.0)  # the golden txt_person_box case
CLICK = (312.0, 180.0)  # the golden click clip


@pytest.fixture(scope="session")
def js() -> Path:
    """runtimes/js with its packages installed and the TypeScript built (dist/)."""
    if not (JS / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True)
    done = subprocess.run(["npm", "run", "--silent", "build"], cwd=JS, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return JS


def _node(js: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([NODE, *args], cwd=js, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


# --- tokenizer and pre-processing: no bundle needed ------------------------------------------------

CORPUS = [
    "person", "a red cup", "  Caf\u00e9 &amp; <b>na\u00efve</b> r\u00e9sum\u00e9's  ", "don't 42 \u4eba",
    "\u201cquoted\u201d \u2018single\u2019", "\ufb01sh \ufb02ower", "\uff2c\uff2f\uff35\uff24\u3000\uff4e\uff4f\uff49\uff53\uff45",
    "cafe\u0301 (NFD)", "emoji \U0001F600\U0001F44D\U0001F3FD dog", "\u0130stanbul \u03a3\u039f\u03a6\u039f\u03a3 stra\u00dfe",
    "&lt;tag&gt; &amp;amp; &AMP; &eacute; &EACUTE; &#x2019; &#8217; &notin; &not", "&amp;amp;amp; three",
    "line\r\nbreak\u2028sep\u2029par", "tab\tand\u00a0nbsp\u2003em", "ctrl\x07bell\x1b[31mred\x1b[0m", "\ufeffbom start",
    "C1 \x85 \x93q\x94", "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \ud55c\uad6d\uc5b4 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "punct!!! ??? ... ,,, ;;; ::: --- ((()))", "a\u200bzero\u200dwidth", "$100.50 + 3\u00bd% \u2264 \u221e",
    "it's we're they've I'm you'll he'd", "multiple   spaces\n\n and lines", "<start_of_text>person<end_of_text>",
    "\u1e9b\u0323", "1234567890", "&nbsp;", "", "   ", "\u200b\u200b",
    # longer than the context: refused by check(), cut to 77 ids (end id last) by the id function
    "x " * 90, "person " * 80, ("a-b " * 40).strip(), ", ".join(["q"] * 50),
]


def test_the_text_tables_are_those_ftfy_and_python_give(js):
    """src/text-tables.ts is what scripts/text_tables.py writes from the installed ftfy and Python."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("text_tables", JS / "scripts" / "text_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (JS / "src" / "text-tables.ts").read_text() == module.tables()


def test_tokenizer_matches_the_python_tokenizer_on_a_corpus(js, tmp_path):
    from toolkit.runtime.errors import RuntimeInputError
    from toolkit.runtime.tokenizer import BpeTokenizer
    (tmp_path / "corpus.json").write_text(json.dumps(CORPUS))
    _node(js, "test/driver.mjs", "tokenize", str(VOCAB), str(tmp_path / "corpus.json"), str(tmp_path / "out.json"))
    rows = json.loads((tmp_path / "out.json").read_text())
    ours = BpeTokenizer(VOCAB)
    long = 0
    for text, row in zip(CORPUS, rows, strict=True):
        assert row["clean"] == ours.clean(text), text
        assert row["ids"] == ours(text)[0].tolist(), text
        try:
            ours.check(text)
            error = None
        except RuntimeInputError as e:
            error = str(e)
        assert row["error"] == error, text
        long += len(ours.encode(text)) > 75
    assert long == 4  # the corpus does reach the cut


@pytest.mark.parametrize("hw", [(400, 600), (37, 2999), (1009, 1007), (1500, 1200), (5, 5), (1008, 17), (1920, 1080),
                                (1008, 1008)])
def test_preprocessing_is_bit_identical_to_the_python_runtime(js, tmp_path, hw):
    """Both paths: torch's antialiased bilinear uint8 resize (detector) and Pillow's bicubic resize
    (tracker frames; Pillow >= 13 pass order), then the float32 normalisation."""
    from toolkit.runtime.preprocess import preprocess_frame, preprocess_image
    x = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    np.save(tmp_path / "in.npy", x)
    _node(js, "test/driver.mjs", "preprocess", str(tmp_path / "in.npy"), str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "image.npy"), preprocess_image(x))
    np.testing.assert_array_equal(np.load(tmp_path / "frame.npy"), preprocess_frame(x))


# --- the full-size cpu bundle ----------------------------------------------------------------------

CASES = [{"name": "txt_person", "prompt": "person", "boxes": [], "threshold": 0.0},
         {"name": "txt_person_box", "prompt": "person", "boxes": [list(BOX)], "threshold": 0.0}]
OUTPUTS = ("query_indices", "scores", "boxes_xyxy_px", "mask_probs", "masks")


@pytest.fixture(scope="session")
def js_segments(js, cpu_bundle, tmp_path_factory) -> Path:
    """The JS segmenter's outputs on the golden image cases (threshold 0: all 200 queries), one run."""
    out = tmp_path_factory.mktemp("js-segments")
    (out / "cases.json").write_text(json.dumps(CASES))
    _node(js, "test/driver.mjs", "segment", str(cpu_bundle), str(golden_path("inputs", "coffee.png")),
          str(out / "cases.json"), str(out))
    return out


@pytest.mark.full
@needs_golden
def test_js_segmenter_reproduces_the_python_runtime_on_the_golden_image_cases(js_segments, cpu_bundle):
    from toolkit.runtime import Segmenter, open_bundle
    from toolkit.runtime.cli import load_rgb
    # sessions are released after use: every component loaded once per image, in the pipeline's order
    per_image = ["text_encoder", "vision_encoder", "geometry_encoder", "fusion_encoder", "fusion_decoder", "scoring",
                 "segmentation_head"]
    assert json.loads((js_segments / "loads.json").read_text()) == per_image * 2
    segmenter = Segmenter(open_bundle(cpu_bundle, checksums=False))
    rgb = load_rgb(golden_path("inputs", "coffee.png"))
    for case in CASES:
        ref = segmenter(rgb, case["prompt"], [tuple(b) for b in case["boxes"]], threshold=0.0)
        got = {k: np.load(js_segments / case["name"] / f"{k}.npy") for k in OUTPUTS}
        assert len(ref.scores) == 200  # threshold 0: every query, so every mask is compared
        np.testing.assert_array_equal(got["query_indices"], ref.query_indices)
        np.testing.assert_allclose(got["scores"], ref.scores, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(got["boxes_xyxy_px"], ref.boxes_xyxy_px, atol=1e-2)
        np.testing.assert_allclose(got["mask_probs"], ref.mask_probs, atol=1e-3)
        masks_agree(got["masks"].astype(bool), ref.masks, ref.mask_probs, 0.5, 1e-3)


@pytest.mark.full
@needs_golden
def test_js_prompt_cache_replaces_the_text_encoder(js, js_segments, cpu_bundle, tmp_path):
    """A bundle with a prompt cache (what `--concepts` writes: numpy's savez): the JS segmenter takes
    "person" from it, never loads the text encoder, and finds what it found with the text encoder."""
    from toolkit.runtime import open_bundle
    from toolkit.runtime.sessions import Sessions
    from toolkit.runtime.tokenizer import BpeTokenizer
    bundle = open_bundle(cpu_bundle, checksums=False)
    ids = BpeTokenizer(bundle.path(bundle.manifest["tokenizer"]["vocabulary"]))("person")
    text = Sessions(bundle).run("text_encoder", token_ids=ids)
    cached = with_prompt_cache(cpu_bundle, tmp_path / "cached", ["person"], ids, text["text_features"][:, 0][None],
                               text["text_mask"][0][None], "this test: ONNX Runtime")
    (tmp_path / "cases.json").write_text(json.dumps(CASES[:1]))
    _node(js, "test/driver.mjs", "segment", str(cached), str(golden_path("inputs", "coffee.png")),
          str(tmp_path / "cases.json"), str(tmp_path))
    assert "text_encoder" not in json.loads((tmp_path / "loads.json").read_text())
    got, ref = ({k: np.load(d / "txt_person" / f"{k}.npy") for k in OUTPUTS} for d in (tmp_path, js_segments))
    np.testing.assert_array_equal(got["query_indices"], ref["query_indices"])
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["boxes_xyxy_px"], ref["boxes_xyxy_px"], atol=1e-2)
    masks_agree(got["masks"], ref["masks"], ref["mask_probs"], 0.5, 1e-3)


@pytest.mark.full
@needs_golden
def test_js_tracker_reproduces_the_python_runtime_on_the_golden_clip(js, cpu_bundle, tmp_path):
    from toolkit.runtime import Tracker, open_bundle
    from toolkit.runtime.cli import Clicks, Folder
    frames = golden_path("inputs", "tracker_frames")
    _node(js, "test/driver.mjs", "track", str(cpu_bundle), str(frames), f"{CLICK[0]:g},{CLICK[1]:g}", str(tmp_path))
    logits = {}  # each frame's mask logits at the frame's size: what its masks threshold

    def record(stage, arrays):
        if stage.endswith("__09_final"):
            logits[int(stage[1:].split("_")[0])] = np.asarray(arrays["out.video_res_masks"])[:, 0]
    session = Tracker(open_bundle(cpu_bundle, checksums=False)).prompt(Folder(frames), 0, Clicks((CLICK,), (1,)),
                                                                        record=record)
    scores = json.loads((tmp_path / "scores.json").read_text())
    indices = []
    for result in session.propagate():
        got = np.load(tmp_path / f"frame{result.index}.npy").astype(bool)
        value = logits[result.index]
        masks_agree(got, result.masks, value, 0.0, 1e-3 * np.abs(value).max() + 1e-5)
        np.testing.assert_allclose(scores[str(result.index)], result.object_score_logits[0], rtol=1e-3, atol=1e-5)
        indices.append(result.index)
    assert indices == [0, 1, 2] and sorted(scores) == ["0", "1", "2"]


@pytest.mark.full
def test_js_bundle_refusals_are_one_line(js, cpu_bundle, tmp_path):
    """The Node example opens bundles with checksums: a changed file, an unlisted file and a symbolic
    link are refused in one line with exit code 2, as a non-directory and an empty prompt."""
    image = str(REPO / "docs" / "coffee.png")

    def refused(bundle, prompt="person") -> str:
        done = _node(js, "examples/node/segment.mjs", str(bundle), image, prompt, str(tmp_path / "out"), check=False)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr

    def copy(name: str) -> Path:  # hard links: no copy of the weights
        shutil.copytree(cpu_bundle, tmp_path / name, copy_function=os.link)
        return tmp_path / name

    changed = copy("changed")
    licence = changed / "tokenizer" / "LICENSE-open_clip-bpe.txt"
    text = licence.read_bytes()
    licence.unlink()
    licence.write_bytes(text + b" ")
    assert "does not match its sha256" in refused(changed)
    extra = copy("extra")
    (extra / "models" / "extra.onnx").write_bytes(b"x")
    assert "models/extra.onnx is not listed" in refused(extra)
    linked = copy("linked")
    (linked / "models" / "scoring.onnx").unlink()
    (linked / "models" / "scoring.onnx").symlink_to(cpu_bundle / "models" / "scoring.onnx")
    assert "symbolic link" in refused(linked)
    assert "is not a directory" in refused(tmp_path / "nowhere")
    assert "the text prompt is empty" in refused(cpu_bundle, " ")


@pytest.mark.full
@needs_golden
def test_the_web_example_segments_an_image_in_headless_chromium(js, cpu_bundle, js_segments, tmp_path):
    """The page (onnxruntime-web, WebAssembly, the cpu bundle's .onnx files) segments coffee.png and
    finds what the Node runtime finds."""
    if CHROMIUM is None:
        if os.environ.get("TOOLKIT_CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    image = golden_path("inputs", "coffee.png")
    env = {**os.environ, "CHROMIUM": CHROMIUM}
    done = subprocess.run([NODE, "examples/web/headless.mjs", str(cpu_bundle), str(image), "person",
                           str(tmp_path / "page.png"), "threshold=0&maxObjects=3"], cwd=js, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout.strip().splitlines()[-1])
    assert page["crossOriginIsolated"] and (tmp_path / "page.png").stat().st_size > 10_000
    # the page kept the 3 best queries (threshold 0); the Node runtime on the same image: every query
    node = {k: np.load(js_segments / "txt_person" / f"{k}.npy") for k in OUTPUTS}
    # (the best 3 of 200 untrained scores can lie within float error of the 4th: a query counts as one
    # of the best 3 when its Node score is within the score tolerance of the 3rd best)
    third = np.sort(node["scores"])[-3]
    kept = np.array(page["queries"])
    assert page["count"] == 3 and (node["scores"][kept] >= third - 1e-3 * third - 1e-5).all()
    np.testing.assert_allclose(page["scores"], node["scores"][kept], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.reshape(page["boxes"], (-1, 4)), node["boxes_xyxy_px"][kept], atol=1e-2)
    # mask areas: equal up to the pixels within float error of the threshold (WebAssembly rounds differently)
    near = (np.abs(node["mask_probs"][kept] - 0.5) <= 1e-3).reshape(3, -1).sum(1)
    assert (np.abs(np.array(page["maskAreas"]) - node["masks"][kept].reshape(3, -1).sum(1)) <= near).all()
