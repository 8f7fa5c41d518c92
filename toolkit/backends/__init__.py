"""One backend per artifact format, and the one registry every layer asks: targets (which formats,
precisions and settings a target file may name), export (how a format is made from a graph), build
(the stages of each format), verify and bundle runs (how an artifact runs here, or why not), bench.

Format names are the same everywhere (target files, command line, reports): onnx, ort, coreml,
tensorrt, ptl; `torch` is the PyTorch reference. Imports: components, runners and (inside stages)
convert; nothing here imports the build, targets or bench.
"""
from __future__ import annotations

from ..errors import ToolkitError
from . import coreml, onnx, ort, ptl, tensorrt
from .base import Backend, Exporter, StageFailed, declared_dims, io_entries

BACKENDS: dict[str, Backend] = {b.BACKEND.name: b.BACKEND for b in (onnx, ort, coreml, tensorrt, ptl)}
# Spellings users may have typed before the names were one vocabulary (bench runner kinds), and what
# they are now: `ort-mobile` was the .ort file, which is `ort` everywhere now.
ALIASES = {"ort-mobile": "ort"}
SUFFIXES = {b.suffix for b in BACKENDS.values()}


def backend(name: str) -> Backend:
    """The backend of format `name` (an old spelling resolves, see ALIASES); one-line error otherwise."""
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ToolkitError(f"unknown format {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def exporters() -> dict[str, Backend]:
    """The formats `toolkit export` makes straight from a PyTorch graph."""
    return {name: b for name, b in BACKENDS.items() if b.exporter is not None}


__all__ = ["ALIASES", "BACKENDS", "SUFFIXES", "Backend", "Exporter", "StageFailed", "backend", "declared_dims",
           "exporters", "io_entries"]
