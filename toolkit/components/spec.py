"""Tensor specs with symbolic dimensions: what a component takes and gives, as data.

A shape is a tuple of ints and dimension expressions: a dimension name from `DIMS`
(``"boxes"``) or a sum of products of names and integers (``"boxes+1"``,
``"5184*memory_frames"``). Export turns the names of input shapes into dynamic axes,
verification evaluates every shape at concrete dimension values, and the same specs generate
example inputs. Nothing here knows about EfficientSAM3 beyond the list of dimensions.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Sampler = Callable[[tuple[int, ...], np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Dim:
    """A dimension that varies at run time. `typical` (>= 2) is the value used to trace and
    export (exporters specialise sizes 0 and 1) and for the typical verification case."""

    name: str
    min: int
    max: int
    typical: int
    doc: str

    def __post_init__(self):
        if not (self.min <= self.typical <= self.max and self.typical >= 2):
            raise ValueError(f"dim {self.name}: need min <= typical <= max and typical >= 2")


DIMS: dict[str, Dim] = {d.name: d for d in (
    Dim("text_tokens", 2, 77, 77, "token ids of one text prompt: start, words, end, padding "
        "(the tokenizer pads to 77; a cut context is shorter)"),
    Dim("boxes", 0, 16, 2, "box prompts of the detector (0 = text only)"),
    Dim("prompt_tokens", 3, 94, 79, "prompt length: text tokens + boxes + 1 geometry CLS token"),
    Dim("points", 1, 16, 2, "SAM prompt points of one object, box corners and padding points "
        "included (a frame without clicks has one padding point)"),
    Dim("objects", 1, 8, 2, "objects the tracker runs as one batch"),
    Dim("memory_frames", 1, 7, 2, "spatial memories in the tracker's bank (conditioning frames "
        "+ up to 6 recent frames), 5184 tokens each"),
    Dim("pointers", 0, 16, 2, "object pointers in the tracker's bank, 4 tokens each"),
)}

_TERM = re.compile(r"^[A-Za-z_]\w*$|^\d+$")


def evaluate(expr: int | str, values: Mapping[str, int]) -> int:
    """The value of one shape entry: an int, a dim name, or a sum of products of both."""
    if isinstance(expr, int):
        return expr
    total = 0
    for term in expr.replace(" ", "").split("+"):
        product = 1
        for factor in term.split("*"):
            if not _TERM.match(factor):
                raise ValueError(f"bad dimension expression {expr!r}")
            product *= int(factor) if factor.isdigit() else values[factor]
        total += product
    return total


def linear_form(expr: str) -> tuple[str, int, int]:
    """`expr` as (name, a, b) with expr = a * name + b; raises unless it has that form."""
    names = dim_names(expr)
    if len(set(names)) != 1:
        raise ValueError(f"{expr!r} is not linear in one dimension")
    offset = evaluate(expr, {names[0]: 0})
    return names[0], evaluate(expr, {names[0]: 1}) - offset, offset


def dim_names(expr: int | str) -> list[str]:
    """Dimension names an expression uses."""
    if isinstance(expr, int):
        return []
    return [f for f in re.split(r"[+*]", expr.replace(" ", "")) if not f.isdigit()]


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. `range` bounds generated values (and documents them);
    `sampler` replaces the default generator where values have structure (token ids ...)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    doc: str
    range: tuple[float, float] | None = None
    sampler: Sampler | None = None

    def dims(self) -> list[str]:
        return [name for entry in self.shape for name in dim_names(entry)]

    def dynamic_axes(self) -> dict[int, str]:
        """Axes whose size is a dimension expression (what an exporter marks dynamic)."""
        return {axis: e for axis, e in enumerate(self.shape) if isinstance(e, str)}

    def concrete(self, values: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(evaluate(e, values) for e in self.shape)

    def sample(self, values: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
        """A random value of this spec at the given dimension values."""
        shape = self.concrete(values)
        if self.sampler is not None:
            x = self.sampler(shape, rng)
        elif self.dtype == "bool":
            x = rng.random(shape) < 0.5
        elif np.issubdtype(np.dtype(self.dtype), np.integer):
            low, high = self.range or (0, 1)
            x = rng.integers(int(low), int(high) + 1, shape)
        elif self.range is not None:
            x = rng.uniform(*self.range, shape)
        else:
            x = rng.standard_normal(shape)
        return np.asarray(x).astype(self.dtype)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc,
                "range": list(self.range) if self.range else None,
                "sampler": self.sampler.__name__ if self.sampler else None}
