"""Bad-input corpus for bundles, bundle archives and target files.

Every case runs the CLI (`toolkit.cli.main`, so an exception other than a one-line ToolkitError
fails the test as a traceback would) and asserts: exit code 2, exactly one `error:` line on
stderr (progress lines aside), no traceback, the input files byte-for-byte untouched, and
nothing half-written left (no --out, no `.partial` directory, no extraction left in the
temporary directory). Every bundle case is a mutated copy of the session's small bundle (two
components, tests/conftest.py).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from toolkit.checkpoint.weights import LABEL
from toolkit.cli import main
from toolkit.components.registry import COMPONENTS
from toolkit.components.spec import DIMS
from toolkit.deploy.build import run_build
from toolkit.deploy.bundle import MANIFEST, create_archive, open_bundle
from toolkit.deploy.targets import COMPRESSIONS, FORMATS, find_target, target_schema

SMALL = ["object_pointer", "prompt_encoder"]


@pytest.fixture
def bundle(small_cpu_bundle):
    """The session's small fp32 cpu bundle (tests/conftest.py); every case mutates a copy of it."""
    return small_cpu_bundle


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path, with the temporary directory of extractions inside it (checked empty afterwards)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path


def _snapshot(paths) -> dict[str, tuple]:
    """Every entry under `paths`: kind, bytes and link target; links are not followed."""
    found = {}
    for top in paths:
        for path in [Path(top), *sorted(Path(top).rglob("*"))] if Path(top).is_dir() and not Path(top).is_symlink() \
                else [Path(top)]:
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            elif path.is_fifo():
                found[str(path)] = ("fifo",)
            elif path.is_file():
                found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[str(path)] = ("dir",)
    return found


def refused(capsys, argv: list[str], inputs: list[Path], scratch: Path, out: Path | None = None) -> str:
    """Run the CLI on a bad input; the one error line."""
    before = _snapshot(inputs)
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("[toolkit]")]
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert _snapshot(inputs) == before, "an input was modified"
    assert not any(".partial" in p.name for p in scratch.rglob("*")), "a half-written file was left"
    tmpdir = scratch / "tmpdir"
    assert not tmpdir.exists() or list(tmpdir.iterdir()) == [], "an extraction was left behind"
    if out is not None:
        assert not out.exists()
    return lines[0]


def copy_of(bundle: Path, scratch: Path) -> Path:
    copy = scratch / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def edit_manifest(root: Path, change) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def relist(root: Path, rel: str) -> None:
    """Update the manifest's size and sha256 of `rel` (a consistent manifest over a changed file)."""
    def change(manifest):
        for entry in manifest["files"]:
            if entry["path"] == rel:
                entry["bytes"] = (root / rel).stat().st_size
                entry["sha256"] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    edit_manifest(root, change)


def verify_and_run(capsys, root: Path, scratch: Path, inputs: list[Path] | None = None) -> list[str]:
    inputs = inputs or [root]
    out = scratch / "out"
    return [refused(capsys, ["verify", str(root), "--no-parity"], inputs, scratch),
            refused(capsys, ["run", str(root), "--image", "x.png", "--prompt", "a", "--out", str(out)],
                    inputs, scratch, out)]


# --- never read outside a bundle --------------------------------------------------------------------

def _link_artifact(root: Path, outside: Path):
    shutil.copy(root / "models/object_pointer.onnx", outside / "object_pointer.onnx")
    (root / "models/object_pointer.onnx").unlink()
    (root / "models/object_pointer.onnx").symlink_to(outside / "object_pointer.onnx")
    return "models/object_pointer.onnx is a symbolic link"


def _link_models(root: Path, outside: Path):
    shutil.move(root / "models", outside / "models")
    (root / "models").symlink_to(outside / "models", target_is_directory=True)
    return "models is a symbolic link"


def _link_vocabulary(root: Path, outside: Path):
    vocab = root / "tokenizer/bpe_simple_vocab_16e6.txt.gz"
    shutil.move(vocab, outside / vocab.name)
    vocab.symlink_to(outside / vocab.name)
    return "tokenizer/bpe_simple_vocab_16e6.txt.gz is a symbolic link"


def _link_manifest(root: Path, outside: Path):
    shutil.move(root / MANIFEST, outside / MANIFEST)
    (root / MANIFEST).symlink_to(outside / MANIFEST)
    return "manifest.json is a symbolic link"


def _fifo(root: Path, outside: Path):
    os.mkfifo(root / "models/pipe.onnx")
    return "models/pipe.onnx is not a regular file or directory"


@pytest.mark.parametrize("make", [_link_artifact, _link_models, _link_vocabulary, _link_manifest, _fifo])
def test_links_and_special_files_are_refused(bundle, scratch, capsys, make):
    """The links point at byte-identical copies, so every checksum matches: only the link is wrong."""
    root = copy_of(bundle, scratch)
    outside = scratch / "outside"
    outside.mkdir()
    fragment = make(root, outside)
    for err in verify_and_run(capsys, root, scratch, [root, outside]):
        assert fragment in err


def _narrowed(manifest):
    manifest["components"]["prompt_encoder"]["dims"]["points"] = [1, 2, 1]  # no case with 2 or 16 points


@pytest.mark.parametrize("change,fragment", [
    (_narrowed, "manifest.components.prompt_encoder.dims: points is [1, 2, 1], expected [1, 2, 16]"),
    (lambda m: m["components"]["object_pointer"]["dims"].update(objects=[9, 9, 9]), "objects is [9, 9, 9]"),
    (lambda m: m["dims"]["objects"].update(max=2), "manifest.dims.objects is"),
    (lambda m: m["components"]["prompt_encoder"]["inputs"][0].update(shape=["objects", 5, 2]),
     "manifest.components.prompt_encoder.inputs[0] differs from the declaration"),
    (lambda m: m["components"]["object_pointer"]["outputs"].append(
        dict(m["components"]["object_pointer"]["outputs"][0], name="extra")),
     "manifest.components.object_pointer.outputs[1] differs from the declaration"),
])
def test_the_manifest_cannot_narrow_what_is_verified(bundle, scratch, capsys, change, fragment):
    root = copy_of(bundle, scratch)
    edit_manifest(root, change)
    assert fragment in refused(capsys, ["verify", str(root)], [root], scratch)


def test_a_verification_that_ran_no_case_fails(bundle, synthetic_state):
    from toolkit.verify.bundle import verify_artifact
    from toolkit.verify.compare import Reference
    entry = json.loads((bundle / MANIFEST).read_text())["components"]["object_pointer"]
    entry["dims"] = {"objects": [9, 9, 9]}
    result = verify_artifact(COMPONENTS["object_pointer"], entry, bundle / entry["file"],
                             Reference(synthetic_state, False))
    assert result["status"] == "failed" and result["cases"] == []
    assert "no verification case lies within" in result["failures"][0]


def test_run_tokenizes_with_the_bundles_vocabulary(bundle, scratch, monkeypatch):
    from toolkit.pipeline import tokenizer
    from toolkit.runtime import Bundle as RuntimeBundle
    from toolkit.runtime import Segmenter
    prompts = ["person", "A red cup &amp; a Saucer", "<start_of_text>x"]
    expected = tokenizer.Tokenizer()(prompts).numpy()
    root = copy_of(bundle, scratch)

    def no_package_copy():
        raise AssertionError("the toolkit's own vocabulary was read")
    monkeypatch.setattr(tokenizer, "packaged_bpe", no_package_copy)

    def tokens(prompt):  # what `toolkit run` (the torch-free runtime) feeds the text encoder
        opened = open_bundle(root)
        return Segmenter(RuntimeBundle(opened.root, opened.manifest)).tokenizer(prompt)
    assert all((tokens(p) == expected[i:i + 1]).all() for i, p in enumerate(prompts))
    # a bundle whose vocabulary has the merge making 'person' moved first gives 'person' another id:
    # the bundle's file is what is read
    vocab = root / "tokenizer/bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(vocab.read_bytes()).decode().split("\n")
    rank = next(i for i, line in enumerate(lines[1:], 1) if line.replace(" ", "") == "person</w>")
    lines[1], lines[rank] = lines[rank], lines[1]
    vocab.write_bytes(gzip.compress("\n".join(lines).encode()))
    relist(root, "tokenizer/bpe_simple_vocab_16e6.txt.gz")
    assert not (tokens("person") == expected[:1]).all()


def test_the_tokenizer_must_be_a_vocabulary(bundle, scratch, capsys):
    root = copy_of(bundle, scratch)
    edit_manifest(root, lambda m: m["tokenizer"].update(vocabulary="tokenizer/LICENSE-open_clip-bpe.txt"))
    out = scratch / "out"
    err = refused(capsys, ["run", str(root), "--image", "x.png", "--prompt", "a", "--out", str(out)], [root], scratch,
                  out)
    assert "tokenizer/LICENSE-open_clip-bpe.txt is not a gzip-compressed BPE vocabulary" in err


# --- manifests of the wrong shape ---------------------------------------------------------------------

def _deep(levels):
    def change(manifest):
        node = manifest["postprocess"]
        for _ in range(levels):
            node["a"] = {}
            node = node["a"]
    return change


def _write_text(text):
    return lambda root: (root / MANIFEST).write_text(text)


def _manifest(change):
    return lambda root: edit_manifest(root, change)


def _not_a_model(root):
    (root / "models/object_pointer.onnx").write_bytes(b"not an onnx model")
    relist(root, "models/object_pointer.onnx")


@pytest.mark.parametrize("mutate,fragment", [
    (_manifest(lambda m: m.update(files=5)), "manifest.files is 5 (an integer), expected an array"),
    (_manifest(lambda m: m.update(components=[])), "manifest.components is [] (an array), expected an object"),
    (_manifest(lambda m: m["components"].update(object_pointer="models/object_pointer.onnx")),
     "manifest.components.object_pointer is 'models/object_pointer.onnx' (a string), expected an object"),
    (_manifest(lambda m: m["components"].update(nose=m["components"]["object_pointer"])),
     "manifest.components: unknown key 'nose'"),
    (_manifest(lambda m: m["components"]["object_pointer"].update(file="models")),
     "manifest.components.object_pointer.file 'models' is not an artifact of format onnx"),
    (_manifest(lambda m: m["components"]["object_pointer"].update(file="tokenizer/LICENSE-open_clip-bpe.txt")),
     "is not an artifact of format onnx"),
    (_manifest(lambda m: m["components"]["object_pointer"].update(file="models/other.onnx")),
     "manifest.components.object_pointer.file 'models/other.onnx' is not among the listed files"),
    (_manifest(lambda m: m["components"]["object_pointer"].update(file="../cpu/models/object_pointer.onnx")),
     "expected a relative POSIX path inside the bundle"),
    (_manifest(lambda m: m["files"][0].update(path="/etc/passwd")), "manifest.files[0].path is '/etc/passwd'"),
    (_manifest(lambda m: m["files"][0].update(bytes="many")), "manifest.files[0].bytes is 'many' (a string)"),
    (_manifest(lambda m: m["files"].append(m["files"][0])), "twice"),
    (_manifest(lambda m: m["components"]["object_pointer"]["inputs"][0].update(artifact_dtype="object")),
     "artifact_dtype is 'object', expected one of"),
    (_manifest(lambda m: m["tokenizer"].pop("vocabulary")), "manifest.tokenizer: missing 'vocabulary'"),
    (_manifest(lambda m: m["model"].update(embedded_default="yes")), "manifest.model.embedded_default is 'yes'"),
    (_manifest(_deep(40)), "nests deeper than 32 levels"),
    (_write_text('{"a": ' * 100_000 + "1" + "}" * 100_000), "nests too deeply"),
    (_write_text("[]"), "invalid manifest: it is an array, expected an object"),
    (_write_text("5"), "invalid manifest: it is an integer, expected an object"),
    (_write_text('{"schema": "esam3-toolkit.bundle/1", "files": '), "manifest.json is not valid JSON"),
    (lambda root: (root / MANIFEST).write_bytes(b"\xff\xfe{}"), "manifest.json is not valid JSON"),
    (lambda root: (root / MANIFEST).write_bytes(b" " * (16 * 2**20 + 1)), "a manifest is at most"),
])
def test_wrong_shaped_manifests_are_one_line_errors(bundle, scratch, capsys, mutate, fragment):
    root = copy_of(bundle, scratch)
    mutate(root)
    for err in verify_and_run(capsys, root, scratch):
        assert fragment in err, err


@pytest.mark.parametrize("mutate,fragment", [
    (_not_a_model, "object_pointer: object_pointer.onnx does not load as an artifact of format onnx"),
    (lambda root: (shutil.copy(root / "models/prompt_encoder.onnx", root / "models/object_pointer.onnx"),
                   relist(root, "models/object_pointer.onnx")),
     "object_pointer: object_pointer.onnx has inputs ['point_labels', 'points'], the manifest lists"),
])
def test_an_artifact_that_is_not_its_model_fails_parity_in_one_line(bundle, scratch, capsys, mutate, fragment):
    root = copy_of(bundle, scratch)
    mutate(root)
    report = scratch / "report.json"
    err = refused(capsys, ["verify", str(root), "--report", str(report)], [root], scratch)
    assert err.startswith("error: 1 artifact(s) failed parity: ") and fragment in err
    assert f"details in {report}" in err
    details = json.loads(report.read_text())
    assert not details["ok"] and [r["status"] for r in details["rows"]] == ["failed", "passed"]
    assert fragment in details["failures"][0]


# --- archives -------------------------------------------------------------------------------------------

def _archive(bundle: Path, scratch: Path) -> Path:
    return create_archive(bundle, scratch / "bundle.tar.gz")


def _truncate(fraction):
    def make(bundle, scratch):
        path = _archive(bundle, scratch)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
        return path
    return make


def _bytes(data):
    def make(bundle, scratch):
        (scratch / "bundle.tar.gz").write_bytes(data)
        return scratch / "bundle.tar.gz"
    return make


def _member(kind):
    def make(bundle, scratch):
        path = scratch / "bundle.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(bundle, arcname="cpu")
            info = tarfile.TarInfo("cpu/models/extra")
            if kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, "cpu/manifest.json"
            else:
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        return path
    return make


def _corrupt_middle(bundle, scratch):
    path = _archive(bundle, scratch)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make,fragment", [
    (_truncate(0.5), "cannot read it (truncated or corrupt?)"),
    (_truncate(0.999), "cannot read it (truncated or corrupt?)"),
    (_truncate(0.001), "cannot read it"),
    # gzip checks its CRC only at the end of the stream: a corrupt middle may decompress, then the
    # member's sha256 catches it
    (_corrupt_middle, ("cannot read it", "does not match its sha256")),
    (_bytes(b""), "cannot read it"),
    (_bytes(b"PK\x03\x04 this is a zip, not a tar"), "cannot read it: not a tar archive"),
    (_bytes(gzip.compress(b"plain text, gzip-compressed")), "cannot read it"),
    (_member("hardlink"), "refusing member 'cpu/models/extra': it is a link"),
    (_member("fifo"), "refusing member 'cpu/models/extra': it is not a regular file or directory"),
])
def test_bad_archives_are_one_line_errors(bundle, scratch, capsys, make, fragment):
    archive = make(bundle, scratch)
    err = refused(capsys, ["verify", str(archive), "--no-parity"], [archive], scratch)
    fragments = fragment if isinstance(fragment, tuple) else (fragment,)
    assert f"archive {archive}" in err and any(f in err for f in fragments), err


def test_archive_of_a_bad_bundle_is_refused_inside(bundle, scratch, capsys):
    """An archive's bundle gets every directory check: here a wrong-shaped manifest."""
    root = copy_of(bundle, scratch)
    edit_manifest(root, lambda m: m.update(components=[]))
    archive = create_archive(root, scratch / "bad.tar.gz")
    shutil.rmtree(root)
    err = refused(capsys, ["verify", str(archive), "--no-parity"], [archive], scratch)
    assert "manifest.components is [] (an array), expected an object" in err


def test_truncated_archive_in_a_fresh_process_prints_no_traceback(bundle, scratch):
    archive = _truncate(0.5)(bundle, scratch)
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "verify", str(archive), "--no-parity"],
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch / "tmpdir")},
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: archive ")
    assert list((scratch / "tmpdir").iterdir()) == []


# --- target files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,fragment", [
    ('[defaults]\nformat = ["onnx"]\n',
     "defaults.format is ['onnx'], expected one of onnx, ort, coreml, tensorrt, ptl"),
    ('components = 5\n[defaults]\nformat = "onnx"\n',
     "components is 5 (an integer), expected a table of [components.NAME] tables"),
    ('[defaults]\nformat = "onnx"\ncompression = {a = 1}\n',
     "defaults.compression is {'a': 1}, expected one of none, linear8, palettize4, palettize6, palettize8"),
    ('defaults = "onnx"\n', "defaults is 'onnx' (a string), expected a table: [defaults] with format, precision"),
    ('[defaults]\nformat = "onnx"\nopset = "20"\n', "defaults.opset is '20' (a string), expected an integer"),
    ('[defaults]\nformat = "onnx"\nopset = 1979-05-27\n', "defaults.opset is datetime.date(1979, 5, 27)"),
    ('[defaults]\nformat = "onnx"\n[components.text_encoder]\nnote = 3\n',
     "components.text_encoder.note is 3 (an integer), expected a string"),
    ('[defaults]\nformat = "onnx"\n[components]\ntext_encoder = "ptl"\n',
     "components.text_encoder is 'ptl' (a string), expected a table: [components.NAME]"),
    ('[defaults]\nformat = "tensorrt"\nprecision = "fp16"\n[tensorrt]\nversion = 10\n',
     "tensorrt.version is 10 (an integer), expected a version string"),
    ('[defaults]\nformat = "onnx"\n[ort]\ntarget_platform = ["arm"]\n', "ort.target_platform is ['arm']"),
    ('family = ["jetson"]\n[defaults]\nformat = "onnx"\n', "family is ['jetson'] (an array)"),
    ('[defaults]\nformat = "onnx"\n[coreml]\nminimum_deployment_target = 17\n',
     "coreml.minimum_deployment_target is 17 (an integer)"),
    ('[defaults]\nformat = "onnx"\nextra = 1\n', "defaults: unexpected key(s) 'extra'"),
    ('[defaults\nformat = "onnx"\n', "not valid TOML"),
])
def test_wrong_typed_target_files_are_one_line_errors(scratch, capsys, body, fragment):
    path = scratch / "bad.toml"
    path.write_text(f'schema = 1\nname = "bad"\ndescription = "x"\n{body}')
    out = scratch / "out"
    err = refused(capsys, ["build", "--target", str(path), "--out", str(out)], [path], scratch, out)
    assert err.startswith(f"error: target {path}: ") and fragment in err, err


def test_target_schema_allows_what_the_code_allows():
    """The schema's allowed values are the code's: a new format or compression needs both."""
    defs = target_schema()["$defs"]
    assert defs["format"]["enum"] == list(FORMATS) and defs["compression"]["enum"] == list(COMPRESSIONS)
    from toolkit.deploy.bundle import manifest_schema
    schema = manifest_schema()
    assert schema["properties"]["components"]["propertyNames"]["enum"] == list(COMPONENTS)
    assert schema["$defs"]["dim_name"]["enum"] == list(DIMS)


# --- the jetson family --------------------------------------------------------------------------------------

def test_a_family_name_resolves_to_its_default_target():
    said = []
    target = find_target("jetson", said.append)
    assert target.name == "jetson-orin" and target.family == "jetson"
    assert said == ["target 'jetson' is a family: using its default target 'jetson-orin' (also in the family: "
                    "jetson-xavier; name one to choose it)"]
    xavier = find_target("jetson-xavier")
    assert xavier.settings["tensorrt"]["version"] == "8.5" and xavier.settings["tensorrt"]["jetpack"] == "5.1"
    assert {p.format for p in xavier.plans.values()} == {"tensorrt"}


def test_a_family_with_two_defaults_is_refused(scratch, monkeypatch, capsys):
    for name in ("a", "b"):
        (scratch / f"board-{name}.toml").write_text(f'schema = 1\nname = "board-{name}"\ndescription = "x"\n'
                                                    'family = "board"\nfamily_default = true\n'
                                                    '[defaults]\nformat = "onnx"\n')
    monkeypatch.setenv("TOOLKIT_TARGETS_PATH", str(scratch))
    out = scratch / "out"
    err = refused(capsys, ["build", "--target", "board", "--out", str(out)], [scratch / "board-a.toml"], scratch, out)
    assert "target 'board' is a family of board-a, board-b with 2 default targets" in err


def test_xavier_build_says_its_operator_check_is_not_one_of_tensorrt_8_5(bundle, synthetic_state, small_builds,
                                                                         tmp_path):
    """Built from the small bundles' export cache; the shipped operator list is 10.1's, newer than 8.5."""
    said = []
    report = run_build(find_target("jetson-xavier"), tmp_path / "xavier", synthetic_state, LABEL, True,
                       components=SMALL, cache_dir=small_builds / "cache", golden=False, progress=said.append)
    manifest = open_bundle(tmp_path / "xavier").manifest
    for entry in manifest["components"].values():
        check = entry["checks"]["tensorrt_operators"]
        assert check["of_target_version"] is False and "NOT a check of TensorRT 8.5" in check["list"]
    assert any("NEWER than the target's TensorRT 8.5" in line for line in said)
    assert any("NOT a check of TensorRT 8.5" in note for note in report.notes)
    assert manifest["engines"]["tensorrt"] == "8.5"


def test_an_archive_never_writes_outside_its_temporary_directory(bundle, scratch):
    """Round trip of a good archive: extraction lands in the temporary directory and is removed."""
    from toolkit.verify.bundle import verify_bundle
    archive = _archive(bundle, scratch)
    before = _snapshot([archive])
    assert verify_bundle(archive, parity=False).files == 4
    assert _snapshot([archive]) == before and list((scratch / "tmpdir").iterdir()) == []
