"""The real SmolLM2-135M-Instruct GGUF (Q4_1 + Q8_0 embedding): config facts, and every tensor equal to what
transformers' own GGUF reader makes of it. Skipped when the file is not on this machine (~25 s when it is)."""
from __future__ import annotations

import pytest
import torch

from minillama.loading import load_checkpoint

# From the model card / config.json of HuggingFaceTB/SmolLM2-135M-Instruct
SMOLLM2 = dict(arch="llama", dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536,
               vocab_size=49152, norm_eps=1e-5, rope_theta=100000.0, rope_scaling=None, max_seq_len=8192,
               tie_embeddings=True, qkv_bias=False, o_bias=False, bos_token_id=1, eos_token_ids=(2,))


def test_smollm2_gguf_matches_transformers_gguf_reader(smollm2_path):
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    ckpt = load_checkpoint(smollm2_path, dtype=torch.float32, with_tokenizer=False)
    for field, value in SMOLLM2.items():
        assert getattr(ckpt.config, field) == value, field
    assert ckpt.metadata["tokenizer.ggml.model"] == "gpt2"
    assert "<|im_start|>" in ckpt.metadata["tokenizer.chat_template"]

    # The skeleton only tells transformers the names and head counts; it is built from the model card, not from us.
    skeleton_config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                  num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                  tie_word_embeddings=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(skeleton_config)
    reference = load_gguf_checkpoint(smollm2_path, return_tensors=True, model_to_load=skeleton)["tensors"]
    assert set(reference) == set(ckpt.tensor_names)
    for name, tensor in ckpt.tensors:
        assert torch.equal(tensor, torch.as_tensor(reference[name])), name
