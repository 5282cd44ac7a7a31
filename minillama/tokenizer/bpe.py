"""Byte-level BPE (GPT-2 style) as in tokenizer.json files and GGUF "gpt2" vocabularies: SmolLM, Qwen2, Llama 3.

Text is cut into words by the pre-tokenizer, each word's UTF-8 bytes are spelled with the GPT-2 byte alphabet
(every byte one printable character), and the word is merged pair by pair: always the adjacent pair with the best
(lowest) merge rank, the leftmost one on ties, until no listed pair is left. That is the `tokenizers` library's
rule exactly; we keep it in plain Python with a per-word cache because words repeat, so most lookups never merge.
(tiktoken ranks a pair by the rank of the merged *string*, which differs from the merge list whenever a vocabulary
holds a token that its merges never build from the pair at hand.)
"""
from __future__ import annotations

import functools
import unicodedata
from typing import Callable, Iterable, Iterator, Sequence

from .base import AddedToken, Tokenizer
from .chat import ChatTemplate
from .pretokenize import Splitter

_WORD_CACHE_LIMIT = 200_000


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's map of each byte to a printable character: printable Latin-1 bytes stand for themselves, the
    others are shifted to 256 and above in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@functools.cache
def _byte_of_char() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def token_text_to_bytes(token: str) -> bytes:
    """The bytes a byte-level vocabulary entry stands for (characters outside the alphabet count as UTF-8)."""
    table = _byte_of_char()
    out = bytearray()
    for ch in token:
        b = table.get(ch)
        out += ch.encode("utf-8") if b is None else bytes((b,))
    return bytes(out)


Normalizer = Callable[[str], str]


def unicode_normalizer(form: str) -> Normalizer:
    return functools.partial(unicodedata.normalize, form)


class ByteLevelBPETokenizer(Tokenizer):
    def __init__(
        self,
        *,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        pre_tokenizer: Splitter,
        normalizer: Normalizer | None = None,
        ignore_merges: bool = False,
        unk_id: int | None = None,
        added_tokens: Iterable[AddedToken] = (),
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        add_bos: bool = False,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        added_tokens = [t for t in added_tokens if t.content]
        self._vocab = vocab
        # A pair listed twice keeps its last rank, as `tokenizers` does when it builds its merge map.
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._pre_tokenizer = pre_tokenizer
        self._normalizer = normalizer
        self._ignore_merges = ignore_merges
        self._unk_id = unk_id
        self._word_cache: dict[str, list[int]] = {}
        size = max([*vocab.values(), *(t.id for t in added_tokens), -1]) + 1
        self._bytes: list[bytes] = [b""] * size
        for token, i in vocab.items():
            self._bytes[i] = token_text_to_bytes(token)
        for t in added_tokens:
            self._bytes[t.id] = t.content.encode("utf-8")
        self._alphabet = byte_alphabet()
        super().__init__(
            vocab_size=size,
            bos_id=bos_id,
            eos_ids=eos_ids,
            added_tokens=added_tokens,
            add_bos=add_bos,
            chat_template=chat_template or ChatTemplate.by_name("plain"),
        )

    def _encode_text(self, text: str) -> list[int]:
        if self._normalizer is not None:
            text = self._normalizer(text)
        ids: list[int] = []
        cache = self._word_cache
        alphabet = self._alphabet
        for piece in self._pre_tokenizer(text):
            word_ids = cache.get(piece)
            if word_ids is None:
                if len(cache) >= _WORD_CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[piece] = self._merge_word("".join(alphabet[b] for b in piece.encode("utf-8")))
            ids.extend(word_ids)
        return ids

    def _merge_word(self, word: str) -> list[int]:
        vocab = self._vocab
        if self._ignore_merges and word in vocab:
            return [vocab[word]]
        ranks = self._ranks
        symbols = list(word)
        while len(symbols) > 1:
            best_rank, best = None, -1
            for i in range(len(symbols) - 1):
                rank = ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, i
            if best_rank is None:
                break
            symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        ids = []
        for s in symbols:
            i = vocab.get(s)
            if i is None:
                i = self._unk_id  # a character the alphabet lacks: unk if there is one, else dropped (as HF)
            if i is not None:
                ids.append(i)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def _ordinary_ids(self) -> Iterator[int]:
        return iter(self._vocab.values())
