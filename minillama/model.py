"""The Llama-family decoder, written to read like the math, with its noise sites and attention capture built in.

    x = embed(tokens)
    for each layer:
        h = rmsnorm(x)                         -- site H (the normed input to Q/K/V; never the residual x)
        q, k, v = h @ Wqkv (+ bias on Qwen2)   -- site Q on q, site pK on keys, both before RoPE
        q, k = rope(q), rope(k)                -- site K on keys after RoPE
        cache[slots] = k, v                    -- the cache always keeps what the model computed
        a = softmax(q K^T / sqrt(d)) V         -- K/pK/V noise: a fresh draw over the whole context, per step,
                                               -- never written to the cache (a single new token's K/pK noise
                                               -- is drawn straight onto its scores: NoisePlan.perturb_scores)
                                               -- site A on each head's output a
        x = x + a @ Wo
        x = x + (silu(rmsnorm(x) @ Wg) * (rmsnorm(x) @ Wu)) @ Wd
    logits = rmsnorm(x) @ Wlm                  (float32, last position only unless asked)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import PagedKVCache
from .capture import CapturedAttention
from .config import ModelConfig
from .rope import Rotary, apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self._eps_tensor: torch.Tensor | None = None

    def _eps_on(self, device: torch.device) -> torch.Tensor:
        if self._eps_tensor is None or self._eps_tensor.device != device:
            self._eps_tensor = torch.full((1,), self.eps, device=device)
        return self._eps_tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # x / sqrt(|x|²/D + eps) in 5 dispatcher calls, where F.rms_norm (decomposed on CPU, mean included)
            # makes 24, 61 times per token. eps is a tensor: an op with a Python float argument copies it to one
            # first, 3 more calls each time.
            r = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            return x * torch.addcmul(self._eps_on(x.device), r, r, value=1.0 / x.shape[-1]).rsqrt_() * self.weight
        # Half precision: normalise in float32 and round before the weight, as the reference does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass
class ForwardBatch:
    """Where one forward pass reads and writes the cache. B sequences, T new tokens each (same T for all).

    write_slots: [B*T] cache slots of the new tokens.
    positions:   [B, T] RoPE positions of the new tokens (= their index in the cached sequence).
    Reading the context (length L_b = cached + T per sequence) is either a contiguous slot range (`contig_start`,
    one sequence) or a gather through `read_slots` [B, Lmax] with `valid` [B, Lmax] marking real entries.
    """
    cache: PagedKVCache
    write_slots: torch.Tensor
    positions: torch.Tensor
    lengths: list[int]
    contig_start: int | None = None
    write_slot: int | None = None                  # the slot, when there is exactly one new token
    read_slots: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    _key_positions: torch.Tensor | None = None
    _key_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def key_positions(self) -> torch.Tensor:
        """[B, Lmax] position of each context entry, -1 for padding (what noise uses for sink protection).
        Built once per forward: the noise plan works out a positions tensor's layout once and reuses it."""
        if self._key_positions is None:
            pos = torch.arange(self.max_len, device=self.positions.device).expand(len(self.lengths), -1)
            self._key_positions = pos if self.valid is None else pos.masked_fill(~self.valid, -1)
        return self._key_positions

    def key_cos_sin(self, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's float32 cos/signed sin at each context entry (padding at 0), for pK noise (whose math is float32);
        built once per forward."""
        if self._key_cos_sin is None:
            self._key_cos_sin = rotary.cos_sin(self.key_positions().clamp_min(0), torch.float32, signed=True)
        return self._key_cos_sin


@dataclass
class ModelOutput:
    logits: torch.Tensor                       # [B, vocab] (last position) or [B, T, vocab], float32
    hidden: torch.Tensor                       # [B, dim] final normed hidden state of the last position
    attention: list[CapturedAttention] | None  # one per sequence when capture was asked


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.wqkv = nn.Linear(config.dim, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.wo = nn.Linear(self.q_size, config.dim, bias=config.o_bias)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, h: torch.Tensor, batch: ForwardBatch, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                noise, capture: bool) -> tuple[torch.Tensor, dict | None]:
        B, T, _ = h.shape
        layer = self.layer_idx
        if noise is not None and noise.theta("H", layer):
            h = noise.apply("H", layer, h.unsqueeze(2), batch.positions).squeeze(2)
        qkv = self.wqkv(h)
        # q and k heads side by side, so one RoPE covers both
        qk = qkv[..., :self.q_size + self.kv_size].view(B, T, self.n_heads + self.n_kv, self.head_dim)
        v = qkv[..., self.q_size + self.kv_size:].view(B, T, self.n_kv, self.head_dim)
        if noise is not None and noise.theta("Q", layer):
            qk[:, :, :self.n_heads] = noise.apply("Q", layer, qk[:, :, :self.n_heads], batch.positions)  # qkv is ours
        qk = apply_rope(qk, cos, sin)
        q, k = qk[:, :, :self.n_heads], qk[:, :, self.n_heads:]

        kc, vc = batch.cache.k[layer], batch.cache.v[layer]           # [kv_heads, slots, d]
        if batch.write_slot is not None:                                # one new token: a plain copy
            kc[:, batch.write_slot] = k[0, 0]
            vc[:, batch.write_slot] = v[0, 0]
        else:
            kc[:, batch.write_slots] = k.reshape(B * T, self.n_kv, self.head_dim).transpose(0, 1)
            vc[:, batch.write_slots] = v.reshape(B * T, self.n_kv, self.head_dim).transpose(0, 1)
        keys, values = self._read_context(batch)                       # [B, kv_heads, L, d]
        # one new token's key noise is drawn onto its scores (exactly the same distribution, far fewer draws)
        noisy_scores = noise is not None and T == 1 and noise.perturbs_scores(layer, self.head_dim,
                                                                              self.n_heads // self.n_kv)
        if noise is not None:
            sites = ("V",) if noisy_scores else ("pK", "K", "V")
            keys, values = self._perturb_context(keys, values, batch, rotary, noise, sites)

        q = q.transpose(1, 2)                                          # [B, heads, T, d]
        if noisy_scores:
            out, captured = self._attend_with_noisy_scores(q, keys, values, batch, noise, capture)
        else:
            out = self._attend(q, keys, values, batch, T)              # [B, heads, T, d]
            captured = self._capture(q[:, :, -1], keys, batch) if capture else None
        out = out.transpose(1, 2)                                      # [B, T, heads, d]
        if noise is not None and noise.theta("A", layer):
            out = noise.apply("A", layer, out, batch.positions)
        return self.wo(out.reshape(B, T, self.q_size)), captured

    def _read_context(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = batch.cache.k[self.layer_idx], batch.cache.v[self.layer_idx]
        if batch.contig_start is not None:
            s, L = batch.contig_start, batch.lengths[0]
            return kc[:, s:s + L].unsqueeze(0), vc[:, s:s + L].unsqueeze(0)
        B, L = batch.read_slots.shape
        idx = batch.read_slots.reshape(-1)
        keys = kc[:, idx].view(self.n_kv, B, L, self.head_dim).transpose(0, 1)
        values = vc[:, idx].view(self.n_kv, B, L, self.head_dim).transpose(0, 1)
        return keys, values

    def _perturb_context(self, keys, values, batch, rotary: Rotary, noise, sites: tuple[str, ...]):
        """K/pK/V noise: a fresh draw over the whole context, on a copy; the cache keeps the clean values."""
        layer = self.layer_idx
        positions = None
        for site in sites:
            if not noise.theta(site, layer):
                continue
            if positions is None:
                positions = batch.key_positions()
            if site == "V":
                values = noise.apply("V", layer, values.transpose(1, 2), positions).transpose(1, 2)
                continue
            x = keys.transpose(1, 2)                                   # [B, L, kv_heads, d]
            if site == "pK":
                # The noise direction lives in pre-RoPE space. Rotations commute with RoPE (an orthogonal map R):
                # R·perturb(R⁻¹k, g) = perturb(k, R·g), so rotating the drawn direction once replaces undoing and
                # redoing RoPE on the keys.
                cos, sin = batch.key_cos_sin(rotary)
                x = noise.apply("pK", layer, x, positions, direction_map=lambda g: apply_rope(g, cos, sin))
            else:
                x = noise.apply("K", layer, x, positions)
            keys = x.transpose(1, 2)
        return keys, values

    def _attend(self, q, keys, values, batch: ForwardBatch, T: int) -> torch.Tensor:
        B = q.shape[0]
        groups = self.n_heads // self.n_kv
        if T == 1:
            # One new token sees its whole context: fold the query heads of each kv head into the "time" axis, so
            # grouped-query attention needs no copy of K/V.
            qg = q.reshape(B, self.n_kv, groups, self.head_dim)
            mask = None if batch.valid is None else batch.valid[:, None, None, :]
            out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=self.scale)
            return out.reshape(B, self.n_heads, 1, self.head_dim)
        L = batch.max_len
        if L == T and batch.valid is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=self.scale,
                                                  enable_gqa=groups > 1)
        # T new tokens after a cached prefix: query t (at position L-T+t) sees keys 0..L-T+t
        qpos = batch.positions[:, :, None]                             # [B, T, 1]
        kpos = torch.arange(L, device=q.device)[None, None, :]
        mask = kpos <= qpos
        if batch.valid is not None:
            mask = mask & batch.valid[:, None, :]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], scale=self.scale,
                                              enable_gqa=groups > 1)

    def _attend_with_noisy_scores(self, q, keys, values, batch: ForwardBatch, noise,
                                  capture: bool) -> tuple[torch.Tensor, dict | None]:
        """One new token whose keys carry pK/K noise: the noise lands on its float32 scores
        (NoisePlan.perturb_scores), so the attention is written out as scores, softmax, weighted sum."""
        B, groups = q.shape[0], self.n_heads // self.n_kv
        qg = q.reshape(B, self.n_kv, groups, self.head_dim)
        keys = keys.float()                                                           # converted once, used twice
        scores = torch.matmul(qg.float(), keys.transpose(-1, -2))                   # [B, kv, groups, L]
        scores = noise.perturb_scores(self.layer_idx, qg, keys, scores, batch.key_positions()).mul_(self.scale)
        if batch.valid is not None:
            scores.masked_fill_(~batch.valid[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs.to(values.dtype), values).reshape(B, self.n_heads, 1, self.head_dim)
        return out, self._rows(scores.reshape(B, self.n_heads, -1), batch) if capture else None

    def _capture(self, q_last: torch.Tensor, keys: torch.Tensor, batch: ForwardBatch) -> dict:
        """Scaled scores and softmax of the newest query row over each sequence's valid context."""
        B = q_last.shape[0]
        groups = self.n_heads // self.n_kv
        qg = q_last.float().reshape(B, self.n_kv, groups, self.head_dim)
        scores = torch.matmul(qg, keys.float().transpose(-1, -2)) * self.scale   # [B, kv, groups, L]
        return self._rows(scores.reshape(B, self.n_heads, -1), batch)

    @staticmethod
    def _rows(scores: torch.Tensor, batch: ForwardBatch) -> dict:
        """Per sequence: its [heads, length] scaled scores and their softmax."""
        rows = []
        for b, length in enumerate(batch.lengths):
            s = scores[b, :, :length]
            rows.append((s, torch.softmax(s, dim=-1)))
        return {"rows": rows}


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ffn_dim = config.ffn_dim
        self.w_gate_up = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)
        self.w_down = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).split(self.ffn_dim, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # an empty _weight skips nn.Embedding's random init: build_model loads every weight anyway, and normal_ on
        # the meta device imports torch._dynamo (2 s and 70 MiB of a load)
        self.embed = nn.Embedding(config.vocab_size, config.dim, _weight=torch.empty(config.vocab_size, config.dim))
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rotary: Rotary | None = None
        self.requires_grad_(False)

    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, tokens: torch.Tensor, batch: ForwardBatch, *, noise=None, capture: frozenset[int] = frozenset(),
                all_logits: bool = False) -> ModelOutput:
        x = self.embed(tokens)
        cos, sin = self.rotary.cos_sin(batch.positions, x.dtype, signed=True)
        captured: dict[int, dict] = {}
        for i, block in enumerate(self.layers):
            attn_out, rows = block.attn(block.attn_norm(x), batch, self.rotary, cos, sin, noise, i in capture)
            if rows is not None:
                captured[i] = rows
            x += attn_out
            x += block.mlp(block.mlp_norm(x))
        if not all_logits:
            x = x[:, -1]
        h = self.norm(x)
        logits = (self.lm_head(h) if self.lm_head is not None else F.linear(h, self.embed.weight)).float()
        hidden = h if not all_logits else h[:, -1]
        attention = None
        if capture:
            attention = [CapturedAttention(probs={l: captured[l]["rows"][b][1] for l in captured},
                                           scores={l: captured[l]["rows"][b][0] for l in captured})
                         for b in range(tokens.shape[0])]
        return ModelOutput(logits=logits, hidden=hidden, attention=attention)


# ---- assembling a model from Hugging Face-named tensors ------------------------------------------------------------
_FUSED = {"q_proj": ("wqkv", 0), "k_proj": ("wqkv", 1), "v_proj": ("wqkv", 2),
          "gate_proj": ("w_gate_up", 0), "up_proj": ("w_gate_up", 1)}


def build_model(config: ModelConfig, tensors, *, dtype: torch.dtype, device: torch.device,
                quant: str | None = None) -> Transformer:
    """Create the model without initialising it, then fill it from (hf_name, tensor) pairs as they stream in.
    q/k/v and gate/up go straight into their rows of the fused weight, so nothing is held twice (int8 fuses a
    layer's pieces before quantizing them, holding those pieces until the last one comes).
    quant="int8": every Linear is quantized as its float weight is copied in (minillama.quant), so loading never
    holds more than one fused weight in float; a tied model also gets a quantized copy of the embedding as head."""
    with torch.device("meta"):
        model = Transformer(config)
    if quant is not None:
        from .quant import quantize_linears_
        quantize_linears_(model, quant)
    # the dtype is set on the meta device, so each weight is allocated once, in that dtype, and stays untouched (not
    # resident) until its tensor is copied in: no whole-model conversion pass, no pages faulted in twice
    model = model.to(dtype)
    _allocate_(model, device)
    model.rotary = Rotary(config, device)
    filled: set[str] = set()
    pending: dict[tuple[int, str, str], dict[int, torch.Tensor | None]] = {}
    for name, tensor in tensors:
        if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and model.lm_head is None):
            continue  # derived buffers, and tied heads that some checkpoints store anyway
        try:
            target, piece = _target(model, name)
        except (KeyError, IndexError, ValueError):
            from .errors import ModelLoadError
            raise ModelLoadError(f"unexpected tensor {name!r} for a {config.arch} model with "
                                 f"{config.n_layers} layers") from None
        if piece is None:
            _check_shape(name, target, tensor)
            target.copy_(tensor)
            filled.add(name)
            continue
        layer, fused, kind, index = piece
        parts = pending.setdefault((layer, fused, kind), {})
        if isinstance(target, torch.Tensor):
            # straight into its rows of the fused weight: no concatenated copy, nothing held for the other parts
            rows = target.narrow(0, *_fused_rows(config, fused, index))
            _check_shape(name, rows, tensor)
            rows.copy_(tensor)
            parts[index] = None
        else:
            parts[index] = tensor  # a quantized Linear's weight is quantized whole, once every part has come
        if len(parts) == (3 if fused == "wqkv" else 2):
            if not isinstance(target, torch.Tensor):
                whole = torch.cat([parts[i] for i in sorted(parts)], dim=0)
                _check_shape(name, target, whole)
                target.copy_(whole)
            filled.add(f"{layer}.{fused}.{kind}")
            del pending[(layer, fused, kind)]
    _check_complete(model, filled, pending)
    if quant is not None:
        from .quant import quantize_tied_head_
        quantize_tied_head_(model)
    return model.eval()


def _allocate_(model: nn.Module, device: torch.device) -> None:
    """`model.to_empty(device=device)`: uninitialised memory for every parameter and buffer, dtypes kept. Done by hand
    because to_empty's empty_like of meta tensors imports sympy, 0.6 s and 33 MiB of a load."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(b.shape, dtype=b.dtype, device=device))


def _fused_rows(config: ModelConfig, fused: str, index: int) -> tuple[int, int]:
    """(first row, row count) of q, k or v (index 0, 1, 2) in wqkv, or of gate or up (0, 1) in w_gate_up."""
    if fused == "wqkv":
        q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        return (0, q) if index == 0 else (q + (index - 1) * kv, kv)
    return index * config.ffn_dim, config.ffn_dim


def _target(model: Transformer, name: str):
    parts = name.split(".")
    if name == "model.embed_tokens.weight":
        return model.embed.weight, None
    if name == "model.norm.weight":
        return model.norm.weight, None
    if name == "lm_head.weight":
        return model.lm_head.weight, None
    if len(parts) < 5 or parts[0] != "model" or parts[1] != "layers":
        raise KeyError(name)
    layer, block = int(parts[2]), model.layers[int(parts[2])]
    if parts[3] in ("input_layernorm", "post_attention_layernorm") and parts[4:] == ["weight"]:
        norm = block.attn_norm if parts[3] == "input_layernorm" else block.mlp_norm
        return norm.weight, None
    if len(parts) != 6:
        raise KeyError(name)
    module, kind = parts[4], parts[5]
    if module in _FUSED:
        fused, index = _FUSED[module]
        owner = block.attn if fused == "wqkv" else block.mlp
        return getattr(getattr(owner, fused), kind), (layer, fused, kind, index)
    if module == "o_proj":
        return getattr(block.attn.wo, kind), None
    if module == "down_proj":
        return getattr(block.mlp.w_down, kind), None
    raise KeyError(name)


def _check_shape(name: str, target: torch.Tensor, tensor: torch.Tensor) -> None:
    from .errors import ModelLoadError
    if tuple(target.shape) != tuple(tensor.shape):
        raise ModelLoadError(f"tensor {name}: expected shape {tuple(target.shape)} from the config, "
                             f"found {tuple(tensor.shape)}")


def _check_complete(model: Transformer, filled: set[str], pending: dict) -> None:
    from .errors import ModelLoadError
    expected = 2 + model.config.n_layers * 6 + (0 if model.lm_head is None else 1)
    expected += model.config.n_layers * ((1 if model.config.qkv_bias else 0) + (1 if model.config.o_bias else 0))
    if pending or len(filled) != expected:
        missing = [f"layer {l} {f}.{k}" for (l, f, k) in pending]
        raise ModelLoadError(f"the checkpoint is missing weights ({len(filled)} of {expected} tensors filled"
                             + (f"; incomplete: {', '.join(missing[:5])}" if missing else "") + ")")
