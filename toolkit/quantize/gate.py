"""Precisions, the accuracy gate and the precision ladder, as data and pure functions.

A target file's `[quantization]` table (parsed by `QuantSettings.from_dict`):

    [quantization]
    method = "minmax"            # activation calibration: minmax | entropy | percentile
    percentile = 99.999          # for method = "percentile"
    per_channel = true           # per-output-channel weight scales
    activation_type = "uint8"    # uint8 | int8 (TensorRT always gets symmetric int8)
    activation_symmetric = false
    operators = "weighted"       # what ONNX static int8 quantizes: weighted (Conv/ConvTranspose/MatMul/Gemm) | all
    keep_float = ["Softmax"]     # operator types left in float (not quantized)
    samples = 8                  # calibration samples (image + prompt runs; frames for the tracker)
    block_size = 128             # 4-bit weight blocks (MatMulNBits)
    mixed_headroom_db = 6.0      # mixed-weights: chosen on the calibration part for min_sqnr_db + this
    [quantization.gate]          # thresholds; a figure a component does not have is not applicable
    min_sqnr_db = 20.0
    min_cosine = 0.99
    min_mask_iou = 0.9
    [quantization.components.text_encoder]   # per-component overrides of the keys above
    keep_float = ["Gather"]

Per component the target says `precision = "int8" | "int8-weights" | "mixed-weights" | "int16-weights" |
"int4-weights" | "palette4" | "palette6" | "fp16" | "fp32"`, as the format allows (`FORMAT_PRECISIONS`). A precision that fails
the gate steps down its format's ladder (`LADDERS`) until one passes; fp32 is the floor of every
format and is not gated (its parity is the export verification's job).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..backends import BACKENDS
from ..errors import ToolkitError

PRECISIONS = {
    "int8": "int8 weights and activations (static, calibrated)",
    "int8-weights": "int8 weights, float activations (dynamic / weight-only)",
    "mixed-weights": "int8 weights where the outputs tolerate them (chosen on the calibration part), int16 "
                     "elsewhere; float compute",
    "int16-weights": "int16 weights (per channel), float compute: half of fp32's size, near-lossless",
    "int4-weights": "4-bit block-quantized weights (ONNX Runtime MatMulNBits), float activations",
    "palette6": "6-bit k-means palettized weights (Core ML)",
    "palette4": "4-bit k-means palettized weights (Core ML)",
    "fp16": "float16 compute",
    "fp32": "float32 (the exported graph as is)",
}
FLOOR = "fp32"
# What each format can produce and its ladder (next rung when a precision fails the gate) belong to its
# backend (toolkit/backends, the one registry of formats); fp32 is the floor of every ladder.
LADDERS: dict[str, dict[str, str]] = {name: dict(b.ladder) for name, b in BACKENDS.items()}
FORMAT_PRECISIONS = {name: tuple(b.precisions) for name, b in BACKENDS.items()}
METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
# The operator types static int8 quantizes. "weighted" (the default): the layers int8 kernels speed up
# (for ONNX Runtime less the MatMuls of two activations: toolkit.quantize.ort._activation_products);
# Softmax, LayerNorm, residual Adds, positional encodings stay float. Quantizing "all" cost the
# transformer components most of their accuracy (full-size fusion decoder SQNR -2.7 dB with all vs
# 12.5 dB weighted, mask decoder -1.3 vs 17.1 dB; untrained weights, 4 calibration samples).
OPERATOR_SETS: dict[str, tuple[str, ...] | None] = {"weighted": ("Conv", "ConvTranspose", "MatMul", "Gemm"),
                                                    "all": None}

# gate key -> (figure, "min" | "max")
GATE_FIGURES = {
    "min_sqnr_db": ("sqnr_db", "min"),
    "min_cosine": ("cosine", "min"),
    "max_rel_error": ("max_rel", "max"),
    "min_mask_iou": ("mask_iou", "min"),
    "min_matched_fraction": ("matched_fraction", "min"),
    "max_score_delta": ("max_score_delta", "max"),
    "max_box_delta_px": ("max_box_delta_px", "max"),
    "min_track_iou": ("track_iou", "min"),
}


def _bad(where: str, message: str):
    raise ToolkitError(f"{where}: {message}")


def _number(where: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _bad(where, f"{key} = {value!r}: expected a number")
    return float(value)


@dataclass(frozen=True)
class Gate:
    """Thresholds on the measured figures; None = not gated on that figure.

    Defaults: int8 of a well-behaved layer stack gives 25-40 dB; 20 dB (error energy 1 % of the
    signal) and cosine 0.99 are the usual floor for 'no visible change'. Mask IoU 0.9 is over the
    pixels the fp32 model is decided on (|logit| > margin, see metrics), so it does not punish flips of
    undecided pixels of the untrained default weights. Detections: 80 % of the fp32 detections found
    again, scores within 0.1. Tracker: the worst frame's mask IoU 0.8.
    """

    min_sqnr_db: float | None = 20.0
    min_cosine: float | None = 0.99
    max_rel_error: float | None = None
    min_mask_iou: float | None = 0.9
    min_matched_fraction: float | None = 0.8
    max_score_delta: float | None = 0.1
    max_box_delta_px: float | None = None
    min_track_iou: float | None = 0.8

    @classmethod
    def from_dict(cls, table: Mapping | None, where: str = "[quantization.gate]") -> Gate:
        table = dict(table or {})
        unknown = sorted(set(table) - set(GATE_FIGURES))
        if unknown:
            _bad(where, f"unknown key {unknown[0]!r}; the gate keys are {', '.join(GATE_FIGURES)}")
        return cls(**{k: _number(where, k, v) for k, v in table.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check(self, figures: Mapping[str, Any]) -> list[str]:
        """Why `figures` fail the gate (empty: they pass). A threshold whose figure is absent does not apply."""
        failures = []
        for key, (figure, kind) in GATE_FIGURES.items():
            limit = getattr(self, key)
            value = figures.get(figure)
            if limit is None or value is None:
                continue
            if (kind == "min" and not value >= limit) or (kind == "max" and not value <= limit):
                failures.append(f"{figure} {value:.4g} {'<' if kind == 'min' else '>'} {limit:g} ({key})")
        return failures


@dataclass(frozen=True)
class QuantSettings:
    """The [quantization] table: how artifacts are calibrated and quantized, and the gate."""

    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: str = "uint8"
    activation_symmetric: bool = False
    operators: str = "weighted"
    keep_float: tuple[str, ...] = ()
    samples: int = 8
    block_size: int = 128
    mask_margin: float = 0.5
    mixed_headroom_db: float = 6.0
    gate: Gate = field(default_factory=Gate)
    components: Mapping[str, Mapping] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, table: Mapping | None, where: str = "[quantization]") -> QuantSettings:
        table = dict(table or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            _bad(where, f"unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
        components = table.pop("components", {}) or {}
        if not isinstance(components, Mapping):
            _bad(where, "components must be a table of per-component tables")
        values = cls._values(table, where)
        settings = cls(**values, components={})
        for name, override in components.items():
            if not isinstance(override, Mapping):
                _bad(f"{where}.components.{name}", "expected a table")
            bad = sorted(set(override) - (known - {"components"}))
            if bad:
                _bad(f"{where}.components.{name}", f"unknown key {bad[0]!r}")
            cls._values(dict(override), f"{where}.components.{name}")  # validated now, applied by for_component
        return replace(settings, components={k: dict(v) for k, v in components.items()})

    @classmethod
    def _values(cls, table: dict, where: str) -> dict:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key == "gate":
                out[key] = Gate.from_dict(value, f"{where}.gate") if isinstance(value, Mapping) else \
                    _bad(where, "gate must be a table")
            elif key == "method":
                if value not in METHODS:
                    _bad(where, f"method = {value!r}; expected one of {', '.join(METHODS)}")
                out[key] = value
            elif key == "operators":
                if value not in OPERATOR_SETS:
                    _bad(where, f"operators = {value!r}; expected one of {', '.join(OPERATOR_SETS)}")
                out[key] = value
            elif key == "activation_type":
                if value not in ACTIVATION_TYPES:
                    _bad(where, f"activation_type = {value!r}; expected one of {', '.join(ACTIVATION_TYPES)}")
                out[key] = value
            elif key in ("per_channel", "activation_symmetric"):
                if not isinstance(value, bool):
                    _bad(where, f"{key} = {value!r}: expected true or false")
                out[key] = value
            elif key == "keep_float":
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    _bad(where, "keep_float must be a list of operator type names")
                out[key] = tuple(value)
            elif key in ("samples", "block_size"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    _bad(where, f"{key} = {value!r}: expected a positive integer")
                if key == "block_size" and (value < 16 or value & (value - 1)):
                    _bad(where, f"block_size = {value}: expected a power of two >= 16")
                out[key] = value
            elif key == "percentile":
                number = _number(where, key, value)
                if not 50.0 < number <= 100.0:
                    _bad(where, f"percentile = {value}: expected a number in (50, 100]")
                out[key] = number
            elif key in ("mask_margin", "mixed_headroom_db"):
                number = _number(where, key, value)
                if number < 0:
                    _bad(where, f"{key} = {value}: expected >= 0")
                out[key] = number
        return out

    @property
    def mixed_target_db(self) -> float:
        """The output SQNR mixed-weights keeps on the calibration part: the gate's floor plus headroom, so
        that the gate, measured on the evaluation part the choice never saw, passes with room to spare
        (another CPU's rounding included)."""
        floor = self.gate.min_sqnr_db if self.gate.min_sqnr_db is not None else Gate().min_sqnr_db
        return floor + self.mixed_headroom_db

    def for_component(self, name: str) -> QuantSettings:
        """These settings with the component's overrides applied."""
        override = self.components.get(name)
        if not override:
            return self
        return replace(self, **self._values(dict(override), f"[quantization.components.{name}]"))

    def to_dict(self) -> dict:
        """JSON-ready (hashed into the calibration digest, kept in the manifest)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gate"] = self.gate.to_dict()
        out["keep_float"] = list(self.keep_float)
        out["components"] = {k: dict(v) for k, v in self.components.items()}
        return out


# --- the ladder ------------------------------------------------------------------------------------

def check_precision(fmt: str, precision: str, where: str = "") -> None:
    if fmt not in FORMAT_PRECISIONS:
        raise ToolkitError(f"{where}unknown format {fmt!r}; quantization knows {', '.join(FORMAT_PRECISIONS)}")
    if precision not in FORMAT_PRECISIONS[fmt]:
        raise ToolkitError(f"{where}precision {precision!r} is not available for format {fmt}; it takes "
                           f"{', '.join(FORMAT_PRECISIONS[fmt])}")


def ladder(fmt: str, requested: str) -> list[str]:
    """The rungs tried for `requested` on `fmt`, in order, ending with fp32."""
    check_precision(fmt, requested)
    return BACKENDS[fmt].rungs(requested)


@dataclass
class Rung:
    precision: str
    passed: bool
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # gate failures, or the quantizer's error
    artifact: Any = None

    def to_dict(self) -> dict:
        return {"precision": self.precision, "passed": self.passed, "figures": self.figures,
                "failures": self.failures}


@dataclass
class LadderResult:
    component: str
    format: str
    requested: str
    chosen: str
    rungs: list[Rung]

    @property
    def artifact(self) -> Any:
        return self.rungs[-1].artifact

    @property
    def steps(self) -> list[str]:
        """One line per step down: which precision failed and why."""
        return [f"{self.component}: {r.precision} -> {nxt.precision}: {'; '.join(r.failures)}"
                for r, nxt in zip(self.rungs, self.rungs[1:])]

    def to_dict(self) -> dict:
        """For the manifest: the precision chosen and the figures of every rung tried."""
        return {"component": self.component, "format": self.format, "requested": self.requested,
                "chosen": self.chosen,
                "rungs": [r.to_dict() for r in self.rungs], "steps": self.steps}


Attempt = Callable[[str], tuple[Any, Mapping[str, Any]]]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def choose_precision(component: str, fmt: str, requested: str, attempt: Attempt, gate: Gate) -> LadderResult:
    """Walk the ladder from `requested`: `attempt(precision)` quantizes and measures, returning
    (artifact, figures). The first precision whose figures pass `gate` is chosen; a failing gate or an
    exception from `attempt` (a quantizer that cannot do this graph) steps down, with the reason.
    The floor (fp32) is not gated: it is the export's verified artifact."""
    rungs: list[Rung] = []
    for precision in ladder(fmt, requested):
        if precision == FLOOR:
            artifact, figures = attempt(precision)  # an fp32 failure is a real error: not caught
            rungs.append(Rung(precision, True, dict(figures), [], artifact))
            break
        try:
            artifact, figures = attempt(precision)
        except ToolkitError as err:
            rungs.append(Rung(precision, False, {}, [str(err)]))
            continue
        except Exception as err:  # noqa: BLE001 - any quantizer failure is a reason to step down
            rungs.append(Rung(precision, False, {}, [f"quantization failed: {_one_line(err)}"]))
            continue
        failures = gate.check(figures)
        rungs.append(Rung(precision, not failures, dict(figures), failures, artifact))
        if not failures:
            break
    return LadderResult(component, fmt, requested, rungs[-1].precision, rungs)


def settle_end_to_end(chosen: Mapping[str, str], formats: Mapping[str, str], sensitivity: Mapping[str, float],
                      measure: Callable[[Mapping[str, str]], Mapping[str, Any]], gate: Gate,
                      max_rounds: int = 16,
                      behind: Callable[[str], Iterable[str]] | None = None) -> tuple[dict[str, str], list[dict]]:
    """The end-to-end half of the gate: while the pipelines with every component at its chosen
    precision fail `gate`, step the most sensitive component that is not at fp32 (lowest figure in
    `sensitivity`, e.g. its own SQNR) one rung down its format's ladder and measure again. With
    `behind(figure) -> components` (the components of the pipeline a figure measures), only a
    component behind a failing figure is stepped down: a tracker-only component cannot mend the
    detector's figures. Returns the final precisions and one record per round (precisions, figures,
    failures, step)."""
    current = dict(chosen)
    history: list[dict] = []
    for _ in range(max_rounds):
        figures = dict(measure(current))
        failures = gate.check(figures)
        record = {"precisions": dict(current), "figures": figures, "failures": failures}
        history.append(record)
        if not failures:
            break
        suspects = None if behind is None else {c for f in failures for c in behind(f.split()[0])}
        candidates = [c for c in current if current[c] != FLOOR and (suspects is None or c in suspects)]
        if not candidates:
            break
        worst = min(candidates, key=lambda c: sensitivity.get(c, float("inf")))
        step = LADDERS[formats[worst]][current[worst]]
        record["step"] = f"{worst}: {current[worst]} -> {step}: end to end {'; '.join(failures)}"
        current[worst] = step
    return current, history
