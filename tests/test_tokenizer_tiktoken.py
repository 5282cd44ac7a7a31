"""Llama 3's tiktoken-format tokenizer.model, written here from a trained BPE, against tiktoken used directly."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import LLAMA3_SPECIALS, PROBE_TEXTS, train_byte_level, write_tiktoken_file  # noqa: E402

from minillama.errors import TokenizerError  # noqa: E402
from minillama.tokenizer import load_tokenizer  # noqa: E402
from minillama.tokenizer.pretokenize import LLAMA3_PATTERN  # noqa: E402
from minillama.tokenizer.tiktoken_bpe import TiktokenTokenizer, llama3_special_tokens  # noqa: E402

tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def llama3_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, int]]:
    folder = tmp_path_factory.mktemp("llama3")
    reference = train_byte_level(tmp_path_factory.mktemp("bpe"), "gpt2", vocab_size=900)
    ranks = write_tiktoken_file(folder / "tokenizer.model", reference)
    return folder, ranks


def _reference(ranks: dict[bytes, int]) -> object:
    base = len(ranks)
    return tiktoken.Encoding(
        "reference", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
        special_tokens={name: base + i for i, name in enumerate(LLAMA3_SPECIALS)},
    )


def test_special_token_names_are_llama3s() -> None:
    assert llama3_special_tokens() == LLAMA3_SPECIALS
    assert len(LLAMA3_SPECIALS) == 256


def test_ids_match_tiktoken(llama3_folder: tuple[Path, dict[bytes, int]]) -> None:
    folder, ranks = llama3_folder
    reference = _reference(ranks)
    tok = load_tokenizer(folder)
    assert isinstance(tok, TiktokenTokenizer)
    base = len(ranks)
    assert tok.vocab_size == base + 256
    assert tok.bos_id == base and tok.add_bos
    assert set(tok.eos_ids) == {base + 1, base + 9}  # <|end_of_text|>, <|eot_id|>
    assert tok.chat_template.name == "llama3"  # from the vocabulary's header tokens
    texts = PROBE_TEXTS + ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"]
    for text in texts:
        expected = reference.encode(text, allowed_special="all")
        assert tok.encode(text, bos=False) == expected, text
        assert tok.encode(text) == [base] + expected
        assert tok.decode(expected) == reference.decode(expected)
        assert tok.decode(expected) == text
    plain = "<|eot_id|> as text"
    assert tok.encode(plain, bos=False, special=False) == reference.encode(plain, disallowed_special=())


def test_special_names_from_tokenizer_config(llama3_folder: tuple[Path, dict[bytes, int]], tmp_path: Path) -> None:
    """Llama 3.1 renames some reserved tokens; tokenizer_config.json's added_tokens_decoder has the real names."""
    folder, ranks = llama3_folder
    (tmp_path / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    names = list(LLAMA3_SPECIALS)
    names[8] = "<|eom_id|>"
    base = len(ranks)
    decoder = {str(base + i): {"content": n, "special": True} for i, n in enumerate(names)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    tok = load_tokenizer(tmp_path)
    assert tok.id_of("<|eom_id|>") == base + 8
    assert base + 8 in tok.eos_ids


def test_bad_rank_file_names_the_file_and_line(tmp_path: Path) -> None:
    good = "IQ== 0\nIg== 1\n"
    (tmp_path / "tokenizer.model").write_text(good + "not-base64!! 2\n")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model, line 3"):
        load_tokenizer(tmp_path)
