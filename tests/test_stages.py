"""The pipelines' stage protocols (toolkit/pipeline/stages.py): the PyTorch model and its stand-ins over
component runners provide every protocol method with the protocol's parameters (names, kinds and
defaults, in order) and every protocol module. Under a second."""
from __future__ import annotations

import inspect

import pytest
from torch import nn

from toolkit.model.detector import Detector
from toolkit.model.tracker import TrackerModules
from toolkit.pipeline.artifacts import RunnerDetector, RunnerTrackerModules
from toolkit.pipeline.stages import DetectorStages, TrackerStages


def _methods(protocol) -> dict:
    return {name: f for name, f in vars(protocol).items() if inspect.isfunction(f) and not name.startswith("_")}


def _fits(wanted, given) -> bool:
    """`given` accepts every call `wanted` describes: the same parameters in order (the protocol's
    `*args` may be fixed positional parameters), further ones only with defaults."""
    want = list(inspect.signature(wanted).parameters.values())[1:]  # without self
    have = list(inspect.signature(given).parameters.values())[1:]
    for i, p in enumerate(want):
        if p.kind is p.VAR_POSITIONAL:
            return all(h.kind is h.VAR_POSITIONAL or (h.kind is h.POSITIONAL_OR_KEYWORD and h.default is h.empty)
                       for h in have[i:])
        if i >= len(have) or (have[i].name, have[i].kind, have[i].default) != (p.name, p.kind, p.default):
            return False
    return all(h.default is not h.empty for h in have[len(want):])


def test_the_signature_check_rejects_a_different_call():
    class Stages:
        def encode_text(self, ids, record=None): ...  # renamed parameter
        def forward_grounding(self, features, text, boxes=None, box_labels=None): ...  # record missing
        def eval(self, mode=True): ...  # an extra parameter with a default is fine
    assert not _fits(DetectorStages.encode_text, Stages.encode_text)
    assert not _fits(DetectorStages.forward_grounding, Stages.forward_grounding)
    assert _fits(DetectorStages.eval, Stages.eval)
    assert not _fits(TrackerStages.condition_on_memory, Stages.encode_text)  # a default where *args takes any


@pytest.mark.parametrize("protocol, implementation", [
    (DetectorStages, Detector), (DetectorStages, RunnerDetector),
    (TrackerStages, TrackerModules), (TrackerStages, RunnerTrackerModules),
], ids=lambda x: x.__name__)
def test_implementations_have_the_protocol_methods(protocol, implementation):
    methods = _methods(protocol)
    assert methods, protocol
    for name, wanted in methods.items():
        given = getattr(implementation, name, None)
        assert callable(given), f"{implementation.__name__} has no {name}"
        assert _fits(wanted, given), (f"{implementation.__name__}.{name}{inspect.signature(given)} does not take "
                                      f"the protocol's call {inspect.signature(wanted)}")


@pytest.mark.parametrize("make", [TrackerModules, lambda: RunnerTrackerModules(dict.fromkeys(
    ("prompt_encoder", "mask_decoder", "memory_attention")))], ids=["TrackerModules", "RunnerTrackerModules"])
def test_tracker_stages_have_the_recorded_modules(make):
    stages = make()
    modules = [name for name in TrackerStages.__annotations__]
    assert {"sam_prompt_encoder", "sam_mask_decoder", "transformer"} <= set(modules)
    for name in modules:
        assert isinstance(getattr(stages, name), nn.Module), name
    assert isinstance(stages.transformer["encoder"], nn.Module)
