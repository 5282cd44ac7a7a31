"""SentencePiece: tokenizer.model files through the sentencepiece library, and our own SentencePiece BPE for GGUF
"llama" vocabularies, both against sentencepiece on a model trained here and on stories260K's."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import (  # noqa: E402
    PROBE_TEXTS, TRAIN_LINES, sentencepiece_gguf_metadata, stories_tokenizer_model, train_sentencepiece,
)

from minillama.tokenizer import load_tokenizer, tokenizer_from_gguf  # noqa: E402
from minillama.tokenizer.spm import SentencePieceTokenizer, SpmVocabTokenizer  # noqa: E402

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stories")
    shutil.copy(stories_tokenizer_model(), folder / "tokenizer.model")
    return folder / "tokenizer.model"


@pytest.mark.parametrize("which", ["trained", "stories"])
def test_folder_tokenizer_matches_sentencepiece(which: str, request: pytest.FixtureRequest) -> None:
    model_file: Path = request.getfixturevalue(which)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tok = load_tokenizer(model_file.parent)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_ids, tok.add_bos) == (sp.bos_id(), (sp.eos_id(),), True)
    for text in PROBE_TEXTS:
        assert tok.encode(text, bos=False) == sp.encode(text), text
        assert tok.encode(text) == [sp.bos_id()] + sp.encode(text)
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids), text


@pytest.mark.parametrize("which", ["trained", "stories"])
def test_gguf_llama_vocabulary_matches_sentencepiece(which: str, request: pytest.FixtureRequest) -> None:
    """Our SentencePiece BPE, fed only pieces/scores/types as a GGUF holds them, must tokenize like sentencepiece."""
    model_file: Path = request.getfixturevalue(which)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tok = tokenizer_from_gguf(sentencepiece_gguf_metadata(model_file))
    assert isinstance(tok, SpmVocabTokenizer)
    assert tok.vocab_size == sp.get_piece_size()
    texts = PROBE_TEXTS + [line[::-1] for line in TRAIN_LINES]
    # A GGUF vocabulary carries no normalizer (neither does llama.cpp): compare where sentencepiece's is a no-op.
    # (stories260K's model collapses whitespace runs; the one trained here does not.)
    texts = [t for t in texts if sp.normalize(t) == "\u2581" + t.replace(" ", "\u2581")]
    assert len(texts) >= 10
    for text in texts:
        assert tok.encode(text, bos=False) == sp.encode(text), text
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok.encode("hi")[0] == sp.bos_id()


def test_gguf_llama_vocabulary_on_random_text(trained: Path) -> None:
    """Random strings from the corpus alphabet plus unseen characters (byte fallback), against sentencepiece."""
    import random

    sp = spm.SentencePieceProcessor(model_file=str(trained))
    tok = tokenizer_from_gguf(sentencepiece_gguf_metadata(trained))
    alphabet = sorted(set("".join(TRAIN_LINES))) + list("ꙮ🦙€\u00a0  ")
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.encode(text, bos=False) == sp.encode(text), repr(text)


def test_special_token_text_maps_to_its_id(trained: Path) -> None:
    tok = load_tokenizer(trained.parent)
    sp = spm.SentencePieceProcessor(model_file=str(trained))
    ids = tok.encode("<s>Hello</s>", bos=False)
    assert ids == [1] + sp.encode("Hello") + [2]
    # special=False: the same characters are plain text
    assert tok.encode("<s>Hello", bos=False, special=False) == sp.encode("<s>Hello")
    assert tok.decode(ids) == "<s>Hello</s>"
    assert tok.decode(ids, skip_special=True) == "Hello"
    assert tok.special_ids >= {0, 1, 2}


def test_byte_fallback_round_trip(trained: Path) -> None:
    tok = load_tokenizer(trained.parent)
    text = "unseen 🦙 ꙮ characters"
    ids = tok.encode(text, bos=False)
    assert any(tok.token_bytes(i) and len(tok.token_bytes(i)) == 1 and tok.token_bytes(i)[0] >= 0x80 for i in ids)
    assert tok.decode(ids) == text


def test_id_of_finds_single_tokens(stories: Path) -> None:
    tok = load_tokenizer(stories.parent)
    sp = spm.SentencePieceProcessor(model_file=str(stories))
    assert tok.id_of(".") == sp.piece_to_id(".")
    assert tok.id_of(" the") == sp.piece_to_id("▁the")
    assert tok.id_of("<s>") == 1
    assert tok.id_of("no such token here") is None


def test_tokenizer_config_overrides(trained: Path, tmp_path: Path) -> None:
    import json

    shutil.copy(trained, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    tok = load_tokenizer(tmp_path)
    assert tok.add_bos is False and tok.encode("hi") == tok.encode("hi", bos=False)
    assert set(tok.eos_ids) == {2, 5}


def test_stories_golden_text_round_trips(stories: Path) -> None:
    import json

    golden = json.loads((stories_tokenizer_model().parents[1] / "golden.json").read_text())
    tok = load_tokenizer(stories.parent)
    sp = spm.SentencePieceProcessor(model_file=str(stories))
    for case in golden.values():
        if isinstance(case, dict) and "greedy_64" in case:
            assert tok.decode(case["greedy_64"]) == sp.decode(case["greedy_64"])


def test_model_without_dummy_prefix(tmp_path: Path) -> None:
    """A SentencePiece model that puts no "▁" in front: nothing to strip when decoding, for both of our paths."""
    model_file = train_sentencepiece(tmp_path, add_dummy_prefix=False)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    folder_tok = load_tokenizer(tmp_path)
    gguf_tok = tokenizer_from_gguf({**sentencepiece_gguf_metadata(model_file), "tokenizer.ggml.add_space_prefix": False})
    for text in PROBE_TEXTS:
        ids = sp.encode(text)
        assert folder_tok.encode(text, bos=False) == ids
        assert gguf_tok.encode(text, bos=False) == ids, text
        assert folder_tok.decode(ids) == gguf_tok.decode(ids) == sp.decode(ids), text


def test_sentencepiece_style_tokenizer_json_defers_to_tokenizer_model(trained: Path, tmp_path: Path) -> None:
    """TinyLlama/Llama 2 folders also hold a tokenizer.json (Metaspace BPE with byte fallback): tokenizer.model wins,
    and tokenizer_config.json still supplies the chat template."""
    import json

    shutil.copy(trained, tmp_path / "tokenizer.model")
    spec = {"model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []},
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}, "decoder": {"type": "Sequence"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    template = "{% for message in messages %}{{ '<|user|>\\n' + message['content'] + eos_token }}{% endfor %}" \
               "{{ '<|assistant|>' }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.chat_template.name == "zephyr" and tok.chat_template.eos_token == "</s>"
    assert tok.eos_ids == (2,)
