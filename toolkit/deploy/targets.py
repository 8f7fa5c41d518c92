"""Deployment targets as data: one TOML file per target, read and validated here.

A target file says, per component, which artifact the bundle gets and how it is made:

    schema = 1
    name = "ios"
    description = "..."
    image_size = 1008                 # the model input size (the model is built for 1008 only)

    [defaults]                        # every component, unless overridden below
    format = "coreml"                 # onnx | ort | coreml | tensorrt | ptl   (see FORMATS)
    precision = "fp16"                # fp32 | fp16, as the format allows
    opset = 20                        # highest ONNX opset the target's runtime takes
    fallback = "ptl"                  # format used when `format` cannot take a component
    compression = "none"              # Core ML weight compression (see COMPRESSIONS)

    [coreml]                          # settings of one format's conversion stage
    minimum_deployment_target = "iOS17"

    [components.text_encoder]         # single keys overridden for one component
    compression = "linear8"
    note = "why"                      # shown by `toolkit targets`, kept in the manifest

    [quantization]                    # calibration and the accuracy gate of quantized precisions
    samples = 4                       #   (toolkit.quantize.gate.QuantSettings: method, per_channel,
    [quantization.gate]               #   activation_type, keep_float, ...; gate thresholds)
    min_sqnr_db = 20.0

Precisions: fp32 | fp16 | int8 | int8-weights | int16-weights | int4-weights | palette6 | palette4, as the format
allows (its backend's `precisions`). A quantized precision is measured against fp32 at build time
and steps down the format's ladder (its backend's `ladder`) when it fails the gate.
`--precision P` (`Target.with_precision`) overrides the file for every component whose format
can produce P.

    family = "jetson"                 # optional: `--target jetson` means the family's default,
    family_default = true             #   the one target of the family with family_default = true

Adding a target is adding a file: targets are looked up by name in the directories of
$TOOLKIT_TARGETS_PATH, then ./targets, then the project's targets/ directory; `--target` also
takes a path to a .toml file. A file is validated against toolkit/data/target.schema.json (types,
allowed values, known keys; one-line errors naming the key) before the checks that need the
component declarations (precision per format, opsets).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from importlib.resources import files
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from ..backends import BACKENDS
from ..backends.coreml import COMPRESSIONS
from ..components.registry import COMPONENTS, IMAGE_SIZE
from ..errors import ToolkitError
from ..quantize.gate import QuantSettings

SCHEMA = 1
PROJECT_TARGETS = Path(__file__).resolve().parents[2] / "targets"

# What each format is, the precisions it produces and its settings table: its backend's (toolkit/backends).
FORMATS = {name: b.description for name, b in BACKENDS.items()}
PRECISIONS = {name: b.buildable() for name, b in BACKENDS.items()}  # what `toolkit build` makes per format
FORMAT_SETTINGS = {name: dict(b.settings) for name, b in BACKENDS.items()}
_COMPONENT_KEYS = {"format", "precision", "opset", "fallback", "compression", "note"}
_TOP_KEYS = {"schema", "name", "description", "image_size", "defaults", "components", "family", "family_default",
             "quantization", *FORMAT_SETTINGS}


@cache
def target_schema() -> dict:
    return json.loads(files("toolkit").joinpath("data", "target.schema.json").read_text())


@dataclass(frozen=True)
class ComponentPlan:
    """What one component becomes in a bundle of this target."""

    component: str
    format: str
    precision: str
    opset: int
    fallback: str | None
    compression: str = "none"
    note: str = ""

    def fallback_plan(self) -> ComponentPlan:
        return ComponentPlan(self.component, self.fallback, "fp32", self.opset, None, "none", self.note)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    path: str
    sha256: str
    image_size: int
    plans: dict[str, ComponentPlan]
    settings: dict[str, dict] = field(default_factory=dict)
    family: str | None = None
    family_default: bool = False
    quantization: QuantSettings = field(default_factory=QuantSettings)
    precision_override: str | None = None  # --precision

    def quantized(self) -> list[str]:
        """Components planned at a precision other than their format's unquantized ones (fp32, fp16)."""
        return [n for n, p in self.plans.items() if p.precision not in ("fp32", "fp16")]

    def with_precision(self, precision: str, progress: Callable[[str], None] = lambda message: None) -> Target:
        """The target with every component at `precision` where its format produces it (`--precision`);
        the others keep the file's precision, said through `progress`. None of them: one-line error."""
        takes = {n: p for n, p in self.plans.items() if precision in PRECISIONS[p.format]}
        if not takes:
            offered = "; ".join(f"{f}: " + ", ".join(PRECISIONS[f]) for f in self.formats())
            raise ToolkitError(f"--precision {precision}: no format of target {self.name} produces it ({offered})")
        kept = sorted(set(self.plans) - set(takes))
        if kept:
            progress(f"--precision {precision}: {', '.join(kept)} keep the file's precision (their format "
                     f"{', '.join(sorted({self.plans[n].format for n in kept}))} cannot produce {precision})")
        plans = {n: replace(p, precision=precision) if n in takes else p for n, p in self.plans.items()}
        return replace(self, plans=plans, precision_override=precision)

    def formats(self) -> list[str]:
        """Formats the bundle uses, fallbacks included, in FORMATS order."""
        used = {p.format for p in self.plans.values()} | {p.fallback for p in self.plans.values() if p.fallback}
        return [f for f in FORMATS if f in used]

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "file": Path(self.path).name,
                "file_sha256": self.sha256, "image_size": self.image_size,
                "settings": {f: s for f, s in self.settings.items() if f in self.formats()},
                "precision_override": self.precision_override}


def _fail(path: Path, message: str):
    raise ToolkitError(f"target {path}: {message}")


def _check_keys(path: Path, where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        _fail(path, f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")


def _plan(path: Path, name: str, values: dict) -> ComponentPlan:
    fmt, precision, fallback = values.get("format"), values.get("precision", "fp32"), values.get("fallback")
    where = f"component {name}"
    if fallback == fmt:  # a component moved to the fallback format itself has none
        fallback = None
    if fmt not in FORMATS:
        _fail(path, f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS[fmt]:
        _fail(path, f"{where}: format {fmt} takes precision {', '.join(PRECISIONS[fmt])}, not {precision!r}")
    if fallback is not None and fallback not in FORMATS:
        _fail(path, f"{where}: fallback {fallback!r} is not one of {', '.join(FORMATS)}")
    compression = values.get("compression", "none")
    if compression not in COMPRESSIONS:
        _fail(path, f"{where}: compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if compression != "none" and fmt != "coreml":
        _fail(path, f"{where}: weight compression is a Core ML setting; format {fmt} takes none")
    opset = values.get("opset", COMPONENTS[name].onnx.opset)
    if not isinstance(opset, int):
        _fail(path, f"{where}: opset must be an integer")
    if fmt in ("onnx", "ort", "tensorrt") and COMPONENTS[name].onnx.opset > opset:
        _fail(path, f"{where}: the component exports ONNX opset {COMPONENTS[name].onnx.opset}, above the "
                    f"target's highest opset {opset}")
    return ComponentPlan(name, fmt, precision, opset, fallback, compression, str(values.get("note", "")))


def load_target(path: str | Path) -> Target:
    """Read and validate one target file; raises ToolkitError naming the file and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ToolkitError(f"cannot read target file {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"target {path}: not valid TOML: {e}") from e
    if data.get("schema") != SCHEMA:
        _fail(path, f"schema = {data.get('schema')!r}; this toolkit reads target schema {SCHEMA}")
    from .bundle import schema_errors
    errors = schema_errors(data, target_schema(), where="", toml=True)
    if errors:  # types and values first: the checks below may then rely on them
        _fail(path, errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    _check_keys(path, "the file", data, _TOP_KEYS)
    for key in ("name", "description"):
        if not isinstance(data.get(key), str) or not data[key]:
            _fail(path, f"'{key}' must be a non-empty string")
    image_size = data.get("image_size", IMAGE_SIZE)
    if image_size != IMAGE_SIZE:
        _fail(path, f"image_size = {image_size}: the model's position encodings and 72x72 token grid are "
                    f"built for {IMAGE_SIZE}x{IMAGE_SIZE} inputs only")
    defaults = data.get("defaults", {})
    _check_keys(path, "[defaults]", defaults, _COMPONENT_KEYS - {"note"})
    overrides = data.get("components", {})
    unknown = sorted(set(overrides) - set(COMPONENTS))
    if unknown:
        _fail(path, f"unknown component(s) {unknown}; known: {', '.join(COMPONENTS)}")
    plans = {}
    for name in COMPONENTS:
        _check_keys(path, f"[components.{name}]", overrides.get(name, {}), _COMPONENT_KEYS)
        plans[name] = _plan(path, name, {**defaults, **overrides.get(name, {})})
    settings = {}
    for fmt, known in FORMAT_SETTINGS.items():
        table = data.get(fmt, {})
        _check_keys(path, f"[{fmt}]", table, set(known))
        settings[fmt] = {**known, **table}
    if settings["ort"]["target_platform"] not in ("arm", "amd64"):
        _fail(path, "[ort] target_platform must be 'arm' or 'amd64'")
    if settings["ort"]["optimization_style"] not in ("Fixed", "Runtime"):
        _fail(path, "[ort] optimization_style must be 'Fixed' or 'Runtime'")
    try:
        quantization = QuantSettings.from_dict(data.get("quantization"))
    except ToolkitError as e:
        _fail(path, str(e))
    unknown = sorted(set(quantization.components) - set(COMPONENTS))
    if unknown:
        _fail(path, f"[quantization.components]: unknown component(s) {unknown}; known: {', '.join(COMPONENTS)}")
    return Target(data["name"], data["description"], str(path), hashlib.sha256(raw).hexdigest(), image_size,
                  plans, settings, data.get("family"), data.get("family_default", False), quantization)


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("TOOLKIT_TARGETS_PATH", "").split(os.pathsep) if p]
    dirs = [*extra, Path.cwd() / "targets", PROJECT_TARGETS]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def available() -> dict[str, Path]:
    """Target name (file stem) -> file, the first found on the search path."""
    found: dict[str, Path] = {}
    for directory in search_path():
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def _family_of(path: Path) -> tuple[str | None, bool]:
    """(family, family_default) of a target file, read leniently: a broken file elsewhere on the
    search path must not stop resolving a family (it fails when it is itself chosen)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None, False
    family = data.get("family")
    return (family, data.get("family_default") is True) if isinstance(family, str) else (None, False)


def find_target(name_or_path: str, progress: Callable[[str], None] = lambda message: None) -> Target:
    """A target by name (targets/<name>.toml on the search path), by family name (the family's
    default target, said through `progress`) or by path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise ToolkitError(f"target file {path} does not exist")
        return load_target(path)
    known = available()
    if name_or_path not in known:
        members = {name: _family_of(file) for name, file in known.items()}
        members = {name: default for name, (family, default) in members.items() if family == name_or_path}
        defaults = [name for name, default in members.items() if default]
        if len(defaults) == 1:
            others = sorted(set(members) - set(defaults))
            progress(f"target {name_or_path!r} is a family: using its default target {defaults[0]!r}"
                     + (f" (also in the family: {', '.join(others)}; name one to choose it)" if others else ""))
            return find_target(defaults[0])
        if members:
            raise ToolkitError(f"target {name_or_path!r} is a family of {', '.join(sorted(members))} with "
                               f"{len(defaults)} default targets (family_default = true): name one of them")
        raise ToolkitError(f"unknown target {name_or_path!r}; known: {', '.join(known) or 'none'} "
                           f"(searched {', '.join(map(str, search_path()))})")
    target = load_target(known[name_or_path])
    if target.name != name_or_path:
        raise ToolkitError(f"target file {known[name_or_path]} is named {target.name!r}, not {name_or_path!r}")
    return target


def describe(target: Target) -> list[str]:
    """What a target produces, one line per (format, precision) group: `toolkit targets`."""
    groups: dict[tuple[str, str], list[str]] = {}
    for plan in target.plans.values():
        label = plan.component + (f" ({plan.compression})" if plan.compression != "none" else "")
        groups.setdefault((plan.format, plan.precision), []).append(label)
    family = (f"  (family {target.family}" + (", its default" if target.family_default else "") + ")"
              if target.family else "")
    lines = [f"{target.name}: {target.description}  [{target.path}]{family}"]
    for (fmt, precision), names in groups.items():
        lines.append(f"  {fmt:8} {precision}  {len(names):2} components: {', '.join(names)}")
    for plan in target.plans.values():
        if plan.note:
            lines.append(f"  note on {plan.component}: {plan.note}")
    fallbacks = sorted({p.fallback for p in target.plans.values() if p.fallback})
    settings = "; ".join(f"{fmt}: " + ", ".join(f"{k}={v}" for k, v in s.items())
                         for fmt, s in target.settings.items() if s and fmt in target.formats())
    lines.append(f"  fallback: {', '.join(fallbacks) or 'none (a component the format cannot take fails the build)'}"
                 + (f"; {settings}" if settings else ""))
    if target.quantized():
        q, ladders = target.quantization, []
        for plan in target.plans.values():
            if plan.component in target.quantized():
                ladders.append(" -> ".join(BACKENDS[plan.format].rungs(plan.precision)))
        gate = ", ".join(f"{k}={v:g}" for k, v in q.gate.to_dict().items() if v is not None)
        lines.append(f"  quantization: {q.method} calibration on {q.samples} samples, ladder "
                     f"{'; '.join(dict.fromkeys(ladders))}; gate {gate}")
    return lines
