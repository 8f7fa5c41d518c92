"""ONNX -> ONNX Runtime Mobile stage: `.ort` files and `required_operators.config`.

Uses ONNX Runtime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, the API of
`python -m onnxruntime.tools.convert_onnx_models_to_ort`). With the `Fixed` optimization style
the graph optimizations are applied once here and saved in the file; `target_platform="arm"`
leaves out the x86-only layout transformer, so the files run on any arm64 device. The config
lists every operator of the converted models: it is the input of ONNX Runtime's reduced-operator
build script (`--include_ops_by_config`), which shrinks the library an app ships.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

CONFIG_NAME = "required_operators.config"
logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # set to DEBUG on import; logs every config


@dataclass
class OrtConversion:
    files: dict[str, Path]  # model stem -> .ort path
    config: Path
    seconds: float
    log: str


def convert_to_ort(models: dict[str, Path], out_dir: Path, target_platform: str = "arm",
                   optimization_style: str = "Fixed") -> OrtConversion:
    """Convert `{name: model.onnx}` into `out_dir/<name>.ort` plus one `required_operators.config`
    covering all of them."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ort-convert-", dir=out_dir) as tmp:
        src, dst = Path(tmp, "onnx"), Path(tmp, "ort")
        src.mkdir()
        for name, path in models.items():  # hard links: the converter wants one directory of models
            if path.stat().st_dev == src.stat().st_dev:
                os.link(path, src / f"{name}.onnx")
            else:
                shutil.copyfile(path, src / f"{name}.onnx")
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle[optimization_style]],
                                       target_platform=target_platform)
        produced = {p.name.split(".")[0]: p for p in dst.glob("*.ort")}
        missing = sorted(set(models) - set(produced))
        if missing:
            raise RuntimeError(f"ONNX Runtime wrote no .ort file for {missing}: {log.getvalue().strip()[-500:]}")
        configs = list(dst.glob("*.config"))
        if len(configs) != 1:
            raise RuntimeError(f"expected one operator config from the converter, found {[c.name for c in configs]}")
        files = {}
        for name in models:
            files[name] = out_dir / f"{name}.ort"
            os.replace(produced[name], files[name])
        config = out_dir / CONFIG_NAME
        # The header lists the models by their temporary paths: name the shipped files instead.
        lines = [f"# - {files[line.rsplit('/', 1)[-1].split('.')[0]].name}" if line.startswith("# - ") else line
                 for line in configs[0].read_text().splitlines()]
        config.write_text("\n".join(lines) + "\n")
    return OrtConversion(files, config, time.perf_counter() - start, log.getvalue())
