import pytest
import torch

from toolkit.checkpoint import layout

# Memory attention against upstream, tighter than the fixture's 1e-3 * max|ref| so that a wrong memory
# bank fails. Measured on the golden clip (AMD EPYC with AVX-512, 2026-12-02), as a share of max|ref| on
# frames 1 / 2: the right bank 1.5e-5 / 7.7e-6 (the fixture's own 1- vs 2-thread noise: 5.5e-6 / 1.1e-5,
# so the earlier 1e-5 sat at the noise floor); pointers one frame too far 1.2e-4 / 7.6e-5; one pointer
# too many 2.1e-3 / 7.9e-4; a wrong temporal slot 1.4e-2 / 3.7e-2; float32 instead of bfloat16 memories
# 7e-4. The bound sits between the noise and the nearest wrong bank, about 2x from each. A wrong pointer
# distance scale moves it by 3e-5 / 6e-5 only, inside the noise: `test_golden_clip_plans` checks the
# plan itself, exactly.
BANK_EXACT_RTOL = 4e-5


def with_make(backend, make):
    """`backend` with its exporter's `make` replaced (to corrupt, fail or slow an export in a test)."""
    from dataclasses import replace
    return replace(backend, exporter=replace(backend.exporter, make=make))


def layout_state_dict() -> dict[str, torch.Tensor]:
    """Every live key with the right shape and dtype, backed by one element (tiny on disk)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {e.key: torch.zeros((), dtype=dtypes[e.dtype]).expand(e.shape) for e in layout.live_entries()}


@pytest.fixture
def light_sd():
    return layout_state_dict()


def with_prompt_cache(bundle, out, concepts, token_ids, text_features, text_mask, computed_with: str):
    """A copy of `bundle` at `out` (hard links: no copy of the weights) with a prompt cache of `concepts`
    (one row of each array per concept), listed in its manifest as `--concepts` lists it. Returns `out`."""
    import hashlib
    import json
    import os
    import shutil

    import numpy as np
    shutil.copytree(bundle, out, copy_function=os.link)
    np.savez(out / "prompt_cache.npz", token_ids=token_ids, text_features=text_features, text_mask=text_mask)
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "prompt_cache.npz").read_bytes()
    manifest["prompt_cache"] = {"file": "prompt_cache.npz", "concepts": list(concepts), "arrays": {},
                                "computed_with": computed_with}
    manifest["files"].append({"path": "prompt_cache.npz", "sha256": hashlib.sha256(data).hexdigest(),
                              "bytes": len(data)})
    (out / "manifest.json").unlink()  # a hard link to the original's
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def masks_agree(got, ref, ref_value, threshold: float, eps: float) -> int:
    """Thresholded masks agree wherever the reference value is farther than `eps` from the threshold,
    and at most 0.1 % of the pixels differ (the golden tolerance for bool masks); returns how many
    differ (all within `eps` of the threshold: float rounding, counted apart)."""
    import numpy as np
    near = np.abs(ref_value - threshold) <= eps
    differ = got != ref
    assert not differ[~near].any(), f"{int(differ[~near].sum())} well-conditioned pixels differ"
    assert differ.sum() <= 1e-3 * ref.size, f"{int(differ.sum())} pixels differ (near the threshold)"
    return int(differ.sum())


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory):
    """The full-size cpu bundle (embedded default weights), built once per session; the export cache
    is the toolkit's default one, so a machine that has built a bundle reuses its verified exports."""
    from toolkit.checkpoint.weights import LABEL, synthetic_state_dict
    from toolkit.deploy.build import run_build
    from toolkit.deploy.targets import find_target
    out = tmp_path_factory.mktemp("runtime") / "bundle-cpu"
    # at full precision: the runtimes are compared with PyTorch within the golden tolerances. Verified on
    # the golden case where the fixture is here, as `toolkit export` does: the same cache keys, so the
    # full-size exports of tests/test_export.py come from this build's cache (a 4-minute export, once)
    run_build(find_target("cpu").with_precision("fp32"), out, synthetic_state_dict(), LABEL, True)
    return out


@pytest.fixture(scope="session")
def default_checkpoint(tmp_path_factory):
    """The embedded default checkpoint, written once per test session (live keys only)."""
    from toolkit.checkpoint.weights import write_default_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "default.pth"
    write_default_checkpoint(path)
    return path


# --- small bundles, built once per session (object_pointer + prompt_encoder: seconds, not minutes) ------------

SMALL_COMPONENTS = ["object_pointer", "prompt_encoder"]


@pytest.fixture(scope="session")
def synthetic_state():
    from toolkit.checkpoint.weights import synthetic_state_dict
    return synthetic_state_dict()


@pytest.fixture(scope="session")
def small_builds(tmp_path_factory):
    """The folder of the session's small bundles and of their export cache (`cache/`)."""
    return tmp_path_factory.mktemp("small-builds")


@pytest.fixture(scope="session")
def small_cpu_bundle(synthetic_state, small_builds):
    """The shipped cpu target (fp32 .onnx) with the small components only."""
    from toolkit.checkpoint.weights import LABEL
    from toolkit.deploy.build import run_build
    from toolkit.deploy.targets import find_target
    run_build(find_target("cpu").with_precision("fp32"), small_builds / "cpu", synthetic_state, LABEL, True,
              components=SMALL_COMPONENTS, cache_dir=small_builds / "cache", golden=False)
    return small_builds / "cpu"


@pytest.fixture(scope="session")
def small_int8_bundle(synthetic_state, small_builds):
    """(bundle, build messages): the small components as int8 .ort, calibrated on 2 samples through the
    tracker pipeline and gated (about a minute)."""
    from toolkit.checkpoint.weights import LABEL
    from toolkit.deploy.build import run_build
    from toolkit.deploy.targets import load_target
    target = small_builds / "q.toml"
    target.write_text('schema = 1\nname = "q"\ndescription = "test"\n[defaults]\nformat = "ort"\nprecision = "int8"\n'
                      'fallback = "ptl"\n[quantization]\nsamples = 2\n')
    messages = []
    run_build(load_target(target), small_builds / "int8", synthetic_state, LABEL, True, components=SMALL_COMPONENTS,
              cache_dir=small_builds / "cache", golden=False, progress=messages.append)
    return small_builds / "int8", messages
