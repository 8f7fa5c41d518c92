"""PyTorch reference runner: calls a module with the inputs as positional tensors."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, module: nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__(input_names, output_names)
        self.module = module.eval()

    @torch.inference_mode()
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.module(*(torch.from_numpy(feeds[n]) for n in self.input_names))
        return [t.detach().numpy() for t in outputs]
