"""Where the measurement runs: `local`, or `ssh://user@host[:port]` (a Linux device: Jetson, board, server).

The ssh device gets what the measurement needs, copied into a fresh directory (`mktemp -d`) as one
tar stream over ssh: the toolkit package (source and data, no bytecode), the artifacts of the
requested components, the checkpoint if one was given, the scenario inputs and the config. There
the device's own Python (`python3`, or `?python=PATH`) runs `python -m toolkit.bench.harness`
with the copied toolkit first on its path; progress streams back on stderr, the results JSON is
read back, and the directory is removed. The device needs numpy and torch (and onnxruntime for
the ONNX Runtime runners; what is missing there is reported as skipped).

URL options: `?python=/usr/bin/python3.10` (interpreter on the device),
`?ssh_config=PATH` (an ssh client config file: keys, known hosts, jump hosts). ssh runs with
`BatchMode=yes`: keys must work without a prompt.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..errors import ToolkitError
from ..machine import cpu

Progress = Callable[[str], None]
LIBRARIES = ("torch", "onnxruntime", "onnx", "numpy")
_PACKAGE = Path(__file__).resolve().parents[1]  # toolkit/


def _first_line(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def describe() -> dict:
    """This machine: CPU model, cores, memory, OS, Python, library versions, load average."""
    board = None
    try:
        board = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        pass
    mem_kib = _first_line("/proc/meminfo", "MemTotal")
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    providers = None
    try:
        import onnxruntime
        providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "hostname": platform.node(), "cpu_model": cpu()["model"],
        "cpu_vector_extensions": cpu()["vector_extensions"], "board": board, "machine": platform.machine(),
        "cores": os.cpu_count(), "cores_usable": affinity,
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib else None,
        "os": _first_line("/etc/os-release", "PRETTY_NAME=") or platform.platform(),
        "kernel": platform.release(), "python": platform.python_version(), "libraries": libraries,
        "onnxruntime_providers": providers, "toolkit": {"version": __version__, "path": str(_PACKAGE)},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


@dataclass
class LocalDevice:
    url: str = "local"

    def run(self, config, progress: Progress) -> dict:
        from .harness import measure
        from .scenarios import prepare_inputs
        with tempfile.TemporaryDirectory(prefix="esam3-bench-") as tmp:
            if config.scenarios and config.inputs is None:
                config.inputs = str(prepare_inputs(Path(tmp) / "inputs", config.tracking_frames))
            return measure(config, progress)


@dataclass
class SshDevice:
    url: str
    user: str | None
    host: str
    port: int | None
    python: str = "python3"
    ssh_config: str | None = None

    @classmethod
    def parse(cls, url: str) -> SshDevice:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise ToolkitError(f"device {url!r}: expected ssh://user@host[:port]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"python", "ssh_config"}
        if unknown:
            raise ToolkitError(f"device {url!r}: unknown options {sorted(unknown)} (known: python, ssh_config)")
        return cls(url, parts.username, parts.hostname, parts.port, query.get("python", "python3"),
                   query.get("ssh_config"))

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def argv(self, command: str) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.port:
            argv += ["-p", str(self.port)]
        return argv + [self.target, command]

    def ssh(self, command: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command), check=False, **kw)

    def _check(self, done: subprocess.CompletedProcess, what: str) -> str:
        if done.returncode:
            err = (done.stderr or b"").decode(errors="replace").strip() if isinstance(done.stderr, bytes) else \
                (done.stderr or "").strip()
            raise ToolkitError(f"{self.url}: {what} failed (exit {done.returncode}): {err[-500:]}")
        out = done.stdout
        return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")

    def _payload(self, config, inputs: Path | None) -> tuple[list[tuple[Path, str]], dict]:
        """(local path, name on the device) to copy, and the config as the device sees it."""
        from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
        from .backends import RUNNER_KINDS
        files: list[tuple[Path, str]] = [(_PACKAGE, "toolkit")]
        remote = config.to_json()
        if config.artifacts:
            names = set(config.components) | (set(DETECTOR_COMPONENTS + TRACKER_COMPONENTS) if config.scenarios else set())
            for name in sorted(names):
                for suffix in sorted({k.suffix for k in RUNNER_KINDS.values() if k.suffix}):
                    path = Path(config.artifacts) / f"{name}{suffix}"
                    if path.is_file():
                        files.append((path, f"artifacts/{path.name}"))
            remote["artifacts"] = "artifacts"
        if config.checkpoint:
            files.append((Path(config.checkpoint), "checkpoint" + Path(config.checkpoint).suffix))
            remote["checkpoint"] = files[-1][1]
        if inputs is not None:
            files.append((inputs, "inputs"))
            remote["inputs"] = "inputs"
        return files, remote

    def run(self, config, progress: Progress) -> dict:
        from .scenarios import prepare_inputs
        progress(f"{self.url}: connecting")
        workdir = self._check(self.ssh("mktemp -d -t esam3-bench.XXXXXX", capture_output=True), "mktemp").strip()
        if not workdir.startswith("/"):
            raise ToolkitError(f"{self.url}: mktemp returned {workdir!r}")
        try:
            with tempfile.TemporaryDirectory(prefix="esam3-bench-") as tmp:
                inputs = prepare_inputs(Path(tmp) / "inputs", config.tracking_frames) if config.scenarios else None
                files, remote_config = self._payload(config, inputs)
                config_path = Path(tmp) / "config.json"
                config_path.write_text(json.dumps(remote_config, indent=1))
                files.append((config_path, "config.json"))
                size = sum(_size(p) for p, _ in files)
                progress(f"{self.url}: copying {size / 2**20:.1f} MiB to {workdir}")
                self._copy(files, workdir)
            q = shlex.quote
            command = (f"cd {q(workdir)} && PYTHONPATH={q(workdir)} PYTHONDONTWRITEBYTECODE=1 "
                       f"{q(self.python)} -m toolkit.bench.harness config.json result.json")
            progress(f"{self.url}: running the benchmark with {self.python}")
            self._stream(command, progress)
            results = json.loads(self._check(self.ssh(f"cat {q(workdir)}/result.json", capture_output=True),
                                             "reading the results"))
        finally:
            self.ssh(f"rm -rf {shlex.quote(workdir)}", capture_output=True)
        return results

    def _stream(self, command: str, progress: Progress) -> None:
        """Run `command` on the device, passing each line it prints on to `progress`."""
        proc = subprocess.Popen(self.argv(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail: list[str] = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = (tail + [line])[-20:]
            progress(f"{self.host}: {line.removeprefix('[bench] ')}")
        if proc.wait():
            raise ToolkitError(f"{self.url}: the benchmark failed on the device (exit {proc.returncode}):\n  "
                               + "\n  ".join(tail))

    def _copy(self, files: list[tuple[Path, str]], workdir: str) -> None:
        proc = subprocess.Popen(self.argv(f"tar -xf - -C {shlex.quote(workdir)}"), stdin=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                for path, name in files:
                    tar.add(path, arcname=name, filter=_no_bytecode)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait():
            raise ToolkitError(f"{self.url}: copying to the device failed: {err.strip()[-500:]}")


def _no_bytecode(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name.split("/") or info.name.endswith(".pyc") else info


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def open_device(url: str):
    if url in ("local", "", None):
        return LocalDevice()
    if url.startswith("ssh://"):
        return SshDevice.parse(url)
    raise ToolkitError(f"unknown device {url!r}: use 'local' or ssh://user@host[:port]")
