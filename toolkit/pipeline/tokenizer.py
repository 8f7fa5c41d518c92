"""CLIP byte-level BPE tokenizer, as used by the EfficientSAM3 text encoder, for the PyTorch side.

The algorithm is the runtime's (`toolkit.runtime.tokenizer.BpeTokenizer`, torch-free: one
implementation for the reference, the build and the bundle runtime); this wraps it over the
vocabulary shipped in ``toolkit/data`` (open_clip's ``bpe_simple_vocab_16e6.txt.gz``), or another
vocabulary file, and returns torch tensors. Token ids match upstream's ``SimpleTokenizer``:
``<start_of_text> ... <end_of_text>``, zero padded (or cut, keeping the end token) to the context
length.
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from importlib.resources import files
from pathlib import Path

import torch

from ..errors import ToolkitError
from ..runtime.errors import RuntimeInputError
from ..runtime.tokenizer import CONTEXT_LENGTH, MAX_PROMPT_TOKENS, BpeTokenizer

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
__all__ = ["CONTEXT_LENGTH", "MAX_PROMPT_TOKENS", "VOCAB_FILE", "Tokenizer", "check_prompt_text", "clean_text"]


@lru_cache(maxsize=1)
def packaged_bpe() -> BpeTokenizer:
    """The packaged vocabulary, read once per process (about 50k merges)."""
    return BpeTokenizer(Path(str(files("toolkit").joinpath("data", VOCAB_FILE))))


def clean_text(text: str) -> str:
    """Upstream's "lower" cleaning: fix mojibake, unescape HTML twice, squeeze spaces, lower."""
    return packaged_bpe().clean(text)


class Tokenizer:
    """Text -> CLIP BPE token ids. Construction is free; the vocabulary loads on first use
    (`vocabulary`: another vocabulary file, e.g. a bundle's; default: the packaged one)."""

    def __init__(self, vocabulary: str | Path | None = None):
        self.vocabulary = vocabulary

    @cached_property
    def bpe(self) -> BpeTokenizer:
        if self.vocabulary is None:
            return packaged_bpe()
        try:
            return BpeTokenizer(Path(self.vocabulary))
        except RuntimeInputError as e:
            raise ToolkitError(str(e)) from e

    @property
    def start_id(self) -> int:
        return self.bpe.start_id

    @property
    def end_id(self) -> int:
        return self.bpe.end_id

    def encode(self, text: str) -> list[int]:
        """Token ids of the cleaned text, without start/end tokens."""
        return self.bpe.encode(text)

    def __call__(self, texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """(B, context_length) int64 ids: start, text, end, then zeros.

        Too-long texts are cut to ``context_length`` with the end token in the last slot.
        """
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                ids = [*ids[: context_length - 1], self.end_id]
            result[row, : len(ids)] = torch.tensor(ids)
        return result


def check_prompt_text(text: str) -> None:
    """Refuse a prompt the text encoder would not see as written: nothing visible left after the
    cleaning (only whitespace, control or format characters: as empty as ""), or more tokens than
    fit (the tokenizer would cut it silently)."""
    try:
        packaged_bpe().check(text)
    except RuntimeInputError as e:
        raise ToolkitError(str(e)) from e
