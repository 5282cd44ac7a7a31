"""Int8 weights (minillama.quant): the quantized Linear against float, the int8 engine against float32 on
stories260K, everything the engine does still working on int8 weights, loading a Q8_0 GGUF without a float copy,
and the errors."""
from __future__ import annotations

import gc
import types
import weakref

import pytest
import torch
import torch.nn as nn

from minillama import Drugs, Engine
from minillama.loading import load_checkpoint
from minillama.model import build_model
from minillama.quant import (QUANT_SCHEMES, QuantEmbedding, QuantizationError, QuantLinear, Rotation,
                             check_quant, float_nbytes, quantize_model_, quantized_nbytes)

PROMPT = "Once upon a time"
# Tolerances, measured with margin (docs/quant/RESULTS.md): activations are quantized per call to 7 bits, so a
# random Linear's output is off by ~1% of its norm; stories260K (dim 64) logits by at most 1.47 on this prompt
# (3.26 at worst over the 512-token passage) in a ±20 range.
LINEAR_REL_TOL = 0.03
STORIES_LOGIT_TOL = 2.5


@pytest.fixture(scope="module")
def float_engine(stories_dir) -> Engine:
    return Engine.from_pretrained(stories_dir, block_size=8)


@pytest.fixture(scope="module")
def int8_engine(stories_dir) -> Engine:
    engine = Engine.from_pretrained(stories_dir, block_size=8)
    quantize_model_(engine.model, "int8")
    return engine


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("in_f,out_f,bias", [(64, 96, False), (576, 960, True), (256, 1000, False)])
@pytest.mark.parametrize("shape", ["decode_batch", "prefill"])
def test_quant_linear_matches_float_linear(in_f, out_f, bias, shape):
    torch.manual_seed(in_f + out_f)
    linear = nn.Linear(in_f, out_f, bias=bias).requires_grad_(False)
    nn.init.normal_(linear.weight, std=0.05)
    if bias:
        nn.init.normal_(linear.bias, std=0.1)
    q = QuantLinear.from_float(linear.weight, linear.bias)
    x = torch.randn(3, 1, in_f) if shape == "decode_batch" else torch.randn(1, 17, in_f)
    y, yq = linear(x), q(x)
    assert yq.shape == y.shape and yq.dtype == torch.float32
    assert relative_error(yq, y) < LINEAR_REL_TOL
    # the weight it holds is the per-channel int8 rounding of the rotated float one W R^T: off by half a step there
    rotated = q.rotation(linear.weight)
    step = rotated.abs().amax(1, keepdim=True) / 127
    assert ((q.rotation(q.dequantize()) - rotated).abs() <= step / 2 + 1e-6).all()
    assert relative_error(q.dequantize(), linear.weight) < 0.01


@pytest.mark.parametrize("n", [64, 576, 1536, 2048, 96, 100])
def test_rotation_is_orthogonal_and_spreads_an_outlier(n):
    rotation = Rotation.for_size(n)
    x = torch.randn(3, n, dtype=torch.float32)
    assert torch.allclose(rotation.inverse(rotation(x)), x, atol=1e-5)
    assert torch.allclose(rotation(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    spike = torch.zeros(n)
    spike[n // 3] = 1.0
    # one channel's energy ends spread evenly over its block of 64 (or the largest power of two dividing n)
    spread = rotation(spike).abs()
    assert torch.allclose(spread[spread > 0], torch.full_like(spread[spread > 0], rotation.block ** -0.5))
    assert (spread > 0).sum() == rotation.block == (64 if n % 64 == 0 else 32 if n == 96 else 4)


def test_outlier_channels_survive_activation_quantization():
    """The SmolLM2 failure mode: a few channels ~50x the rest. Per-tensor 7-bit steps sized for them would round
    the others away; rotated first, a token's error stays near a random Linear's."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 256, bias=False).requires_grad_(False)
    nn.init.normal_(linear.weight, std=0.05)
    x = torch.randn(2, 9, 576)
    x[..., [7, 300]] *= 50.0                 # outlier channels, in every token
    x[0, 0] *= 20.0                          # and one token (think BOS) far larger than the others
    q = QuantLinear.from_float(linear.weight)
    small = linear.weight[:, [i for i in range(576) if i not in (7, 300)]]
    # the error compared with what the ordinary channels contribute, the part outliers used to drown
    ordinary = x[..., [i for i in range(576) if i not in (7, 300)]] @ small.T
    assert ((q(x) - linear(x)).norm() / ordinary.norm()).item() < 0.1


def test_quant_linear_keeps_half_precision_activations():
    linear = nn.Linear(64, 32, bias=True).requires_grad_(False)
    q = QuantLinear.from_float(linear.weight, linear.bias)
    x = torch.randn(2, 5, 64)
    y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert relative_error(y, linear(x)) < LINEAR_REL_TOL + 0.01


def test_int8_model_holds_no_float_linear_weights(int8_engine):
    model = int8_engine.model
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 4 * model.config.n_layers + 1      # wqkv, wo, w_gate_up, w_down per layer + the head
    assert all(m.filled for m in linears)
    cfg = model.config
    assert float_nbytes(model) == 4 * (2 * cfg.n_layers + 1) * cfg.dim           # the norms
    assert isinstance(model.embed, QuantEmbedding) and model.embed.q.dtype == torch.int8
    float32_weights = 4 * (sum(m.in_features * m.out_features for m in linears) + cfg.vocab_size * cfg.dim)
    assert quantized_nbytes(model) < 0.3 * float32_weights


def test_int8_logits_close_to_float32(float_engine, int8_engine):
    ids = float_engine.tokenizer.encode(PROMPT + " there was a little girl named Lily. She loved to play", bos=True)
    reference, quantized = float_engine.logits(ids), int8_engine.logits(ids)
    assert (quantized - reference).abs().max().item() < STORIES_LOGIT_TOL
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.9


def test_int8_greedy_equals_float32_greedy_for_32_tokens(float_engine, int8_engine):
    reference = float_engine.generate(PROMPT, max_new_tokens=32).tokens
    assert int8_engine.generate(PROMPT, max_new_tokens=32).tokens == reference


def test_everything_runs_on_int8_weights(int8_engine):
    """Noise on every site, an adaptive sampler (capture + lookahead on cache forks), n=2, records, repeatability."""
    from minillama.sampling.entropy import EntropySampler

    drugs = Drugs(dose_theta=0.4, sites=("H", "Q", "pK", "K", "V", "A"))
    runs = [int8_engine.generate(PROMPT, max_new_tokens=24, drugs=drugs, seed=7, n=2, records=True,
                                 sampler=EntropySampler(tokenizer=int8_engine.tokenizer)) for _ in range(2)]
    assert [c.tokens for c in runs[0].choices] == [c.tokens for c in runs[1].choices]
    assert all(len(c.tokens) > 0 and c.records for c in runs[0].choices)
    assert int8_engine.cache.manager.used_blocks == 0


def test_context_shift_on_int8_weights(stories_dir):
    engine = Engine.from_pretrained(stories_dir, context_length=32, context_shift=True, block_size=8)
    quantize_model_(engine.model, "int8")
    out = engine.generate(PROMPT, max_new_tokens=80)
    assert len(out.tokens) == 80 and out.finish_reason == "length"


def test_unknown_quant_names_the_known_ones():
    with pytest.raises(QuantizationError, match="int8") as err:
        check_quant("int3")
    assert "'int3'" in str(err.value)
    assert QUANT_SCHEMES == ("int8",)


def test_quant_refuses_a_gpu_device():
    with pytest.raises(QuantizationError, match="CPU only"):
        check_quant("int8", "cuda")


def test_platform_without_int8_engine_names_the_fallback(monkeypatch):
    monkeypatch.setattr(torch.backends, "quantized", types.SimpleNamespace(supported_engines=["none"],
                                                                          engine="none"))
    with pytest.raises(QuantizationError, match="no int8 CPU engine.*without quant"):
        check_quant("int8")


def test_nan_weight_is_refused_naming_it():
    w = torch.randn(8, 32)
    w[3, 5] = float("nan")
    with pytest.raises(QuantizationError, match="layers.0.mlp.w_down"):
        QuantLinear.from_float(w, name="layers.0.mlp.w_down")


# ---- loading straight into int8 --------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype,tie", [("Q8_0", False), ("Q4_0", True)])
def test_gguf_loads_into_int8_without_a_float_copy(tmp_path, qtype, tie):
    from modelfactory import make_gguf_model

    path = make_gguf_model(tmp_path, qtype=qtype, tie=tie, dim=64, n_layers=2, ffn_dim=128, vocab_size=256)
    ckpt = load_checkpoint(path, dtype=torch.float32, with_tokenizer=False)
    alive: list[weakref.ref] = []
    linear_float_bytes = 0

    def watched():
        nonlocal linear_float_bytes
        for name, tensor in ckpt.tensors:
            if tensor.ndim == 2:      # every Linear and the embedding
                alive.append(weakref.ref(tensor))
                linear_float_bytes += tensor.numel() * tensor.element_size()
            yield name, tensor

    model = build_model(ckpt.config, watched(), dtype=torch.float32, device=torch.device("cpu"), quant="int8")
    gc.collect()
    assert alive and not any(ref() is not None for ref in alive)   # no float matrix outlived its copy
    cfg = model.config
    assert float_nbytes(model) == 4 * (2 * cfg.n_layers + 1) * cfg.dim          # only the norms stay float
    # a tied model holds the matrix twice (lookup rows and the packed head), still well under float32's bytes
    assert quantized_nbytes(model) < 0.3 * linear_float_bytes + (0.3 * 4 * cfg.vocab_size * cfg.dim if tie else 0)
    assert all(m.filled for m in model.modules() if isinstance(m, QuantLinear))
    assert isinstance(model.lm_head, QuantLinear)

    reference = Engine(build_model(cfg, load_checkpoint(path, dtype=torch.float32, with_tokenizer=False).tensors,
                                   dtype=torch.float32, device=torch.device("cpu")), tokenizer=None)
    quantized = Engine(model, tokenizer=None)
    ids = list(range(1, 20))
    assert relative_error(quantized.logits(ids), reference.logits(ids)) < 0.05


def test_engine_from_pretrained_int8_matches_post_hoc_quantization(stories_dir, int8_engine):
    engine = Engine.from_pretrained(stories_dir, quant="int8", block_size=8)
    ids = engine.tokenizer.encode(PROMPT, bos=True)
    assert torch.equal(engine.logits(ids), int8_engine.logits(ids))
    with pytest.raises(QuantizationError, match="known: int8"):
        Engine.from_pretrained(stories_dir, quant="q4")


def test_quantize_in_chunks_equals_whole_and_leaves_the_input_alone(monkeypatch):
    import minillama.quant as quant

    weight = torch.randn(10, 64)
    kept = weight.clone()
    whole = quant.quantize_int8(weight, rotation=Rotation.for_size(64))
    monkeypatch.setattr(quant, "_CHUNK_BYTES", 3 * 4 * 64)    # three rows at a time
    chunked = quant.quantize_int8(weight, rotation=Rotation.for_size(64))
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert torch.equal(weight, kept)
