"""The forward pass against transformers on the same files: tiny random models of several shapes, and real ones."""
from __future__ import annotations

import json

import pytest
import torch

from minillama import Engine
from minillama.loading import load_checkpoint
from minillama.model import build_model
from modelfactory import make_hf_model

SHAPES = {
    "mha-untied": dict(n_heads=4, n_kv_heads=4),
    "gqa-tied": dict(n_heads=4, n_kv_heads=2, tie=True),
    "gqa-8-1": dict(n_heads=8, n_kv_heads=1, dim=64),
    "head_dim-not-dim/heads": dict(n_heads=4, n_kv_heads=2, head_dim=24),
    "llama3-rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                        rope_theta=500000.0),
    "linear-rope": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "dynamic-rope": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_pos=32),
    "mistral": dict(arch="mistral"),
    "qwen2-biases": dict(arch="qwen2", tie=True),
    "llama-attention-bias": dict(attention_bias=True),
}


def weights_only_engine(folder, dtype=torch.float32) -> Engine:
    ckpt = load_checkpoint(folder, dtype=dtype, with_tokenizer=False)
    return Engine(build_model(ckpt.config, ckpt.tensors, dtype=dtype, device=torch.device("cpu")), None)


def reference_logits(folder, ids, dtype=torch.float32) -> torch.Tensor:
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_match_transformers_float32(tmp_path, name):
    folder = make_hf_model(tmp_path, **SHAPES[name])
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    got = weights_only_engine(folder).logits(ids)
    want = reference_logits(folder, ids)
    assert got.dtype == torch.float32 and got.shape == (40, 256)
    assert (got - want).abs().max() <= 1e-4


def test_logits_match_transformers_bfloat16(tmp_path):
    folder = make_hf_model(tmp_path, n_heads=4, n_kv_heads=2)
    ids = list(range(3, 35))
    got = weights_only_engine(folder, torch.bfloat16).logits(ids)
    want = reference_logits(folder, ids, torch.bfloat16)
    ref32 = reference_logits(folder, ids)
    # bf16 keeps ~3 significant digits; both implementations round at slightly different points
    assert (got - want).abs().max() <= 0.1 * ref32.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_paged_decode_matches_transformers_generate(tmp_path):
    import transformers
    folder = make_hf_model(tmp_path, n_heads=4, n_kv_heads=2, vocab_size=300, tokenizer="sentencepiece")
    engine = Engine.from_pretrained(folder, block_size=4)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = [1, 17, 42, 99, 5, 250]
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    want = out[0, len(prompt):].tolist()
    got = engine.generate(prompt, max_new_tokens=40)
    stop = want.index(2) if 2 in want else len(want)     # our engine stops at EOS (id 2)
    assert got.tokens == want[:stop]


def test_stories260k_greedy_equals_golden(stories_dir):
    golden = json.loads((stories_dir.parent / "golden.json").read_text())
    engine = Engine.from_pretrained(stories_dir)
    for case in golden.values():
        want = next(v for k, v in case.items() if k.startswith("greedy_"))
        got = engine.generate(case["prompt_ids"], max_new_tokens=len(want))
        assert got.tokens == want
    top5 = golden["once_upon"]["last_logits_top5"]          # [[id, logit], ...]
    logits = engine.logits(golden["once_upon"]["prompt_ids"])[-1]
    assert logits.topk(5).indices.tolist() == [i for i, _ in top5]
    assert max(abs(float(logits[i]) - v) for i, v in top5) <= 1e-3


def test_smollm2_gguf_logits_match_transformers(smollm2_path):
    """The real GGUF: our dequantized forward vs transformers' Llama on transformers' own reading of the file."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    engine = Engine.from_pretrained(smollm2_path)
    config = transformers.LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                      num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                      tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                                      max_position_embeddings=8192)
    with torch.device("meta"):
        ref = transformers.LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(smollm2_path, return_tensors=True, model_to_load=ref)["tensors"]
    ref = ref.to_empty(device="cpu").eval()       # skip transformers' slow random init of 135M weights
    ref.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    ref.tie_weights()
    ref.model.rotary_emb = type(ref.model.rotary_emb)(config)
    ids = engine.tokenizer.encode("The capital of France is Paris. The capital of Italy is", bos=False)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    got = engine.logits(ids)
    assert (got - want).abs().max() <= 1e-3
    assert engine.generate(ids, max_new_tokens=3).tokens[0] == int(want[-1].argmax())
