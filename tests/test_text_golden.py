"""Tokenizer and MobileCLIP-S1 text encoder against the upstream golden outputs."""

import pytest
import torch

from toolkit.checkpoint.weights import synthetic_state_dict
from toolkit.model.text import TextEncoder
from toolkit.pipeline.tokenizer import Tokenizer
from toolkit.verify.golden import check_stage, stage_tensor

PREFIX = "detector.backbone.language_backbone."
CASES = {"txt_person": "person", "txt_red_cup": "a red cup"}
START, END = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict(PREFIX)


@pytest.fixture(scope="module")
def encoder(state_dict):
    model = TextEncoder().eval()
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.mark.parametrize("case", CASES)
def test_tokenizer_matches_golden(tokenizer, case):
    ids = tokenizer(CASES[case])
    assert ids.dtype == torch.int64 and ids.shape == (1, 77)
    assert torch.equal(ids, torch.from_numpy(stage_tensor(f"{case}__04_tokenizer", "ids")))


def test_tokenizer_empty_and_batch(tokenizer):
    ids = tokenizer(["", "person"], context_length=16)
    assert ids.shape == (2, 16)
    assert ids[0].tolist() == [START, END] + [0] * 14
    assert ids[1, :3].tolist() == [START, 2533, END]


def test_tokenizer_truncation_keeps_end_token(tokenizer):
    ids = tokenizer("word " * 100)
    assert ids.shape == (1, 77) and (ids != 0).all()
    assert ids[0, 0] == START and ids[0, -1] == END and ids[0, -2] == 2653


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cafÃ©", [15304]),  # ftfy repairs the mojibake to "café"
        ("&amp;lt;b&amp;gt;", [283, 321, 285]),  # HTML unescaped twice -> "<b>"
        ("  A   Red\tCUP's ", [320, 736, 1937, 568]),  # whitespace squeezed, lower-cased
        ("日本 3.5", [39121, 19277, 361, 274, 269, 276]),  # CJK bytes; digits split one by one
        ("Hello,   World!!", [3306, 267, 1002, 748]),
    ],
)
def test_tokenizer_cleaning(tokenizer, text, expected):
    # Expected ids come from upstream's SimpleTokenizer.
    assert tokenizer.encode(text) == expected


@pytest.mark.full
def test_strict_load(encoder, state_dict):
    result = encoder.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in encoder.parameters()) == sum(t.numel() for t in state_dict.values())


@pytest.mark.full
@pytest.mark.parametrize("case", CASES)
def test_text_encoder_matches_golden(tokenizer, encoder, case):
    ids = tokenizer(CASES[case])
    with torch.no_grad():
        features = encoder.encoder(ids)
        projected = encoder.projector(features)
        pad_mask, memory, embeds = encoder(ids)
    check_stage(f"{case}__05a_text_transformer", {"out": features})
    check_stage(f"{case}__05b_text_projector", {"out": projected})
    check_stage(f"{case}__05c_text_encoder", {"out.0": pad_mask, "out.1": memory, "out.2": embeds})
    check_stage(
        f"{case}__05d_forward_text",
        {"out.language_mask": pad_mask, "out.language_features": memory,
         "out.language_embeds": embeds},
    )


@pytest.mark.full
def test_short_context(tokenizer, encoder):
    ids = tokenizer(["person", "a red cup"], context_length=16)
    with torch.no_grad():
        pad_mask, memory, embeds = encoder(ids)
        full_embeds = encoder(tokenizer(["person", "a red cup"]))[2]
    assert pad_mask.shape == (2, 16) and memory.shape == (16, 2, 256) and embeds.shape == (16, 2, 512)
    # A cut context uses the first rows of the 77-entry position table.
    torch.testing.assert_close(embeds, full_embeds[:16], rtol=0, atol=0)
