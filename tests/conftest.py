import pytest
import torch

from toolkit import layout


def layout_state_dict() -> dict[str, torch.Tensor]:
    """Every live key with the right shape and dtype, backed by one element (tiny on disk)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {e.key: torch.zeros((), dtype=dtypes[e.dtype]).expand(e.shape) for e in layout.live_entries()}


@pytest.fixture
def light_sd():
    return layout_state_dict()


@pytest.fixture(scope="session")
def default_checkpoint(tmp_path_factory):
    """The embedded default checkpoint, written once per test session (live keys only)."""
    from toolkit.weights import write_default_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "default.pth"
    write_default_checkpoint(path)
    return path
