"""`--save-intermediates`: one `.npz` per stage boundary, named as in the golden manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class StageDump:
    """A `record(stage, tensors)` callback that writes `DIR/<stage>.npz` with full tensors."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.stages: list[str] = []

    def __call__(self, stage: str, tensors: dict) -> None:
        arrays = {name: (t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t))
                  for name, t in tensors.items()}
        np.savez(self.directory / f"{stage}.npz", **arrays)
        self.stages.append(stage)


def load_dump(directory: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Stage name -> tensors of a dump directory."""
    out = {}
    for path in sorted(Path(directory).glob("*.npz")):
        with np.load(path) as z:
            out[path.stem] = {k: z[k] for k in z.files}
    return out
