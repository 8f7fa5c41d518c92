"""Stage recording: how a model run reports its stage boundaries (`--save-intermediates`).

A `Recorder` is called as `record(stage, {tensor_name: tensor})` with the golden manifest's stage
and tensor names; `recording_output` records a submodule's output while a block runs.
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from torch import Tensor, nn

Recorder = Callable[[str, dict[str, Tensor | np.ndarray]], None]


def stage_tensors(value, name: str = "out") -> dict[str, Tensor | np.ndarray]:
    """Name a stage's output as the manifest does: dict keys and tuple/list indices joined by dots."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {name: value}
    named = {}
    for key, item in items:
        named.update(stage_tensors(item, f"{name}.{key}"))
    return named


@contextmanager
def recording_output(module: nn.Module, record: Recorder | None, stage: str,
                     name: Callable[[object], dict] = stage_tensors) -> Iterator[None]:
    """Record `name(output)` of every `module` call inside the block as `stage`."""
    if record is None:
        yield
        return
    handle = module.register_forward_hook(lambda _m, _args, out: record(stage, name(out)))
    try:
        yield
    finally:
        handle.remove()
