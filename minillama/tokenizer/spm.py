"""SentencePiece vocabularies (Llama 2, TinyLlama, Mistral, stories260K).

Two ways in: a `tokenizer.model` file, run by the `sentencepiece` library itself; and a GGUF "llama" vocabulary
(pieces, scores, piece types, no model file), for which we run SentencePiece's BPE ourselves: spaces become "▁",
a "▁" goes in front, then the adjacent pair whose merged piece scores highest is merged (leftmost on ties) until
no merged piece is in the vocabulary; pieces still unknown fall back to their UTF-8 bytes "<0xNN>".
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import TokenizerError
from .base import AddedToken, Tokenizer
from .chat import ChatTemplate

SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Piece types, as numbered by sentencepiece's ModelProto and GGUF's tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _byte_value(piece: str) -> int | None:
    """0xNN for a byte piece "<0xNN>", else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def load_sentencepiece(path: Path) -> Any:
    """A sentencepiece.SentencePieceProcessor for a tokenizer.model file."""
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{path}: not a readable SentencePiece model ({exc})") from None


class SentencePieceTokenizer(Tokenizer):
    """A `tokenizer.model` SentencePiece file, encoded by the sentencepiece library."""

    def __init__(
        self,
        processor: Any,
        *,
        added_tokens: Iterable[AddedToken] = (),
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        add_bos: bool = True,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        """processor: a loaded sentencepiece.SentencePieceProcessor (see `load_sentencepiece`)."""
        self._sp = processor
        sp = self._sp
        # Decoding drops the first word's "▁" only where encoding put one there (add_dummy_prefix, on for Llama).
        first = sp.encode("a", out_type=str)
        self.strips_leading_space = bool(first) and first[0].startswith(SPACE)
        n = sp.get_piece_size()
        self._bytes: list[bytes] = []
        self._byte_ids: list[int] = []
        specials: dict[str, AddedToken] = {}
        for i in range(n):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                self._bytes.append(bytes((_byte_value(piece) or 0,)))
                self._byte_ids.append(i)
            elif sp.is_control(i) or sp.is_unknown(i):
                self._bytes.append(piece.encode("utf-8"))
                specials[piece] = AddedToken(piece, i, special=True)
            else:
                self._bytes.append(piece.replace(SPACE, " ").encode("utf-8"))
        for t in added_tokens:  # from tokenizer_config.json: may rename nothing, may add ids past the model's own
            if t.id >= len(self._bytes):
                self._bytes.extend(b"" for _ in range(t.id + 1 - len(self._bytes)))
            self._bytes[t.id] = t.content.encode("utf-8")
            specials[t.content] = t
        if bos_id is None and sp.bos_id() >= 0:
            bos_id = sp.bos_id()
        eos = list(eos_ids) or ([sp.eos_id()] if sp.eos_id() >= 0 else [])
        super().__init__(
            vocab_size=len(self._bytes),
            bos_id=bos_id,
            eos_ids=eos,
            added_tokens=specials.values(),
            add_bos=add_bos,
            chat_template=chat_template or ChatTemplate.by_name("plain"),
        )

    def _encode_text(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def _ordinary_ids(self) -> Iterator[int]:
        byte_ids = set(self._byte_ids)
        yield from (i for i in range(self.vocab_size) if i not in byte_ids)
        yield from self._byte_ids


class SpmVocabTokenizer(Tokenizer):
    """SentencePiece BPE from a piece list with scores and types (GGUF tokenizer.ggml.model = "llama")."""

    def __init__(
        self,
        *,
        pieces: Sequence[str],
        scores: Sequence[float],
        types: Sequence[int],
        add_space_prefix: bool = True,
        unk_id: int | None = None,
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        add_bos: bool = True,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        if not (len(pieces) == len(scores) == len(types)):
            raise TokenizerError(
                f"SentencePiece vocabulary has {len(pieces)} pieces but {len(scores)} scores and {len(types)} types"
            )
        self.strips_leading_space = add_space_prefix
        self._add_space_prefix = add_space_prefix
        self._types = list(types)
        # Only these piece kinds can be the result of a merge (sentencepiece's `pieces_` map).
        self._mergeable: dict[str, tuple[float, int]] = {}
        self._byte_ids: dict[int, int] = {}
        self._bytes: list[bytes] = []
        added: list[AddedToken] = []
        for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
            if kind == BYTE and _byte_value(piece) is not None:
                self._byte_ids[_byte_value(piece)] = i  # type: ignore[index]
                self._bytes.append(bytes((_byte_value(piece),)))  # type: ignore[arg-type]
                continue
            if kind in (NORMAL, USER_DEFINED, UNUSED):
                self._mergeable.setdefault(piece, (float(score), i))
            if kind in (CONTROL, UNKNOWN):
                self._bytes.append(piece.encode("utf-8"))
                added.append(AddedToken(piece, i, special=True))
            else:
                self._bytes.append(piece.replace(SPACE, " ").encode("utf-8"))
                if kind == USER_DEFINED:
                    added.append(AddedToken(piece, i, special=False))
            if kind == UNKNOWN and unk_id is None:
                unk_id = i
        self._unk_id = unk_id
        super().__init__(
            vocab_size=len(pieces),
            bos_id=bos_id,
            eos_ids=eos_ids,
            added_tokens=added,
            add_bos=add_bos,
            chat_template=chat_template or ChatTemplate.by_name("plain"),
        )

    def _encode_text(self, text: str) -> list[int]:
        if self._add_space_prefix:
            text = " " + text
        symbols: list[str] = list(text.replace(" ", SPACE))
        n = len(symbols)
        if n == 0:
            return []
        nxt = list(range(1, n + 1))
        prev = list(range(-1, n - 1))
        nxt[-1] = -1
        alive = [True] * n
        mergeable = self._mergeable
        agenda: list[tuple[float, int, int, int]] = []
        unused_parts: dict[str, tuple[str, str]] = {}

        def propose(left: int, right: int) -> None:
            merged = symbols[left] + symbols[right]
            found = mergeable.get(merged)
            if found is None:
                return
            score, token_id = found
            if self._types[token_id] == UNUSED:  # may be merged through, but is split again at the end
                unused_parts[merged] = (symbols[left], symbols[right])
            # Highest score first, leftmost on ties: sentencepiece's agenda order.
            heapq.heappush(agenda, (-score, left, right, len(merged)))

        for i in range(n - 1):
            propose(i, i + 1)
        while agenda:
            _, left, right, size = heapq.heappop(agenda)
            if not (alive[left] and alive[right] and nxt[left] == right):
                continue
            if len(symbols[left]) + len(symbols[right]) != size:
                continue  # one side has grown since this pair was proposed
            symbols[left] += symbols[right]
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[left] != -1:
                prev[nxt[left]] = left
            if prev[left] != -1:
                propose(prev[left], left)
            if nxt[left] != -1:
                propose(left, nxt[left])

        ids: list[int] = []
        i = 0
        while i != -1:
            self._resegment(symbols[i], unused_parts, ids)
            i = nxt[i]
        return ids

    def _resegment(self, piece: str, unused_parts: dict[str, tuple[str, str]], out: list[int]) -> None:
        found = self._mergeable.get(piece)
        if found is not None and self._types[found[1]] != UNUSED:
            out.append(found[1])
        elif piece in unused_parts:
            left, right = unused_parts[piece]
            self._resegment(left, unused_parts, out)
            self._resegment(right, unused_parts, out)
        elif self._byte_ids:
            out.extend(self._byte_ids[b] for b in piece.encode("utf-8"))
        elif self._unk_id is not None:
            if not (out and out[-1] == self._unk_id):  # a run of unknown characters is one <unk>, as sentencepiece
                out.append(self._unk_id)
        else:
            raise TokenizerError(f"cannot encode {piece!r}: the vocabulary has no such piece, no byte pieces, no <unk>")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def _ordinary_ids(self) -> Iterator[int]:
        byte_ids = set(self._byte_ids.values())
        yield from (i for i in range(self.vocab_size) if i not in byte_ids)
        yield from byte_ids
