"""GGUF vocabularies: the real SmolLM2 GGUF (when present) and "gpt2" vocabularies written here, against
`tokenizers` built from the same tokens and merges, and the GGUF's chat template against Jinja."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import (  # noqa: E402
    PROBE_TEXTS, SPECIAL_TEXTS, TRAIN_LINES, gguf_tokenizer_metadata, smollm2_gguf, train_byte_level,
)

from minillama.errors import TokenizerError  # noqa: E402
from minillama.tokenizer import tokenizer_from_gguf  # noqa: E402
from minillama.tokenizer.bpe import ByteLevelBPETokenizer  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": " Hi! \n"},
     {"role": "user", "content": "Tell me a joke.\n\n"}],
]


@pytest.fixture(scope="module")
def smollm2() -> dict[str, Any]:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF not found (weights/ or MINILLAMA_SMOLLM2_GGUF)")
    return gguf_tokenizer_metadata(path)


def _reference_from_vocab(metadata: dict[str, Any], pre_tokenizer: Any) -> Any:
    from tokenizers import decoders, models

    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    reference = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    reference.pre_tokenizer = pre_tokenizer
    reference.decoder = decoders.ByteLevel()
    types = metadata["tokenizer.ggml.token_type"]
    reference.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    return reference


def _smollm_pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])


def test_smollm2_ids_match_tokenizers(smollm2: dict[str, Any]) -> None:
    tok = tokenizer_from_gguf(smollm2)
    assert isinstance(tok, ByteLevelBPETokenizer)
    reference = _reference_from_vocab(smollm2, _smollm_pre_tokenizer())
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.add_bos) == (1, False)
    assert tok.eos_ids[0] == 2 and 0 in tok.eos_ids  # <|im_end|> first, <|endoftext|> too
    text = Path(__file__).read_text() + "\n".join(PROBE_TEXTS + SPECIAL_TEXTS + TRAIN_LINES)
    assert tok.encode(text) == reference.encode(text).ids
    for piece in PROBE_TEXTS + SPECIAL_TEXTS:
        ids = reference.encode(piece).ids
        assert tok.encode(piece) == ids, piece
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=False) == piece


def test_smollm2_chat_template_matches_jinja(smollm2: dict[str, Any]) -> None:
    transformers = pytest.importorskip("transformers")
    tok = tokenizer_from_gguf(smollm2)
    source = smollm2["tokenizer.chat_template"]
    assert tok.chat_template.name == "chatml"
    assert tok.chat_template.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_reference_from_vocab(smollm2, _smollm_pre_tokenizer()),
        bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    for messages in CONVERSATIONS:
        for add in (True, False):
            expected = hf.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=add)
            assert tok.chat_template.render(messages, add_generation_prompt=add) == expected
            prompt_ids = tok.encode(tok.chat_template.render(messages, add), bos=False)
            assert prompt_ids == hf.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize(("pre", "variant"), [("qwen2", "qwen2"), ("llama-bpe", "llama3"), ("gpt-2", "gpt2"),
                                               ("smollm", "smollm")])
def test_gguf_pre_tokenizer_names(pre: str, variant: str, tmp_path: Path) -> None:
    """A GGUF "gpt2" vocabulary written from a tokenizer trained here, for each llama.cpp pre-tokenizer name."""
    reference = train_byte_level(tmp_path, variant)
    spec = json.loads(reference.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    specials = {t["id"] for t in spec["added_tokens"]}
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if i in specials else 1 for i in range(len(tokens))],
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]],
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    tok = tokenizer_from_gguf(metadata)
    # llama.cpp does not run Qwen2's NFC normalizer either; the probe texts are NFC already
    for text in PROBE_TEXTS + [line[::-1] for line in TRAIN_LINES]:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, bos=False) == expected, text


def test_unknown_gguf_tokenizer_model_is_refused() -> None:
    with pytest.raises(TokenizerError, match="'bert'.*gpt2"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}, source="x.gguf")


def test_unknown_gguf_pre_tokenizer_is_refused() -> None:
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "martian", "tokenizer.ggml.tokens": ["a"],
                "tokenizer.ggml.merges": []}
    with pytest.raises(TokenizerError, match="martian"):
        tokenizer_from_gguf(metadata)


def test_gguf_without_tokenizer_is_refused() -> None:
    with pytest.raises(TokenizerError, match="model.gguf: no tokenizer"):
        tokenizer_from_gguf({"general.architecture": "llama"}, source="model.gguf")


def test_malformed_gguf_metadata_is_named() -> None:
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": [3]}
    with pytest.raises(TokenizerError, match="m.gguf: malformed tokenizer metadata"):
        tokenizer_from_gguf(metadata, source="m.gguf")
