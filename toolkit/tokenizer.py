"""CLIP byte-level BPE tokenizer, as used by the EfficientSAM3 text encoder.

Token ids match upstream's ``SimpleTokenizer`` (the OpenAI CLIP / open_clip tokenizer with
"lower" cleaning): ftfy + double HTML unescape, whitespace collapsed, lower-cased; then
``<start_of_text> ... <end_of_text>``, zero padded (or cut, keeping the end token) to the
context length.

The vocabulary is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` shipped in ``toolkit/data``.
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import ftfy
import regex
import torch

from .errors import ToolkitError

CONTEXT_LENGTH = 77
MAX_PROMPT_TOKENS = CONTEXT_LENGTH - 2  # the start and end tokens take two slots
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
# The merges file has a header line; CLIP keeps the merges that bring the vocabulary to
# 49,152 entries before the two special tokens (256 bytes + 256 end-of-word bytes + merges).
NUM_MERGES = 49152 - 256 - 2

# Special tokens written literally in a prompt are kept whole, like upstream; then
# English contractions, runs of letters, single digits, runs of other non-space symbols.
_PIECE_PATTERN = regex.compile(
    rf"{START_TOKEN}|{END_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _byte_alphabet() -> list[str]:
    """One printable character per byte value (index = byte), as in GPT-2 / CLIP.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen...)
    are moved to code points 256 and up, in byte order, so BPE never sees whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {}
    shifted = 256
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(shifted)
            shifted += 1
    return [alphabet[byte] for byte in range(256)]


@dataclass(frozen=True)
class _Vocabulary:
    byte_chars: list[str]                  # byte value -> its BPE symbol
    token_ids: dict[str, int]              # BPE symbol -> id
    merge_rank: dict[tuple[str, str], int]  # symbol pair -> merge priority (lower first)


@lru_cache(maxsize=1)
def _vocabulary() -> _Vocabulary:
    """Read the merges file once per process (about 50k entries)."""
    packed = files("toolkit").joinpath("data", VOCAB_FILE).read_bytes()
    lines = gzip.decompress(packed).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]
    byte_chars = _byte_alphabet()
    # Ids list the byte symbols by code point (printable ones first), as CLIP does.
    base = sorted(byte_chars)
    symbols = [*base, *(c + END_OF_WORD for c in base),
               *("".join(pair) for pair in merges), START_TOKEN, END_TOKEN]
    return _Vocabulary(
        byte_chars=byte_chars,
        token_ids={symbol: i for i, symbol in enumerate(symbols)},
        merge_rank={pair: rank for rank, pair in enumerate(merges)},
    )


def _bpe(word: str, merge_rank: dict[tuple[str, str], int]) -> list[str]:
    """Split one pre-tokenised word into BPE symbols; the last one carries ``</w>``."""
    symbols = [*word[:-1], word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        pairs = zip(symbols, symbols[1:])
        best = min(pairs, key=lambda pair: merge_rank.get(pair, len(merge_rank)))
        if best not in merge_rank:
            break
        merged = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def clean_text(text: str) -> str:
    """Upstream's "lower" cleaning: fix mojibake, unescape HTML twice, squeeze spaces, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """Text -> CLIP BPE token ids. Construction is free; the vocabulary loads on first use."""

    @property
    def start_id(self) -> int:
        return _vocabulary().token_ids[START_TOKEN]

    @property
    def end_id(self) -> int:
        return _vocabulary().token_ids[END_TOKEN]

    def encode(self, text: str) -> list[int]:
        """Token ids of the cleaned text, without start/end tokens."""
        vocab = _vocabulary()
        ids = []
        for piece in _PIECE_PATTERN.findall(clean_text(text)):
            if piece in (START_TOKEN, END_TOKEN):
                ids.append(vocab.token_ids[piece])
                continue
            word = "".join(vocab.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(vocab.token_ids[s] for s in _bpe(word, vocab.merge_rank))
        return ids

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
    cleaned = clean_text(text)
    if not any(unicodedata.category(c)[0] not in "CZ" for c in cleaned):
        raise ToolkitError("the text prompt is empty" + ("" if not text.strip() else
                                                          " (only whitespace, control or format characters)"))
    tokens = len(Tokenizer().encode(text))
    if tokens > MAX_PROMPT_TOKENS:
        raise ToolkitError(f"the text prompt is {tokens} tokens long; the text encoder takes at most "
                           f"{MAX_PROMPT_TOKENS} (a context of {CONTEXT_LENGTH} with start and end): shorten it")
