"""Streaming decode: whole characters only, and the pieces add up to decode(all ids), for every backend."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import (  # noqa: E402
    PROBE_TEXTS, SPECIAL_TEXTS, sentencepiece_gguf_metadata, train_byte_level, train_sentencepiece,
    write_tiktoken_file,
)

from minillama.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_gguf  # noqa: E402

MULTIBYTE = ["🦙 llamas 😀👍🏽 eat 日本語 and ꙮ", "😀", "日本", " 🇫🇷🇫🇷 ", "naïve café €5"]


@pytest.fixture(scope="module", params=["sentencepiece", "gguf-llama", "bytelevel", "tiktoken"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "sentencepiece":
        train_sentencepiece(folder)
        return load_tokenizer(folder)
    if request.param == "gguf-llama":
        return tokenizer_from_gguf(sentencepiece_gguf_metadata(train_sentencepiece(folder)))
    if request.param == "bytelevel":
        train_byte_level(folder, "smollm", vocab_size=400)
        return load_tokenizer(folder)
    reference = train_byte_level(tmp_path_factory.mktemp("bpe"), "gpt2", vocab_size=400)
    write_tiktoken_file(folder / "tokenizer.model", reference)
    return load_tokenizer(folder)


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    decoder = tok.stream_decoder(skip_special=skip_special)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_pieces_are_whole_characters_and_add_up(tokenizer: Tokenizer) -> None:
    held_back = 0
    for text in MULTIBYTE + PROBE_TEXTS:
        ids = tokenizer.encode(text, bos=False)
        pieces = _stream(tokenizer, ids)
        assert all("\ufffd" not in p for p in pieces), (text, pieces)
        assert "".join(pieces) == tokenizer.decode(ids) == text
        held_back += sum(1 for i, p in zip(ids, pieces) if p == "" and tokenizer.token_bytes(i))
    # the vocabularies are tiny, so emoji and CJK are spelled in bytes: characters really were split over tokens
    assert held_back > 10


def test_bos_and_specials_in_the_stream(tokenizer: Tokenizer) -> None:
    text = "🦙 hi"
    ids = tokenizer.encode(text)  # BOS first where the model adds one
    assert "".join(_stream(tokenizer, ids, skip_special=True)) == tokenizer.decode(ids, skip_special=True) == text
    assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_leading_space_after_the_first_token_is_kept(tokenizer: Tokenizer) -> None:
    """SentencePiece drops the word-start space of the first word only; later words keep theirs."""
    ids = tokenizer.encode("Once upon a time", bos=False)
    pieces = _stream(tokenizer, ids)
    assert not pieces[0].startswith(" ")
    assert "".join(pieces) == "Once upon a time"
    assert any(p.startswith(" ") for p in pieces[1:])


def test_cut_character_at_the_end_is_flushed_as_replacement(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀", bos=False)
    if len(ids) < 2:
        pytest.skip("this vocabulary holds the emoji as one token")
    decoder = tokenizer.stream_decoder()
    assert "".join(decoder.push(i) for i in ids[:-1]) == ""
    assert decoder.flush() == "\ufffd"
    assert tokenizer.decode(ids[:-1]) == "\ufffd"


def test_special_text_streams(tokenizer: Tokenizer) -> None:
    for text in SPECIAL_TEXTS:
        ids = tokenizer.encode(text, bos=False)
        assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_stream_continues_a_prompt(tokenizer: Tokenizer) -> None:
    """With the prompt as prefix the stream is exactly what decoding prompt + answer adds to the prompt's text."""
    prompt = tokenizer.encode("Once upon a", bos=True)
    checked = 0
    for answer_text in [" time there was 🦙", " 日本語", "s and more"]:
        answer = tokenizer.encode("Once upon a" + answer_text, bos=True)[len(prompt):]
        if tokenizer.encode("Once upon a" + answer_text, bos=True)[:len(prompt)] != prompt:
            continue  # the tokenization of the prompt changed with what follows: no clean split here
        decoder = tokenizer.stream_decoder(prefix=prompt)
        pieces = "".join(decoder.push(i) for i in answer) + decoder.flush()
        assert tokenizer.decode(prompt) + pieces == tokenizer.decode(prompt + answer)
        assert pieces == answer_text
        checked += 1
    assert checked >= 2


def test_prefix_ending_inside_a_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ab🦙cd", bos=False)
    cut = next((k for k in range(1, len(ids)) if "\ufffd" in tokenizer.decode(ids[:k])), None)
    if cut is None:
        pytest.skip("this vocabulary holds the emoji whole")
    decoder = tokenizer.stream_decoder(prefix=ids[:cut])
    rest = "".join(decoder.push(i) for i in ids[cut:]) + decoder.flush()
    assert rest.startswith("🦙") and rest.endswith("cd")
