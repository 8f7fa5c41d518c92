"""`toolkit segment` end to end: golden parity of every stage and of the written outputs."""
import json

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main
from toolkit.pipeline.intermediates import load_dump
from toolkit.verify.golden import compare_dump, golden_path, load_stage, manifest

COFFEE = str(golden_path("inputs", "coffee.png"))
# The golden box [cx,cy,w,h] = [0.5,0.42,0.46,0.5] (normalised) in pixels of the 600x400 photo.
GOLDEN_BOX = "162,68,438,268"


def _run(tmp_path, name, *extra):
    out, dump = tmp_path / name, tmp_path / f"{name}-stages"
    argv = ["segment", "--image", COFFEE, "--prompt", "person", "--threshold", "0", "--out", str(out),
            "--save-intermediates", str(dump), *extra]
    assert main(argv) == 0
    return out, dump


@pytest.mark.full
@pytest.mark.parametrize("case,extra", [("txt_person", ()), ("txt_person_box", ("--box", GOLDEN_BOX))])
def test_segment_reproduces_golden(case, extra, tmp_path):
    out, dump = _run(tmp_path, case, *extra)
    results = compare_dump(load_dump(dump), case)
    bad = [r["message"] for r in results if not r["ok"]]
    assert not bad, "\n".join(bad)
    stages = manifest()["stages"]
    assert len(results) == sum(len(stages[s]["tensors"]) for s in stages if s.split("__")[0] in ("img", case))

    report = json.loads((out / "detections.json").read_text())
    golden = load_stage(f"{case}__12_postprocess")
    assert [o["query"] for o in report["objects"]] == list(range(200))
    np.testing.assert_allclose([o["score"] for o in report["objects"]], golden["out.scores"], rtol=0, atol=1e-5)
    np.testing.assert_allclose([o["box_xyxy_px"] for o in report["objects"]], golden["out.boxes_xyxy_px"],
                               rtol=0, atol=1e-2)
    assert "NOT the trained" in report["weights"]
    # mask PNGs hold the thresholded masks at the original resolution
    idx, val = golden["out.masks@idx"], golden["out.masks@val"].astype(bool)
    q, pix = np.divmod(idx, 400 * 600)
    masks = {int(i): np.array(Image.open(out / f"mask_{int(i):03d}.png")) > 0 for i in np.unique(q)}
    got = np.array([masks[int(i)].reshape(-1)[p] for i, p in zip(q, pix)])
    assert np.count_nonzero(got != val) <= 1e-3 * len(val)
    assert Image.open(out / "overlay.png").size == (600, 400)


@pytest.mark.parametrize("argv,fragment", [
    (["--image", "missing.png", "--prompt", "person"], "cannot read image missing.png"),
    (["--image", COFFEE, "--prompt", "  "], "the text prompt is empty"),
    (["--image", COFFEE, "--prompt", "person", "--box", "10,10,5,5"], "is not a non-empty box inside"),
    (["--image", COFFEE, "--prompt", "person", "--box", "0,0,700,100"], "is not a non-empty box inside"),
    (["--image", COFFEE, "--prompt", "person", "--threshold", "1.5"], "--threshold must be in [0, 1)"),
    (["--image", COFFEE, "--prompt", "person", "--max-objects", "0"], "--max-objects must be at least 1"),
    (["--image", COFFEE, "--prompt", "person", "--checkpoint", "nope.pth"], "does not exist"),
])
def test_segment_bad_input_is_one_line_error(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["segment", *argv, "--out", "out"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


def test_segment_keeps_existing_user_files(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    assert main(["segment", "--image", COFFEE, "--prompt", "person", "--out", str(out)]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "precious"


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--image", COFFEE, "--prompt", "person", "--out", "x", "--box", "1,2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: toolkit segment: argument --box: expected x0,y0,x1,y1 in pixels, got '1,2' "
                   "(see toolkit segment --help)"]
