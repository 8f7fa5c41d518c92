"""`toolkit bench` harness on a tiny configuration: statistics, FLOP counting, the memory method,
skip reasons, the results schema, and the ssh device against a real OpenSSH server on loopback.
Nothing here checks the speed of anything."""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from toolkit.bench import BenchConfig, report, run_bench
from toolkit.bench.backends import RUNNER_KINDS, Sources
from toolkit.bench.flops import count_onnx, count_torch
from toolkit.bench.harness import QUICK, summarize, timed_runs
from toolkit.bench.memory import peak_rss_kib
from toolkit.bench.scenarios import _pipelines, prepare_inputs
from toolkit.checkpoint.weights import synthetic_state_dict
from toolkit.cli import main
from toolkit.components.registry import COMPONENTS, build_graph, load_models
from toolkit.deploy.export import FORMATS
from toolkit.pipeline.preprocess import load_rgb
from toolkit.verify.golden import golden_path

TINY = "object_pointer"  # the smallest component: a bench of it takes seconds
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSHD_INSTALL = "apt-get update && apt-get install -y openssh-server"


# --- statistics and the timing loop ------------------------------------------------------------

def test_percentiles_of_known_samples():
    stats = summarize([i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert stats["n"] == 10
    assert stats["p50"] == pytest.approx(5.5) and stats["mean"] == pytest.approx(5.5)
    assert stats["p90"] == pytest.approx(9.1) and stats["p99"] == pytest.approx(9.91)  # linear interpolation
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 11), ddof=1), abs=1e-3)
    assert (stats["min"], stats["max"]) == (1.0, 10.0)
    one = summarize([0.002])
    assert one["p50"] == one["p99"] == 2.0 and one["std"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_timed_runs_warm_up_untimed_and_own_timings():
    calls = []
    seconds = timed_runs(lambda: calls.append(1) or 0.25, warmup=2, repeats=3)
    assert len(calls) == 5 and seconds == [0.25, 0.25, 0.25]
    seen = []
    timed_runs(lambda: None, 0, 2, on_run=lambda i, s: seen.append((i, s >= 0)))
    assert seen == [(0, True), (1, True)]


def test_quick_config_and_json_round_trip():
    quick = BenchConfig([TINY], ["torch"], [], quick=True)
    assert all(getattr(quick, k) == v for k, v in QUICK.items())
    full = BenchConfig([TINY], ["torch", "onnx"], ["tracking"], threads=1, repeats=7)
    for config in (quick, full):
        assert BenchConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


# --- FLOPs -------------------------------------------------------------------------------------

def _tiny_onnx(path: Path) -> None:
    """x (N,8) -> Gemm(8->16) -> MatMul(16->4); image (1,3,10,10) -> Conv(3->5, 3x3, pad 1)."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, s, rng.standard_normal(s).astype(np.float32).ravel())
             for n, s in (("w1", (16, 8)), ("b1", (16,)), ("w2", (16, 4)), ("wc", (5, 3, 3, 3)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("MatMul", ["h", "w2"], ["y"]),
             helper.make_node("Conv", ["image", "wc"], ["z"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
                        helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5, 10, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_flops_from_the_onnx_graph_at_the_feed_shapes(tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    feeds = {"x": np.zeros((6, 8), np.float32), "image": np.zeros((1, 3, 10, 10), np.float32)}
    counted = count_onnx(tmp_path / "tiny.onnx", feeds)
    gemm, matmul, conv = 2 * 6 * 16 * 8, 2 * 6 * 4 * 16, 2 * (5 * 10 * 10) * (3 * 3 * 3)
    assert counted["flops"] == gemm + matmul + conv
    assert counted["by_op"] == {"Conv": conv, "MatMul": matmul, "Gemm": gemm}
    assert counted["source"] == "onnx-graph" and counted["uncounted"] == {}


def test_torch_counter_sees_attention():
    """The eager fallback counts the attention products too (MHA fast path and CPU flash kernel)."""
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    module = type("Self", (torch.nn.Module,), {"forward": lambda self, x: attention(x, x, x)[0]})()
    module.attention = attention
    tokens = 100
    counted = count_torch(module, {"x": np.zeros((1, tokens, 64), np.float32)}, ["x"])
    projections = 2 * tokens * 64 * 64 * 4  # q, k, v, out
    products = 2 * 2 * tokens * tokens * 64  # Q K^T and A V
    assert counted["flops"] == projections + products


# --- memory ------------------------------------------------------------------------------------

def test_peak_rss_of_a_child_is_its_own():
    """A child that allocates 256 MiB reports about that much over a bare child, and neither inherits
    this (large) process's peak."""
    bare = peak_rss_kib([sys.executable, "-c", "import numpy"]) / 1024
    code = "import numpy as np; a = np.ones(256 * 2**20 // 8); a += 1"
    big = peak_rss_kib([sys.executable, "-c", code]) / 1024
    assert 230 < big - bare < 300
    with pytest.raises(RuntimeError, match="status"):
        peak_rss_kib([sys.executable, "-c", "raise SystemExit(3)"])


# --- skip reasons ------------------------------------------------------------------------------

def test_skip_reasons_name_what_is_missing(tmp_path):
    comp = COMPONENTS[TINY]
    (tmp_path / f"{TINY}.failed.onnx").write_bytes(b"")
    (tmp_path / f"{TINY}.ptl").write_bytes(b"")
    none = Sources(None, None, 1)
    here = Sources(None, str(tmp_path), 1)
    assert "--artifacts" in RUNNER_KINDS["onnx"].unavailable(comp, none)
    assert "failed verification" in RUNNER_KINDS["onnx"].unavailable(comp, here)
    assert RUNNER_KINDS["ort"].unavailable(comp, here) == f"no {TINY}.ort in {tmp_path}"
    assert RUNNER_KINDS["ptl"].unavailable(comp, here) is None
    assert RUNNER_KINDS["torch"].unavailable(comp, none) is None
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider not available" in RUNNER_KINDS["onnx-cuda"].unavailable(comp, here)


def test_scenarios_on_runners_without_artifacts_are_skipped_with_reasons(tmp_path):
    (tmp_path / "image.png").write_bytes(b"")
    (tmp_path / "vision_encoder.onnx").write_bytes(b"")
    config = BenchConfig([], ["onnx"], ["image_text", "tracking"], inputs=str(tmp_path))
    cases, skipped = _pipelines("onnx", config, Sources(None, str(tmp_path), 1))
    assert cases == {}
    assert skipped["image_text"].startswith("no text_encoder.onnx in ") and "(+3 more)" in skipped["image_text"]
    assert "no tracker_neck.onnx" in skipped["tracking"] and "vision_encoder" not in skipped["tracking"]


def test_cli_rejects_unknown_names(tmp_path, capsys):
    assert main(["bench", "--runners", "torch,bogus", "--out", str(tmp_path / "b")]) == 2
    assert "unknown runners ['bogus']" in capsys.readouterr().err


# --- scenarios ---------------------------------------------------------------------------------

def test_scenario_clip_follows_the_golden_clip(tmp_path):
    inputs = prepare_inputs(tmp_path / "inputs", frames=4)
    frames = sorted((inputs / "frames").iterdir())
    assert [p.name for p in frames] == [f"{t:05d}.png" for t in range(4)] and (inputs / "image.png").is_file()
    for t in range(3):
        assert np.array_equal(load_rgb(frames[t]), load_rgb(golden_path("inputs", "tracker_frames", f"{t}.png")))


@pytest.fixture(scope="module")
def models():
    return load_models(synthetic_state_dict())


# --- a tiny real bench, locally and over ssh -----------------------------------------------------

@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, models):
    """object_pointer exported to ONNX, .ort and .ptl."""
    out = tmp_path_factory.mktemp("artifacts")
    comp = COMPONENTS[TINY]
    graph = build_graph(models, comp)
    args = tuple(torch.from_numpy(x) for x in comp.example().values())
    for fmt in ("onnx", "ort", "ptl"):  # the export job's own stages, without its verification run
        FORMATS[fmt].exporter.make(comp, graph, args, out / f"{TINY}{FORMATS[fmt].suffix}")
    return out


def _statuses(doc: dict) -> dict[str, str]:
    return {r["runner"]: r["status"] for r in doc["components"]}


def test_tiny_bench_local_report_and_schema(artifacts, tmp_path):
    config = BenchConfig([TINY], list(RUNNER_KINDS), [], threads=1, repeats=3, warmup=1, artifacts=str(artifacts))
    messages = []
    doc = run_bench(config, "local", messages.append)
    assert _statuses(doc) == {"torch": "ok", "onnx": "ok", "ort": "ok", "ptl": "ok",
                              "onnx-cuda": _statuses(doc)["onnx-cuda"]}
    if _statuses(doc)["onnx-cuda"] == "skipped":
        assert any("onnx-cuda: skipped" in m for m in messages)  # progress says it too
    rows = {r["runner"]: r for r in doc["components"]}
    assert rows["torch"]["ratio_to_eager"] == 1.0 and rows["onnx"]["latency_ms"]["n"] == 3
    assert doc["flops"][TINY]["source"] == "onnx-graph" and doc["flops"][TINY]["gflop"] > 0
    assert doc["memory"]["baseline_mib"] > 50
    for runner in ("torch", "onnx", "ort", "ptl"):  # the component's own memory: far below the whole model's
        assert 0 < rows[runner]["memory"]["peak_rss_mib"] - doc["memory"]["baseline_mib"] < 300
    assert doc["threads"] == 1 and doc["peak"]["threads"] == 1 and doc["peak"]["peak_gflops"] > 0
    assert doc["device"]["url"] == "local" and doc["device"]["cores"] >= 1

    files = report.write(doc, tmp_path)
    assert {f.name for f in files} == {"results.json", "results.md", "latency.png", "memory.png"}
    assert report.load(tmp_path / "results.json") == json.loads(json.dumps(doc))
    md = (tmp_path / "results.md").read_text()
    assert f"| {TINY} | onnx |" in md and f"| {TINY} | ort |" in md

    for broken, match in ((dict(doc, schema="toolkit.bench/0"), "schema"),
                          (dict(doc, components=[dict(rows["ort"], status="skipped", reason=None)]),
                           "without a reason"),
                          (dict(doc, components=[dict(rows["ort"], latency_ms={"p50": 1.0})]), "lacks")):
        with pytest.raises(ValueError, match=match):
            report.validate(copy.deepcopy(broken))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with its own host key and one authorised client key.
    CI (.ci/run sets TOOLKIT_CI) installs sshd and runs as root: there a missing sshd fails."""
    absent = pytest.fail if os.environ.get("TOOLKIT_CI") else pytest.skip
    if SSHD is None:
        absent(f"sshd is not installed (install: {SSHD_INSTALL})")
    if os.geteuid() != 0:
        absent("starting sshd on loopback needs root (its privilege separation directory)")
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copyfile(d / "client.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PubkeyAuthentication yes\nLogLevel ERROR\n")
    (d / "client_config").write_text(
        f"Host *\n  IdentityFile {d / 'client'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {d / 'known_hosts'}\n"
        "  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("sshd did not listen within 15 s")
                time.sleep(0.1)
        yield f"ssh://root@127.0.0.1:{port}?python={sys.executable}&ssh_config={d / 'client_config'}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ssh_device_on_loopback(sshd, artifacts):
    config = BenchConfig([TINY], ["onnx", "ort", "ptl"], [], threads=1, repeats=2, warmup=1,
                         memory=False, artifacts=str(artifacts))
    messages = []
    doc = run_bench(config, sshd, messages.append)
    assert _statuses(doc) == {"onnx": "ok", "ort": "ok", "ptl": "ok"}
    assert doc["device"]["url"] == sshd
    # The device ran the copied toolkit from its scratch directory, which is gone afterwards.
    remote_pkg = Path(doc["device"]["toolkit"]["path"])
    assert remote_pkg.name == "toolkit" and remote_pkg.parent.name.startswith("esam3-bench.")
    assert not remote_pkg.parent.exists()
    assert any("copying" in m for m in messages) and any("127.0.0.1: " in m for m in messages)
    assert doc["config"]["artifacts"] == "artifacts"  # as the device saw it


def test_ssh_device_errors_are_one_line():
    from toolkit.bench.devices import open_device
    from toolkit.errors import ToolkitError
    with pytest.raises(ToolkitError, match="ssh://user@host"):
        open_device("ssh://")
    with pytest.raises(ToolkitError, match="unknown options"):
        open_device("ssh://root@host?pyhton=x")
    with pytest.raises(ToolkitError, match="unknown device"):
        open_device("adb://phone")
