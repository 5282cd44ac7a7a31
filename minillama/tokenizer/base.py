"""What every tokenizer backend shares: added/special-token matching, byte-exact decoding and streaming.

A backend only has to say how plain text (no special tokens in it) becomes ids (`_encode_text`) and which bytes
each id stands for (`token_bytes`). Decoding is then the same everywhere: concatenate the bytes and read them as
UTF-8, so that a character split over two tokens comes out whole, and the streaming decoder and `decode` agree by
construction.
"""
from __future__ import annotations

import codecs
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..errors import TokenizerError
from .chat import ChatTemplate


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole in the input text before the backend sees it ("<|im_start|>", "<s>")."""

    content: str
    id: int
    special: bool = True   # special ones are matched only when encode(special=True); others always
    lstrip: bool = False   # swallow the whitespace on its left (HF AddedToken semantics)
    rstrip: bool = False   # ... and on its right


class Tokenizer(ABC):
    """Text <-> token ids for one model, plus the facts about its vocabulary that generation needs.

    Attributes: vocab_size (max id + 1, added tokens included), bos_id, eos_ids (every id that ends a turn or the
    text), special_ids, add_bos (whether `encode(bos=True)` puts BOS first: the model's files decide),
    chat_template.
    """

    # SentencePiece-style vocabularies mark word starts with a space; the space of the very first word of a decoded
    # text is an artefact of that and is dropped, as sentencepiece itself does.
    strips_leading_space: bool = False

    def __init__(
        self,
        *,
        vocab_size: int,
        bos_id: int | None,
        eos_ids: Iterable[int],
        added_tokens: Iterable[AddedToken],
        add_bos: bool,
        chat_template: ChatTemplate,
    ) -> None:
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None
        self.added_tokens = {t.content: t for t in added_tokens}
        self.special_ids: set[int] = {t.id for t in self.added_tokens.values() if t.special}
        self.chat_template = chat_template
        # A template's end-of-turn marker that is a token of its own ends generation like EOS does.
        end_ids = list(eos_ids)
        end_ids += [self.added_tokens[s].id for s in chat_template.stop_strings if s in self.added_tokens]
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in end_ids if 0 <= i < vocab_size))
        # Longest first, so that of two tokens starting at the same place the longer wins (leftmost-longest, as HF).
        by_length = sorted(self.added_tokens.values(), key=lambda t: len(t.content), reverse=True)
        self._matchable = {False: [t for t in by_length if not t.special], True: by_length}
        self._added_patterns: dict[tuple[int, ...], re.Pattern[str]] = {}
        self._bytes_to_id: dict[bytes, int] | None = None

    # -- what a backend provides ------------------------------------------------------------------------------
    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids of a stretch of text that holds no added token."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token_id stands for in decoded text (special tokens: their own text)."""

    def _ordinary_ids(self) -> Iterator[int]:
        """Ids to search in `id_of`, the preferred spelling of a text first (byte-fallback pieces last)."""
        return iter(range(self.vocab_size))

    # -- encoding ---------------------------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of text. bos=True puts BOS first when the model's files say to (add_bos); special=True maps the
        text of special tokens ("<|im_start|>") to their ids, special=False tokenizes it as ordinary text."""
        ids = [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []
        # Only the added tokens that occur in text take part: a substring test is far cheaper than a regex
        # alternation of hundreds of tokens tried at every position.
        tokens = [t for t in self._matchable[special] if t.content in text]
        if not tokens:
            return ids + self._encode_text(text) if text else ids
        pattern = self._added_token_pattern(tokens)
        last = 0
        for m in pattern.finditer(text):
            if m.start() > last:
                ids.extend(self._encode_text(text[last:m.start()]))
            ids.append(tokens[int(m.lastgroup[1:])].id)  # type: ignore[index]
            last = m.end()
        if last < len(text):
            ids.extend(self._encode_text(text[last:]))
        return ids

    def _added_token_pattern(self, tokens: list[AddedToken]) -> re.Pattern[str]:
        key = tuple(t.id for t in tokens)
        pattern = self._added_patterns.get(key)
        if pattern is None:
            if len(self._added_patterns) > 256:
                self._added_patterns.clear()
            alternatives = [
                f"(?P<t{i}>" + (r"\s*" if t.lstrip else "") + re.escape(t.content) + (r"\s*" if t.rstrip else "") + ")"
                for i, t in enumerate(tokens)
            ]
            pattern = self._added_patterns[key] = re.compile("|".join(alternatives))
        return pattern

    # -- decoding ---------------------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """The text of ids; invalid or cut UTF-8 becomes U+FFFD. skip_special drops special tokens."""
        decoder = self.stream_decoder(skip_special=skip_special)
        return "".join([decoder.push(i) for i in ids]) + decoder.flush()

    def stream_decoder(self, skip_special: bool = False, prefix: Sequence[int] = ()) -> StreamDecoder:
        """A decoder fed one id at a time that only ever returns whole characters.

        prefix: ids already shown before the stream starts (the prompt of a completion). They are decoded silently,
        so the stream continues them: a SentencePiece word-start space is kept ("Once upon a" + " time"), and a
        character the prompt's last token began is finished. Then decode(prefix) + pieces == decode(prefix + ids).
        """
        return StreamDecoder(self, skip_special=skip_special, prefix=prefix)

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return token_id

    # -- lookup -----------------------------------------------------------------------------------------------
    def id_of(self, piece: str) -> int | None:
        """The id of the single token whose text is exactly piece ("?", " the", "<|eot_id|>"), or None."""
        added = self.added_tokens.get(piece)
        if added is not None:
            return added.id
        if self._bytes_to_id is None:
            table: dict[bytes, int] = {}
            for i in self._ordinary_ids():
                if i not in self.special_ids:
                    table.setdefault(self.token_bytes(i), i)
            self._bytes_to_id = table
        return self._bytes_to_id.get(piece.encode("utf-8"))


class StreamDecoder:
    """Turns ids into printable text one at a time.

    push() returns only complete UTF-8 characters: the bytes of a character split over several tokens wait until
    its last byte arrives. The concatenation of everything push() and flush() return equals tokenizer.decode(ids).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, prefix: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._seen_text = False
        for token_id in prefix:
            self.push(token_id)

    def push(self, token_id: int) -> str:
        tok = self._tokenizer
        is_special = token_id in tok.special_ids
        if is_special and self._skip_special:
            return ""
        data = tok.token_bytes(token_id)
        if not is_special:
            if not self._seen_text and tok.strips_leading_space and data.startswith(b" "):
                data = data[1:]
            self._seen_text = True
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character comes out as U+FFFD); the decoder starts afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._seen_text = False
        return text
