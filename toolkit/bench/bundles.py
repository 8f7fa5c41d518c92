"""`toolkit bench --bundle DIR`: any bundle's artifacts and the runtime's scenarios, beside fp32 and eager.

Per component, each bundle's artifact runs on the runner its format needs (`artifact_runner`: the
format's backend, feeds converted to the artifact's tensor types as the manifest records; int8 and
other quantized ONNX / .ort alike), next to the reference runner kinds of the same run (`torch`,
PyTorch eager; `onnx`, the fp32 export given with --artifacts). Every runner of one component is
built first and the timed calls alternate between them (round robin after the warm-ups), so all of
them see the same machine load; ratios are p50 over p50 of the same run.

Scenarios (image + text, image + text + box, click tracking over N frames) run from each bundle with
the torch-free runtime (`toolkit.runtime` Segmenter / Tracker, as `toolkit run` uses them: sessions
created on first use and released after, so session creation is part of every run), interleaved the
same way with the eager pipeline and the reference kinds' pipelines. Whole-run peak resident memory
comes from fresh processes (`wholerun.py`), the runtime's import footprint stated beside.

The fp32 reference of a ratio: the `onnx` runner (fp32 export) where it ran, otherwise the first
bundle whose artifact (component) or components (scenario) are all fp32.
Anything that cannot run here (a component missing from a partial bundle, Core ML or TensorRT
engines without their runtime, a scenario whose components the bundle lacks) is a skipped row with
the reason.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..backends import BACKENDS
from ..components.registry import COMPONENTS
from ..errors import ToolkitError
from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
from ..runtime.sessions import ORT_FORMATS  # what the runtime runs
from .harness import _error, _Row, load_1min, sig3, summarize, with_changes

Progress = Callable[[str], None]
PREFIX = "bundle:"


@dataclass(frozen=True)
class BenchBundle:
    label: str
    root: Path
    manifest: dict

    @property
    def runner(self) -> str:
        return PREFIX + self.label

    def component_bytes(self, name: str) -> int:
        """The artifact's bytes (a Core ML package: every file in it), from the checked file list."""
        file = self.manifest["components"][name]["file"]
        return sum(e["bytes"] for e in self.manifest["files"] if e["path"] == file or e["path"].startswith(file + "/"))

    def all_fp32(self, names) -> bool:
        return all(self.manifest["components"].get(n, {}).get("precision") == "fp32" for n in names)

    def describe(self) -> dict:
        comps = self.manifest["components"]
        sizes = {name: self.component_bytes(name) for name in comps}
        from ..deploy.bundle import walk_files
        total = sum((self.root / rel).stat().st_size for rel in walk_files(self.root))  # manifest, engines too
        return {"label": self.label, "path": str(self.root), "target": self.manifest["target"]["name"],
                "status": "ok", "size_bytes": total, "other_bytes": total - sum(sizes.values()),
                "weights": self.manifest["model"].get("weights"),
                "components": {name: {"file": e["file"], "format": e["format"], "precision": e["precision"],
                                      "size_bytes": sizes[name]} for name, e in comps.items()}}


def open_one(path: str, taken: set[str]) -> BenchBundle:
    """`path` as a bundle (schema, declarations and every file's sha256 checked; BundleError, one line,
    otherwise), labelled by its folder name, made unique among `taken` (which it joins)."""
    from ..deploy.bundle import open_bundle

    opened = open_bundle(path)
    name = label = Path(path).resolve().name
    n = 1
    while label in taken:
        n += 1
        label = f"{name}#{n}"
    taken.add(label)
    return BenchBundle(label, opened.root.resolve(), opened.manifest)


def open_bundles(paths: list[str]) -> list[BenchBundle]:
    taken: set[str] = set()
    return [open_one(path, taken) for path in paths]


# --- components ---------------------------------------------------------------------------------

def _bundle_runner(bundle: BenchBundle, comp, dims: dict, threads: int):
    """(factory, None) for the bundle's artifact of `comp`, or (None, why it cannot run here)."""
    from ..pipeline.artifacts import artifact_runner

    entry = bundle.manifest["components"].get(comp.name)
    if entry is None:
        return None, f"{comp.name} is not in this bundle (a build with --components?)"
    fmt = entry["format"]
    if reason := BACKENDS[fmt].unavailable():
        return None, f"{fmt} artifact: {reason} on this device"
    outside = [d for d, v in dims.items() if not entry["dims"][d][0] <= v <= entry["dims"][d][2]]
    if outside:
        return None, f"the example's {', '.join(outside)} lie outside the artifact's ranges {entry['dims']}"
    path = bundle.root / entry["file"]
    return (lambda: artifact_runner(fmt, path, entry["inputs"], entry["outputs"], threads=threads)), None


def _interleaved(runners: list, feeds: dict, warmup: int, repeats: int) -> list[list[float]]:
    """Seconds per runner: warm-ups, then `repeats` rounds in which every runner runs once."""
    for runner in runners:
        for _ in range(warmup):
            runner.infer(feeds)
    seconds = [[] for _ in runners]
    for _ in range(repeats):
        for i, runner in enumerate(runners):
            runner.infer(feeds)
            seconds[i].append(runner.last_inference_time)
    return seconds


def _ratios(rows: list[dict], key: str, bundles: list[BenchBundle], names_of: Callable[[dict], tuple]) -> None:
    """ratio_to_eager and ratio_to_fp32 (see the module docstring) of each measured row, per `key` group."""
    for group in dict.fromkeys(r[key] for r in rows):
        mine = [r for r in rows if r[key] == group and r.get("latency_ms")]
        eager = next((r for r in mine if r["runner"] in ("torch", "eager")), None)
        fp32 = next((r for r in mine if r["runner"] == "onnx"), None) or next(
            (r for b in bundles for r in mine if r["runner"] == b.runner and b.all_fp32(names_of(r))), None)
        for r in mine:
            r["ratio_to_eager"] = round(r["latency_ms"]["p50"] / eager["latency_ms"]["p50"], 4) if eager else None
            r["ratio_to_fp32"] = round(r["latency_ms"]["p50"] / fp32["latency_ms"]["p50"], 4) if fp32 else None
            r["fp32_reference"] = fp32["runner"] if fp32 else None


def component_rows(config, bundles: list[BenchBundle], sources, progress: Progress) -> list[dict]:
    from .backends import RUNNER_KINDS

    rows = []
    for name in config.components:
        comp = COMPONENTS[name]
        feeds = comp.example()
        dims = {d.name: d.typical for d in comp.dims()}
        contenders = []  # (row, factory)
        for kind_name in config.runners:
            kind, row = RUNNER_KINDS[kind_name], asdict(_Row(name, kind_name, dims=dims))
            rows.append(row)
            if reason := kind.unavailable(comp, sources):
                row.update(status="skipped", reason=reason)
            else:
                contenders.append((row, lambda kind=kind: kind.build(comp, sources)))
        for bundle in bundles:
            entry = bundle.manifest["components"].get(name, {})
            row = {**asdict(_Row(name, bundle.runner, dims=dims)), "bundle": bundle.label,
                   "format": entry.get("format"), "precision": entry.get("precision")}
            rows.append(row)
            factory, reason = _bundle_runner(bundle, comp, dims, sources.threads)
            if reason:
                row.update(status="skipped", reason=reason)
            else:
                row.update(artifact=entry["file"], size_bytes=bundle.component_bytes(name))
                contenders.append((row, factory))
        for row in rows:
            if row["component"] == name and row["status"] == "skipped":
                progress(f"{name} / {row['runner']}: skipped ({row['reason']})")
        built = []
        for row, factory in contenders:
            try:
                built.append((row, factory()))
            except Exception as e:  # noqa: BLE001 - one artifact that does not load must not stop the others
                row.update(status="failed", reason=_error(e))
                progress(f"{name} / {row['runner']}: FAILED ({row['reason']})")
        if not built:
            continue
        progress(f"{name}: {', '.join(r['runner'] for r, _ in built)} interleaved, {config.warmup} warm-up + "
                 f"{config.repeats} timed runs each")
        try:
            seconds = _interleaved([runner for _, runner in built], feeds, config.warmup, config.repeats)
        except Exception as e:  # noqa: BLE001
            for row, _ in built:
                row.update(status="failed", reason=_error(e))
            progress(f"{name}: FAILED ({_error(e)})")
            continue
        finally:
            del built[:]  # free the runners before the next component's are built
        measured = [row for row, _ in contenders if row["status"] != "failed"]  # the built ones, in order
        for row, times in zip(measured, seconds):
            row.update(latency_ms=summarize(times), load_1min=load_1min())
            progress(f"{name} / {row['runner']}: p50 {sig3(row['latency_ms']['p50'])} ms")
    _ratios(rows, "component", bundles, lambda r: (r["component"],))
    return rows


# --- scenarios ----------------------------------------------------------------------------------

def _needs(bundle: BenchBundle, scenario: str) -> tuple[str, ...]:
    """The components the runtime calls for `scenario` (no text encoder when the prompt cache has the prompt)."""
    from .scenarios import PROMPT
    if scenario == "tracking":
        return TRACKER_COMPONENTS
    cache = bundle.manifest["prompt_cache"]
    cached = cache is not None and PROMPT in cache["concepts"]
    return tuple(n for n in DETECTOR_COMPONENTS if not (cached and n == "text_encoder"))


def unfit(bundle: BenchBundle, scenario: str) -> str | None:
    """Why the runtime cannot run `scenario` from this bundle, or None."""
    comps = bundle.manifest["components"]
    missing = [n for n in _needs(bundle, scenario) if n not in comps]
    if missing:
        return f"the bundle lacks {', '.join(missing)} (a build with --components?)"
    other = [f"{n} is {comps[n]['format']}" for n in _needs(bundle, scenario)
             if comps[n]["format"] not in ORT_FORMATS]
    if other:
        return (f"the runtime runs ONNX Runtime artifacts ({', '.join(ORT_FORMATS)}); "
                f"{', '.join(other[:3])}{' ...' if len(other) > 3 else ''}")
    return None


def _runtime_case(bundle: BenchBundle, scenario: str, inputs: Path, threads: int) -> Callable[[], dict]:
    """One scenario run from the bundle with the torch-free runtime, as `toolkit run` does it."""
    import toolkit.runtime as rt
    from toolkit.runtime.cli import Clicks, Folder, load_rgb

    from .scenarios import BOX_XYXY, CLICK_XY, PROMPT

    opened = rt.open_bundle(bundle.root, checksums=False)  # checked by open_bundles
    if scenario == "tracking":
        tracker, frames = rt.Tracker(opened, threads), Folder(inputs / "frames")

        def track() -> dict:
            results = list(tracker.prompt(frames, 0, Clicks((CLICK_XY,), (1,))).propagate())
            return {"frames": len(results), "frames_object_present": sum(bool(r.object_score_logits[0] > 0)
                                                                         for r in results)}
        return track
    segmenter, rgb = rt.Segmenter(opened, threads), load_rgb(inputs / "image.png")
    boxes = [BOX_XYXY] if scenario == "image_text_boxes" else []

    def segment() -> dict:
        found = segmenter(rgb, PROMPT, boxes)
        return {"objects": len(found.scores),
                "best_score": round(float(found.scores.max()), 4) if len(found.scores) else None}
    return segment


def _row(scenario: str, runner: str, **extra) -> dict:
    from .scenarios import SCENARIOS
    return {"scenario": scenario, "runner": runner, "status": "ok", "reason": None,
            "description": SCENARIOS[scenario], **extra}


def scenario_rows(config, bundles: list[BenchBundle], sources, progress: Progress) -> list[dict]:
    """Each scenario from each bundle (runtime), beside the eager and reference-kind pipelines, interleaved."""
    from . import scenarios as scen

    inputs = Path(config.inputs) if config.inputs else None
    rows, cases = [], {}  # cases: (scenario, runner) -> callable
    for scenario in config.scenarios:
        for bundle in bundles:
            row = _row(scenario, bundle.runner, bundle=bundle.label)
            rows.append(row)
            reason = unfit(bundle, scenario) or (None if inputs else "no scenario inputs were prepared")
            if reason is None:
                try:
                    cases[scenario, bundle.runner] = _runtime_case(bundle, scenario, inputs, sources.threads)
                except Exception as e:  # noqa: BLE001 - e.g. a tokenizer the runtime refuses
                    row.update(status="failed", reason=_error(e))
                    continue
            else:
                row.update(status="skipped", reason=reason)
    runnable = [s for s in config.scenarios if any((s, b.runner) in cases for b in bundles)]
    for kind in [scen.EAGER] + [k for k in config.runners if k != "torch"]:  # eager is the PyTorch run
        pipelines, skipped = {}, {}
        if runnable:
            try:
                pipelines, skipped = scen._pipelines(kind, with_changes(config, scenarios=runnable), sources)
            except Exception as e:  # noqa: BLE001 - e.g. an artifact that fails to load
                skipped = {s: f"building the pipeline: {_error(e)}" for s in runnable}
        for scenario in config.scenarios:
            row = _row(scenario, kind)
            rows.append(row)
            if scenario in pipelines:
                cases[scenario, kind] = pipelines[scenario]
            else:
                row.update(status="skipped", reason=skipped.get(scenario) or "no bundle runs this scenario here")
    for row in rows:
        if row["status"] != "ok":
            progress(f"scenario {row['scenario']} / {row['runner']}: {row['status']} ({row['reason']})")
    for scenario in runnable:
        mine = [r for r in rows if r["scenario"] == scenario and (scenario, r["runner"]) in cases]
        progress(f"scenario {scenario}: {', '.join(r['runner'] for r in mine)} interleaved, "
                 f"{config.scenario_warmup} warm-up + {config.scenario_repeats} timed runs each")
        seconds = {r["runner"]: [] for r in mine}
        for i in range(config.scenario_warmup + config.scenario_repeats):
            for row in mine:
                if row["status"] != "ok":
                    continue
                try:
                    start = time.perf_counter()
                    row["detail"] = cases[scenario, row["runner"]]()
                    elapsed = time.perf_counter() - start
                except Exception as e:  # noqa: BLE001 - one failing pipeline must not stop the others
                    row.update(status="failed", reason=_error(e))
                    progress(f"scenario {scenario} / {row['runner']}: FAILED ({row['reason']})")
                    continue
                if i >= config.scenario_warmup:
                    seconds[row["runner"]].append(elapsed)
                    progress(f"scenario {scenario} / {row['runner']}: run {i - config.scenario_warmup + 1}/"
                             f"{config.scenario_repeats} {elapsed:.2f} s")
        for row in mine:
            if row["status"] == "ok":
                row.update(latency_ms=summarize(seconds[row["runner"]]), load_1min=load_1min())
                if scenario == "tracking":
                    row["detail"]["per_frame_ms"] = round(row["latency_ms"]["p50"] / config.tracking_frames, 1)
    by_runner = {b.runner: b for b in bundles}
    _ratios(rows, "scenario", bundles,
            lambda r: _needs(by_runner[r["runner"]], r["scenario"]) if r["runner"] in by_runner else ())
    return rows


# --- whole-run peak memory ----------------------------------------------------------------------

def whole_runs(config, bundles: list[BenchBundle], rows: list[dict], progress: Progress) -> dict:
    """Peak RSS of each scenario run from each bundle (runtime) and on the eager pipeline, fresh processes;
    written into the scenario rows (`whole_run`). Returns what was measured and how."""
    from .wholerun import METHOD, scenario_spec, whole_run

    if not config.memory:
        return {"measured": False, "reason": "--quick" if config.quick else "not asked for"}
    wanted = [r for r in rows if r["runner"].startswith(PREFIX) and r["status"] == "ok"]
    if not wanted:
        return {"measured": False, "reason": "no bundle runs a scenario here"}
    threads = config.threads
    progress("whole-run memory: the runtime's import footprint (fresh process)")
    try:
        footprint = whole_run({"kind": "import"}, threads)["peak_rss_mib"]
    except Exception as e:  # noqa: BLE001
        footprint = None
        progress(f"whole-run memory: import footprint FAILED ({_error(e)})")
    by_label = {b.label: b for b in bundles}
    eager = {(r["scenario"]): r for r in rows if r["runner"] == "eager"}
    for row in wanted + [eager[s] for s in dict.fromkeys(r["scenario"] for r in wanted) if s in eager]:
        kind = "eager" if row["runner"] == "eager" else "runtime"
        bundle = by_label[row["bundle"]].root if kind == "runtime" else None
        spec = scenario_spec(kind, row["scenario"], config.inputs, bundle, config.checkpoint)
        progress(f"whole-run memory: {row['scenario']} / {row['runner']} (fresh process)")
        try:
            row["whole_run"] = whole_run(spec, threads)
            progress(f"whole-run memory: {row['scenario']} / {row['runner']}: peak "
                     f"{row['whole_run']['peak_rss_mib']:.0f} MiB")
        except Exception as e:  # noqa: BLE001
            row["whole_run"] = {"error": _error(e)}
            progress(f"whole-run memory: {row['scenario']} / {row['runner']}: FAILED ({row['whole_run']['error']})")
    return {"measured": True, "method": METHOD, "runtime_import_mib": footprint,
            "runtime_import": "a fresh process that imports toolkit.bench, toolkit.runtime and onnxruntime, then "
                              "exits; included in every runtime figure",
            "eager": "the toolkit segment / toolkit track pipelines in a fresh process, model construction "
                     "included", "frames": config.tracking_frames}


def check_request(paths: list[str], device: str) -> list[BenchBundle]:
    """The bundles of a `toolkit bench --bundle` request, or ToolkitError (one line)."""
    if device != "local":
        raise ToolkitError("--bundle measures on this machine only (--device local); copy the bundle to the "
                           "device and run `toolkit bench --bundle` there")
    return open_bundles(paths)
