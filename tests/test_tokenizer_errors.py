"""Bad tokenizer files: every failure is a TokenizerError that names the file and the problem."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import train_byte_level  # noqa: E402

from minillama.errors import MinillamaError, TokenizerError  # noqa: E402
from minillama.tokenizer import load_tokenizer  # noqa: E402


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="nowhere: not a folder"):
        load_tokenizer(tmp_path / "nowhere")


def test_folder_without_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)


def test_corrupt_sentencepiece_model(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05garbage" * 10)
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a readable SentencePiece model"):
        load_tokenizer(tmp_path)


def test_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not valid JSON"):
        load_tokenizer(tmp_path)


def test_invalid_tokenizer_config(tmp_path: Path) -> None:
    train_byte_level(tmp_path, "gpt2", vocab_size=300)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: expected a JSON object"):
        load_tokenizer(tmp_path)


def test_wordpiece_tokenizer_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(TokenizerError, match="WordPiece tokenizer that is not byte-level BPE"):
        load_tokenizer(tmp_path)


def test_unsupported_pre_tokenizer_is_named(tmp_path: Path) -> None:
    train_byte_level(tmp_path, "gpt2", vocab_size=300)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, spec["pre_tokenizer"]]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="pre-tokenizer 'Whitespace' is not supported"):
        load_tokenizer(tmp_path)


def test_out_of_range_id(tmp_path: Path) -> None:
    train_byte_level(tmp_path, "gpt2", vocab_size=300)
    tok = load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match=r"token id 300 is outside the vocabulary \(0\.\.299\)"):
        tok.decode([5, 300])
    assert issubclass(TokenizerError, MinillamaError)


def test_malformed_tokenizer_json(tmp_path: Path) -> None:
    train_byte_level(tmp_path, "gpt2", vocab_size=300)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["added_tokens"] = [{"content": "<x>"}]  # no id
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: malformed tokenizer\.json \(KeyError"):
        load_tokenizer(tmp_path)
