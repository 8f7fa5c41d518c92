"""CLIP byte-level BPE over a vocabulary file (torch-free): the toolkit's one implementation
(`toolkit.pipeline.tokenizer` wraps it for PyTorch). Upstream's SimpleTokenizer with "lower" cleaning:
ftfy, HTML unescaped twice, whitespace collapsed, lower-case; ids = start, BPE ids, end, zero
padding to 77. Token ids must match the text encoder's training, so the rules are not simplified.
"""
from __future__ import annotations

import gzip
import html
import itertools
import unicodedata
import zlib
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError

CONTEXT_LENGTH = 77
MAX_PROMPT_TOKENS = CONTEXT_LENGTH - 2
START_TOKEN, END_TOKEN, END_OF_WORD = "<start_of_text>", "<end_of_text>", "</w>"
NUM_MERGES = 49152 - 256 - 2  # merges that bring the vocabulary to 49,152 before the two special tokens


def _byte_alphabet() -> list[str]:
    """One printable character per byte value (GPT-2 / CLIP): printable Latin-1 stands for itself,
    the other bytes move to code points 256 and up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    out, shifted = [], 256
    for byte in range(256):
        if byte in printable:
            out.append(chr(byte))
        else:
            out.append(chr(shifted))
            shifted += 1
    return out


class BpeTokenizer:
    """Text -> (1, 77) int64 ids with a vocabulary read from `vocabulary` (gzip BPE merges file)."""

    def __init__(self, vocabulary: Path):
        import regex  # third-party `regex`: \p{L} / \p{N} classes, which `re` lacks
        try:
            lines = gzip.decompress(Path(vocabulary).read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise RuntimeInputError(f"{vocabulary} is not a gzip-compressed BPE vocabulary: {e}") from e
        merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise RuntimeInputError(f"{vocabulary} is not a CLIP BPE vocabulary ({NUM_MERGES} merges expected)")
        self.byte_chars = _byte_alphabet()
        base = sorted(self.byte_chars)
        symbols = [*base, *(c + END_OF_WORD for c in base), *("".join(p) for p in merges), START_TOKEN, END_TOKEN]
        self.token_ids = {s: i for i, s in enumerate(symbols)}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id, self.end_id = self.token_ids[START_TOKEN], self.token_ids[END_TOKEN]
        self._pieces = regex.compile(
            rf"{START_TOKEN}|{END_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE)
        self._whitespace = regex.compile(r"\s+")

    def clean(self, text: str) -> str:
        import ftfy
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return self._whitespace.sub(" ", text).strip().lower()

    def _bpe(self, word: str) -> list[str]:
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            best = min(itertools.pairwise(symbols), key=lambda p: self.merge_rank.get(p, len(self.merge_rank)))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self._pieces.findall(self.clean(text)):
            if piece in (START_TOKEN, END_TOKEN):
                ids.append(self.token_ids[piece])
                continue
            word = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_ids[s] for s in self._bpe(word))
        return ids

    def check(self, text: str) -> None:
        """Refuse an empty prompt (nothing visible after cleaning) or one longer than the context."""
        cleaned = self.clean(text)
        if not any(unicodedata.category(c)[0] not in "CZ" for c in cleaned):
            raise RuntimeInputError("the text prompt is empty" + ("" if not text.strip() else
                                                                  " (only whitespace, control or format characters)"))
        tokens = len(self.encode(text))
        if tokens > MAX_PROMPT_TOKENS:
            raise RuntimeInputError(f"the text prompt is {tokens} tokens long; the text encoder takes at most "
                                    f"{MAX_PROMPT_TOKENS} (a context of {CONTEXT_LENGTH} with start and end): "
                                    "shorten it")

    def __call__(self, text: str) -> np.ndarray:
        ids = [self.start_id, *self.encode(text), self.end_id]
        if len(ids) > CONTEXT_LENGTH:
            ids = [*ids[:CONTEXT_LENGTH - 1], self.end_id]
        out = np.zeros((1, CONTEXT_LENGTH), np.int64)
        out[0, :len(ids)] = ids
        return out
