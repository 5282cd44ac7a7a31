"""Byte-level BPE from tokenizer.json (our own merge loop and pre-tokenizers) against the `tokenizers` library on
tiny tokenizers trained here with GPT-2, Qwen2, SmolLM and Llama 3 style pre-tokenizers."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import PROBE_TEXTS, SPECIAL_TEXTS, TRAIN_LINES, byte_level_variants, train_byte_level  # noqa: E402

from minillama.tokenizer import load_tokenizer  # noqa: E402
from minillama.tokenizer.bpe import ByteLevelBPETokenizer  # noqa: E402
from minillama.tokenizer.pretokenize import GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, compile_pattern  # noqa: E402

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module", params=byte_level_variants())
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, str]:
    folder = tmp_path_factory.mktemp(request.param)
    return folder, train_byte_level(folder, request.param), request.param


def _encode_splitting_special(reference: Any, text: str) -> list[int]:
    """The reference's ids with special tokens' text treated as plain text (HF split_special_tokens)."""
    reference.encode_special_tokens = True
    try:
        return reference.encode(text).ids
    finally:
        reference.encode_special_tokens = False


def test_ids_match_tokenizers(trained: tuple[Path, Any, str]) -> None:
    folder, reference, variant = trained
    tok = load_tokenizer(folder)
    assert isinstance(tok, ByteLevelBPETokenizer)
    assert tok.vocab_size == reference.get_vocab_size()
    for text in PROBE_TEXTS + SPECIAL_TEXTS + [line[::-1] for line in TRAIN_LINES]:
        expected = reference.encode(text).ids  # with the post-processor: BOS where the tokenizer adds one
        assert tok.encode(text) == expected, text
        assert tok.decode(expected) == reference.decode(expected, skip_special_tokens=False), text


def test_random_text_matches_tokenizers(trained: tuple[Path, Any, str]) -> None:
    folder, reference, variant = trained
    tok = load_tokenizer(folder)
    alphabet = sorted(set("".join(TRAIN_LINES))) + list("'sSlLtT  \n\r\t0123456789ꙮ🦙")
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        assert tok.encode(text, bos=False) == reference.encode(text, add_special_tokens=False).ids, repr(text)


def test_decode_round_trips(trained: tuple[Path, Any, str]) -> None:
    folder, _, variant = trained
    if variant == "gpt2-prefix-space":
        pytest.skip("add_prefix_space puts a space in front that decoding keeps, as in `tokenizers`")
    tok = load_tokenizer(folder)
    for text in PROBE_TEXTS + SPECIAL_TEXTS:
        assert tok.decode(tok.encode(text, bos=False)) == text


def test_special_tokens(trained: tuple[Path, Any, str]) -> None:
    folder, reference, variant = trained
    tok = load_tokenizer(folder)
    if variant == "llama3":
        assert tok.bos_id == reference.token_to_id("<|begin_of_text|>") and tok.add_bos
        assert reference.token_to_id("<|eot_id|>") in tok.eos_ids
        assert reference.token_to_id("<|end_of_text|>") in tok.eos_ids
        return
    im_start, im_end = reference.token_to_id("<|im_start|>"), reference.token_to_id("<|im_end|>")
    assert tok.bos_id is None and not tok.add_bos
    assert im_end in tok.eos_ids and reference.token_to_id("<|endoftext|>") in tok.eos_ids
    assert {im_start, im_end} <= tok.special_ids
    assert tok.encode("<|im_start|>hi") == [im_start] + reference.encode("hi").ids
    # special=False: the marker is plain text
    assert tok.encode("<|im_start|>hi", special=False) == _encode_splitting_special(reference, "<|im_start|>hi")
    hi = [im_start, *reference.encode("hi").ids]
    assert tok.decode(hi, skip_special=True) == reference.decode(hi, skip_special_tokens=True)
    assert tok.id_of("<|im_end|>") == im_end
    assert tok.id_of("?") == reference.token_to_id("?")


def test_id_of_single_tokens(trained: tuple[Path, Any, str]) -> None:
    folder, reference, variant = trained
    tok = load_tokenizer(folder)
    vocab = reference.get_vocab()
    assert tok.id_of(" the") == vocab.get("Ġthe")
    assert tok.id_of("zzzz-not-a-token") is None


def test_added_tokens_with_lstrip_rstrip(tmp_path: Path) -> None:
    from tokenizers import AddedToken

    reference = train_byte_level(tmp_path, "gpt2")
    reference.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True)])
    reference.add_tokens([AddedToken("[SEP]", rstrip=True, special=False)])
    reference.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    for text in ["a <mask> b", "a   <mask>b", "x [SEP]   y", "<mask>[SEP]"]:
        assert tok.encode(text) == reference.encode(text).ids, text
        # non-special added tokens stay whole even when special tokens are split
        assert tok.encode(text, special=False) == _encode_splitting_special(reference, text), text


def test_merges_as_strings_load_like_pairs(tmp_path: Path) -> None:
    """Older tokenizer.json files write merges as "a b" strings."""
    reference = train_byte_level(tmp_path, "smollm")
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path)
    for text in PROBE_TEXTS:
        assert tok.encode(text) == reference.encode(text).ids


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN])
def test_translated_patterns_split_like_the_regex_module(pattern: str) -> None:
    """Our \\p{..} translation for Python's re against the `regex` package (a test-only oracle)."""
    regex = pytest.importorskip("regex")
    ours = compile_pattern(pattern)
    for text in PROBE_TEXTS + SPECIAL_TEXTS + ["\x1c\x1d x \x85y\u2028z", "ſ 'S 'ſ K"]:
        assert ours.findall(text) == regex.findall(pattern, text), repr(text)
