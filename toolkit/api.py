"""Python API mirroring the CLI: one function per subcommand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint, inventory, layout


@dataclass
class InspectReport:
    path: str
    container: str
    weights_label: str
    rows: list[inventory.Row]
    dead_keys: int
    dead_numel: int
    live_keys: int
    live_numel: int

    def to_json(self) -> dict:
        return {
            "path": self.path, "model": layout.MODEL_NAME, "container": self.container,
            "weights_label": self.weights_label, "components": inventory.as_json(self.rows),
            "dead_trunk": {"keys": self.dead_keys, "numel": self.dead_numel, "dropped": True},
            "live": {"keys": self.live_keys, "numel": self.live_numel},
        }


def inspect_checkpoint(path: str | Path) -> InspectReport:
    """Validate a checkpoint and tabulate its components (dead trunk included, then dropped)."""
    sd, container, meta = checkpoint.read_raw(path)
    live, dead_keys, dead_numel = checkpoint.validate(sd, str(path))
    rows = inventory.component_rows({k: tuple(v.shape) for k, v in sd.items()})
    return InspectReport(str(path), container, str(meta.get("weights", "")), rows, dead_keys, dead_numel,
                         len(live), sum(t.numel() for t in live.values()))
