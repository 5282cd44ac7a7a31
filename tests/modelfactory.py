"""Tiny random checkpoints for tests: Hugging Face folders (via transformers) and GGUF files (via gguf.GGUFWriter).

    from modelfactory import make_hf_model, make_gguf_model, hf_state_dict
    folder = make_hf_model(tmp_path, arch="qwen2", tie=True, tokenizer="sentencepiece")
    gguf_file = make_gguf_model(tmp_path, qtype="Q8_0", tokenizer="bpe")      # builds its own HF twin
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)       # the oracle

Everything is seeded and offline. `make_gguf_model` writes what llama.cpp's convert_hf_to_gguf.py would write for
the same weights (llama-family q/k rows permuted, norms in F32, llama3 rope as rope_freqs.weight), so a GGUF and
the HF folder it came from describe the same model.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STORIES_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/models/stories260K/tok512.model"

_WORDS = ("the a cat dog sat on mat and ran to house little girl boy happy sad sun moon tree big small "
          "once upon time there was who liked play with ball park friend said hello good day night star "
          "blue red green fish bird sky water jump over under they we you it is are not very").split()


def _corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_sentences):
        words = rng.choice(_WORDS, size=int(rng.integers(4, 12)))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ", 42.", " (ok)"]))
    return lines


def make_hf_model(tmp_path: Path, *, arch: str = "llama", dim: int = 64, n_layers: int = 2, n_heads: int = 4,
                  n_kv_heads: int = 2, head_dim: int | None = None, ffn_dim: int = 128, vocab_size: int = 256,
                  tie: bool = False, rope_scaling: dict[str, Any] | None = None, rope_theta: float = 10000.0,
                  max_pos: int = 256, attention_bias: bool = False, seed: int = 0, tokenizer: str | None = None,
                  max_shard_size: str | None = None, name: str = "model") -> Path:
    """Save a random transformers model as `tmp_path/name` (config.json + safetensors) and return the folder.

    arch: "llama", "mistral" or "qwen2". max_shard_size (e.g. "20KB") shards the weights with an index file.
    tokenizer: None, "sentencepiece" (a sentencepiece model trained here with `vocab_size` pieces, saved as
    tokenizer.model), "bpe" (a byte-level BPE trained with `tokenizers`, saved as tokenizer.json) or "tok512"
    (stories260K's tok512.model copied as tokenizer.model; needs vocab_size=512 and the shared models folder).
    """
    import transformers

    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}
    config_cls, model_cls = classes[arch]
    kwargs: dict[str, Any] = dict(
        hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        intermediate_size=ffn_dim, vocab_size=vocab_size, max_position_embeddings=max_pos, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, bos_token_id=0 if tokenizer == "bpe" else 1, eos_token_id=2)
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    if attention_bias:
        kwargs["attention_bias"] = True
    kwargs["rope_parameters"] = {"rope_type": "default", **(rope_scaling or {}), "rope_theta": rope_theta}
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers initialises norms to 1 and biases to 0: randomise them so tests can see them
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p) if pname.endswith("norm.weight") else 0.1 * torch.randn_like(p))
    folder = Path(tmp_path) / name
    save_kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size:
        save_kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(folder, **save_kwargs)
    if tokenizer == "sentencepiece":
        train_sentencepiece(folder / "tokenizer.model", vocab_size)
    elif tokenizer == "bpe":
        train_bpe(vocab_size).save(str(folder / "tokenizer.json"))
    elif tokenizer == "tok512":
        if vocab_size != 512 or not STORIES_TOKENIZER.is_file():
            raise ValueError(f"tokenizer='tok512' needs vocab_size=512 and {STORIES_TOKENIZER}")
        shutil.copy(STORIES_TOKENIZER, folder / "tokenizer.model")
    elif tokenizer is not None:
        raise ValueError(f"tokenizer must be None, 'sentencepiece', 'bpe' or 'tok512', not {tokenizer!r}")
    return folder


def hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor saved in an HF folder (single file or shards), read with safetensors directly."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def train_sentencepiece(path: Path, vocab_size: int) -> Path:
    """A tiny Llama-2-style sentencepiece BPE (unk=0, bos=1, eos=2) with exactly `vocab_size` pieces."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=vocab_size >= 384, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    Path(path).write_bytes(model.getvalue())
    return Path(path)


def train_bpe(vocab_size: int) -> Any:
    """A tiny GPT-2/Llama-3-style byte-level BPE `tokenizers.Tokenizer` (specials <|endoftext|>=0,
    <|im_start|>=1, <|im_end|>=2), exactly `vocab_size` tokens; needs vocab_size >= 259."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 259:
        raise ValueError("a byte-level BPE needs vocab_size >= 259 (256 bytes + 3 specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:  # the corpus ran out of merges; pad with unused tokens
        tok.add_tokens([f"<|unused{i}|>" for i in range(vocab_size - tok.get_vocab_size())])
    return tok


CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                   "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def make_gguf_model(tmp_path: Path, *, qtype: str = "F32", tokenizer: str | None = None,
                    hf_dir: Path | None = None, name: str = "model.gguf", gguf_arch: str | None = None,
                    extra_metadata: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
                    **hf_kwargs: Any) -> Path:
    """Write a GGUF file the way convert_hf_to_gguf.py would, from `hf_dir` or from a fresh
    make_hf_model(tmp_path, name="hf", **hf_kwargs) (returned file sits next to it as `tmp_path/name`).

    qtype: "F32", "F16", "BF16", "Q8_0", "Q4_0"... for the 2-D weights (norms and biases stay F32, as in llama.cpp;
    quantized row lengths must be multiples of the block size, 32). tokenizer: None, "bpe" (gpt2-style token list,
    merges and a ChatML template) or "sentencepiece" (llama-style tokens, scores and types). gguf_arch overrides
    the architecture string (to test refusals); extra_metadata adds keys; drop omits GGUF tensors by name.
    """
    import gguf

    if hf_dir is None:
        hf_dir = make_hf_model(tmp_path, name="hf", tokenizer=None, **hf_kwargs)
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
            "Qwen2ForCausalLM": "qwen2"}[cfg["architectures"][0]]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    rope = cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))

    path = Path(tmp_path) / name
    writer = gguf.GGUFWriter(path, gguf_arch or arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope_type not in ("default", "llama3"):
        writer.add_string(f"{gguf_arch or arch}.rope.scaling.type", rope_type)
        writer.add_rope_scaling_factor(rope.get("factor", 1.0))
    if tokenizer is not None:
        _add_gguf_tokenizer(writer, tokenizer, cfg["vocab_size"])
    for key, value in (extra_metadata or {}).items():
        _add_value(writer, key, value)

    tensors = [(n, t) for n, t in _gguf_tensors(hf_state_dict(hf_dir), arch, cfg, n_heads, n_kv) if n not in drop]
    if rope_type == "llama3":
        tensors.append(("rope_freqs.weight", llama3_rope_freqs(rope, theta, head_dim)))
    for gguf_name, tensor in tensors:
        array = tensor.float().numpy()
        if array.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_tensors(sd: dict[str, torch.Tensor], arch: str, cfg: dict[str, Any], n_heads: int,
                  n_kv: int) -> list[tuple[str, torch.Tensor]]:
    from minillama.loading.gguf import permute_rope_rows

    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    layer_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                   "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in layer_names.items():
            for kind in ("weight", "bias"):
                t = sd.get(f"model.layers.{i}.{hf}.{kind}")
                if t is None:
                    continue
                if arch == "llama" and gg in ("attn_q", "attn_k"):  # what convert_hf_to_gguf.py does
                    t = permute_rope_rows(t, n_heads if gg == "attn_q" else n_kv)
                out.append((f"blk.{i}.{gg}.{kind}", t))
    out.append(("output_norm.weight", sd["model.norm.weight"]))
    if not cfg.get("tie_word_embeddings") and "lm_head.weight" in sd:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def llama3_rope_freqs(rope: dict[str, Any], theta: float, head_dim: int) -> torch.Tensor:
    """The per-frequency divisors convert_hf_to_gguf.py stores as rope_freqs.weight for llama3 rope scaling."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    divisors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < original / high:
            divisors.append(1.0)
        elif wavelen > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(divisors, dtype=torch.float32)


def _add_gguf_tokenizer(writer: Any, kind: str, vocab_size: int) -> None:
    import gguf

    if kind == "bpe":
        tok = train_bpe(vocab_size)
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"] | {t["content"]: t["id"] for t in data["added_tokens"]}
        tokens = sorted(vocab, key=vocab.get)
        specials = {t["content"] for t in data["added_tokens"]}
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHATML_TEMPLATE)
    elif kind == "sentencepiece":
        import sentencepiece as spm
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sp = spm.SentencePieceProcessor(model_file=str(train_sentencepiece(Path(tmp) / "t.model", vocab_size)))
        tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        types = [gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                 else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.NORMAL for i in range(len(tokens))]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([sp.get_score(i) for i in range(len(tokens))])
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
    else:
        raise ValueError(f"tokenizer must be None, 'bpe' or 'sentencepiece', not {kind!r}")


def _add_value(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))
