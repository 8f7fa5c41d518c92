"""What every quantization stage returns, and the error a stage raises when it cannot produce a
precision for a graph (the ladder records the message as the reason to step down)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ToolkitError


class QuantizeError(ToolkitError):
    """A stage cannot make this precision of this graph (one line: why)."""


@dataclass
class StageResult:
    path: Path                 # the artifact written
    format: str                # onnx | tensorrt | coreml | ptl
    precision: str             # see gate.PRECISIONS
    method: str                # what was done, in words ("static QDQ, per-channel weights, MinMax")
    settings: dict = field(default_factory=dict)      # the library settings used
    kept_float: list[str] = field(default_factory=list)  # operator types (or modules) left in float
    operators: dict[str, int] = field(default_factory=dict)  # operator / op type counts of the artifact
    seconds: float = 0.0
    size_bytes: int = 0
    source_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    # Where the artifact cannot run here (Core ML on Linux): a PyTorch module computing what it
    # computes, with the component's inputs and outputs, for the accuracy gate. Not serialised.
    simulation: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"file": self.path.name, "format": self.format, "precision": self.precision, "method": self.method,
                "settings": self.settings, "kept_float": self.kept_float, "operators": self.operators,
                "seconds": round(self.seconds, 3), "size_bytes": self.size_bytes, "source_bytes": self.source_bytes,
                "notes": self.notes}


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
