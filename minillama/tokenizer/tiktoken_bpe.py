"""Llama 3's own `tokenizer.model`: tiktoken's format, one "base64(token bytes) rank" line per token.

The ranks are both merge priorities and ids; the 256 special tokens follow the last rank. tiktoken runs the split
pattern and the merges (in Rust), which is exactly how Meta's reference code encodes with this file.
"""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Iterable

from ..errors import TokenizerError
from .base import AddedToken, Tokenizer
from .chat import ChatTemplate
from .pretokenize import LLAMA3_PATTERN

_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+=*\s+\d+\s*$")

N_LLAMA3_SPECIAL = 256


def llama3_special_tokens() -> list[str]:
    """The names of Llama 3's 256 special tokens, in id order (Meta's llama3 reference tokenizer)."""
    named = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|reserved_special_token_4|>", "<|eot_id|>",
    ]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, N_LLAMA3_SPECIAL - 5)]


def is_tiktoken_file(path: Path) -> bool:
    """Whether path starts like a tiktoken rank file (a SentencePiece model is binary protobuf)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({exc})") from None
    return bool(_RANK_LINE.match(first))


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except (ValueError, binascii.Error):
                    raise TokenizerError(
                        f"{path}, line {line_no}: expected 'base64-token rank', got {line[:80]!r}"
                    ) from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({exc})") from None
    if not ranks:
        raise TokenizerError(f"{path}: the tiktoken rank file is empty")
    return ranks


class TiktokenTokenizer(Tokenizer):
    def __init__(
        self,
        *,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pattern: str = LLAMA3_PATTERN,
        name: str = "minillama",
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        add_bos: bool = True,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        import tiktoken

        try:
            self._encoding = tiktoken.Encoding(
                name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens
            )
        except ValueError as exc:
            raise TokenizerError(f"tiktoken cannot build the {name} vocabulary: {exc}") from None
        self._n_ranks = len(ranks)
        super().__init__(
            vocab_size=max([*ranks.values(), *special_tokens.values()]) + 1,
            bos_id=bos_id,
            eos_ids=eos_ids,
            added_tokens=[AddedToken(text, i, special=True) for text, i in special_tokens.items()],
            add_bos=add_bos,
            chat_template=chat_template or ChatTemplate.by_name("plain"),
        )

    @classmethod
    def from_file(
        cls, path: Path, *, special_names: list[str] | None = None, chat_template_source: str | None = None,
        add_bos: bool = True,
    ) -> TiktokenTokenizer:
        """A Llama 3 tokenizer.model; special tokens get ids right after the ranks, named as Llama 3 names them
        unless special_names (from tokenizer_config.json) says otherwise."""
        ranks = read_ranks(path)
        base = max(ranks.values()) + 1
        names = special_names or llama3_special_tokens()
        specials = {text: base + i for i, text in enumerate(names)}
        eos = [specials[t] for t in ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>") if t in specials]
        template = ChatTemplate.detect(chat_template_source, specials, bos_token="<|begin_of_text|>")
        return cls(
            ranks=ranks, special_tokens=specials, name=path.name, bos_id=specials.get("<|begin_of_text|>"),
            eos_ids=eos, add_bos=add_bos, chat_template=template,
        )

    def _encode_text(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._encoding.decode_single_token_bytes(self._check_id(token_id))
