"""The backend registry: one definition of each format, asked by every layer."""
from __future__ import annotations

import pytest

from toolkit import backends
from toolkit.backends import ALIASES, BACKENDS, backend, base, exporters
from toolkit.backends.quantize import quantize
from toolkit.bench.backends import RUNNER_ALIASES, RUNNER_KINDS
from toolkit.deploy import targets
from toolkit.deploy.export import FORMATS
from toolkit.errors import ToolkitError


def test_every_layer_reads_the_registry():
    assert list(targets.FORMATS) == list(BACKENDS)
    assert targets.PRECISIONS == {name: b.buildable() for name, b in BACKENDS.items()}
    assert all(set(b.buildable()) <= set(b.precisions) for b in BACKENDS.values())
    assert targets.FORMAT_SETTINGS == {name: dict(b.settings) for name, b in BACKENDS.items()}
    assert targets.COMPRESSIONS is BACKENDS["coreml"].options
    assert set(FORMATS) == {"onnx", "ort", "ptl"} == set(exporters())
    assert all(FORMATS[name] is BACKENDS[name] for name in FORMATS)
    for kind in RUNNER_KINDS.values():  # bench runner kinds are formats (or PyTorch eager)
        assert kind.format is None or kind.backend is BACKENDS[kind.format]
    assert {k.format for k in RUNNER_KINDS.values()} == {None, "onnx", "ort", "ptl"}


def test_a_build_is_a_list_of_stages_per_backend():
    for b in BACKENDS.values():
        assert b.stages[-1] is base.verify, b.name  # every artifact ends verified (or pending with why)
        assert (b.stages[0] is base.export) == (b.export_from is not None), b.name
    assert BACKENDS["onnx"].stages == (base.export, quantize, base.copy, base.verify)
    assert all(quantize in BACKENDS[name].stages for name in ("onnx", "ort", "tensorrt", "coreml", "ptl"))


def test_old_spellings_resolve_and_unknown_names_fail_in_one_line():
    assert backend("ort-mobile") is BACKENDS["ort"] and ALIASES == {"ort-mobile": "ort"}
    assert RUNNER_ALIASES == {"ort-mobile": "ort", "ort-cuda": "onnx-cuda"}
    assert all(new in RUNNER_KINDS for new in RUNNER_ALIASES.values())
    with pytest.raises(ToolkitError, match=r"^unknown format 'tflite'; known: onnx, ort, coreml, tensorrt, ptl$"):
        backend("tflite")


def test_availability_says_why():
    import platform
    coreml = BACKENDS["coreml"].unavailable()
    assert (coreml is None) == (platform.system() == "Darwin") and (coreml is None or "macOS" in coreml)
    assert BACKENDS["onnx"].unavailable() is None and "onnxruntime" in BACKENDS["onnx"].runtime()
    assert backends.SUFFIXES == {".onnx", ".ort", ".mlpackage", ".ptl"}
