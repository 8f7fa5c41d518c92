"""One interface over every backend: `infer(feeds) -> outputs`, with input metadata and timing.

Runners know nothing about EfficientSAM3: a runner is built from a module or an artifact path
and the tensor names; verification, benchmarks and pipelines all just call `infer`. Imports nothing
of the toolkit (numpy, and onnxruntime / torch inside the runner that needs it).
"""
from .base import Runner, TensorMeta

__all__ = ["Runner", "TensorMeta"]
