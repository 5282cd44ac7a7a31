"""GGUF files (llama.cpp's format): metadata -> ModelConfig, tensors -> float weights in Hugging Face naming.

The file is memory-mapped; each tensor is dequantized (by `gguf.quants`) only when `read` asks for it, so a caller
that consumes weights one at a time never holds more than one dequantized tensor besides its own copies.
"""
from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ModelLoadError, UnsupportedModelError

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")

# GGUF tensor name -> Hugging Face name; blk.N.* names are handled by _LAYER_NAMES.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for tensors the model does not use (rope_freqs, ...)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str                 # the GGUF name (blk.0.attn_q.weight)
    dims: tuple[int, ...]     # ggml order: dims[0] is the row length
    kind: Any                 # gguf.GGMLQuantizationType
    offset: int               # absolute byte offset in the file
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The PyTorch shape: ggml dims reversed."""
        return tuple(reversed(self.dims))


class GGUFFile:
    """An open GGUF checkpoint: `config`, `metadata` (plain Python values), `shapes` (HF name -> shape), `read`
    (one tensor dequantized to float) and `infos` (HF name -> GGUFTensorInfo, for readers of the raw blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise ModelLoadError(f"{path}: cannot read the GGUF file ({e})") from None
        self.metadata, tensors = _read_header(self._mmap, path)
        self.infos = {hf: t for t in tensors if (hf := hf_name(t.name)) is not None}
        self.shapes = {name: t.shape for name, t in self.infos.items()}
        rope_freqs = next((t for t in tensors if t.name == "rope_freqs.weight"), None)
        self.config = config_from_gguf(self.metadata, self.shapes, source=str(path),
                                       rope_freqs=None if rope_freqs is None else self._dequantize(rope_freqs))

    def _dequantize(self, t: GGUFTensorInfo) -> np.ndarray:
        import gguf

        raw = np.frombuffer(self._mmap, dtype=np.uint8, count=t.n_bytes, offset=t.offset)
        if t.kind == gguf.GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.shape).copy()  # the map is read-only; torch wants writable
        if t.kind == gguf.GGMLQuantizationType.F16:
            return raw.view(np.float16).reshape(t.shape).copy()
        try:
            rows = raw.reshape(-1, t.n_bytes // math.prod(t.dims[1:]))
            return gguf.quants.dequantize(rows, t.kind).reshape(t.shape)
        except NotImplementedError:
            raise UnsupportedModelError(f"{self.path}: tensor {t.name} is stored as {t.kind.name}, which the gguf "
                                        f"package cannot dequantize") from None

    def read(self, name: str) -> torch.Tensor:
        """Dequantize one tensor (HF name) to a CPU tensor in HF layout (float32, or float16 if stored so)."""
        weight = torch.from_numpy(self._dequantize(self.infos[name]))
        if self.config.arch == "llama":
            # convert_hf_to_gguf.py reorders the rows of q_proj/k_proj (weights and biases) from Hugging Face's
            # rotate-half rope layout to llama.cpp's interleaved pairs; put them back.
            if ".self_attn.q_proj." in name:
                weight = unpermute_rope_rows(weight, self.config.n_heads)
            elif ".self_attn.k_proj." in name:
                weight = unpermute_rope_rows(weight, self.config.n_kv_heads)
        return weight


# ---- the header. Our own parser: gguf.GGUFReader builds numpy views per string and takes ~6 s on a 49k-token
# vocabulary, this reads the same header in a fraction of a second. Layout (little-endian, GGUF v2/v3): magic
# "GGUF", u32 version, u64 tensor count, u64 key count, the key/values, the tensor infos (name, u32 n_dims,
# u64 dims..., u32 ggml type, u64 offset), padding to `general.alignment`, then the tensor data.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9


def _read_header(buf: mmap.mmap, path: Path) -> tuple[dict[str, Any], list[GGUFTensorInfo]]:
    import gguf

    if buf[:4] != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it starts with {bytes(buf[:4])!r}, not b'GGUF')")
    try:
        version, n_tensors, n_keys = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise UnsupportedModelError(f"{path}: GGUF version {version} is not supported (supported: 2, 3)")
        pos = 24
        metadata: dict[str, Any] = {}
        for _ in range(n_keys):
            key, pos = _read_string(buf, pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            metadata[key], pos = _read_value(buf, pos + 4, kind)
        raw_infos = []
        for _ in range(n_tensors):
            name, pos = _read_string(buf, pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            raw_infos.append((name, dims, kind, offset))
    except (struct.error, ValueError) as e:
        raise ModelLoadError(f"{path}: the GGUF header is unreadable, the file may be truncated or corrupt "
                             f"({e})") from None
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-pos // alignment) * alignment
    tensors = []
    for name, dims, kind_id, offset in raw_infos:
        try:
            kind = gguf.GGMLQuantizationType(kind_id)
            block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
        except (ValueError, KeyError):
            raise UnsupportedModelError(f"{path}: tensor {name} has ggml type {kind_id}, unknown to the gguf "
                                        f"package") from None
        n_bytes = math.prod(dims) // block * block_bytes
        if data_start + offset + n_bytes > len(buf):
            raise ModelLoadError(f"{path}: tensor {name} ends at byte {data_start + offset + n_bytes} but the file "
                                 f"has {len(buf)} bytes; it is truncated")
        tensors.append(GGUFTensorInfo(name, tuple(int(d) for d in dims), kind, data_start + offset, n_bytes))
    return metadata, tensors


def _read_string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + length
    if end > len(buf):
        raise ValueError("a string runs past the end of the file")
    return buf[pos + 8:end].decode("utf-8", errors="replace"), end


def _read_value(buf: mmap.mmap, pos: int, kind: int) -> tuple[Any, int]:
    if kind == _STRING:
        return _read_string(buf, pos)
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_kind in _NUMPY:  # numeric arrays in one go
            dtype = np.dtype(_NUMPY[item_kind])
            return np.frombuffer(buf, dtype=dtype, count=count, offset=pos).tolist(), pos + dtype.itemsize * count
        items = []
        for _ in range(count):
            item, pos = _read_value(buf, pos, item_kind)
            items.append(item)
        return items, pos
    raise ValueError(f"unknown GGUF value type {kind}")


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's per-head row permutation: rows (pair, half) -> (half, pair) within each head."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape).contiguous())


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's permutation (the inverse of `unpermute_rope_rows`), used to write test GGUFs like the converter."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape).contiguous())


def config_from_gguf(metadata: dict[str, Any], shapes: dict[str, tuple[int, ...]] | None = None, *,
                     rope_freqs: np.ndarray | None = None, source: str = "GGUF file") -> ModelConfig:
    """Build a ModelConfig from GGUF metadata. `shapes` (HF name -> shape) decides vocab size, tied embeddings
    and biases when given; without it the vocab comes from the token list and embeddings count as tied."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedModelError(f"{source}: GGUF architecture {arch!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})")
    try:
        fields = _config_fields(metadata, arch, shapes or {}, rope_freqs, source)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source}: malformed GGUF metadata ({e})") from None
    try:
        return ModelConfig(**fields)
    except UnsupportedModelError as e:  # ModelConfig's own checks do not know the file
        raise UnsupportedModelError(f"{source}: {e}") from None


def _config_fields(metadata: dict[str, Any], arch: str, shapes: dict[str, tuple[int, ...]],
                   rope_freqs: np.ndarray | None, source: str) -> dict[str, Any]:
    def key(name: str, default: Any = ModelLoadError) -> Any:
        value = metadata.get(f"{arch}.{name}", default)
        if value is ModelLoadError:
            raise ModelLoadError(f"{source}: required GGUF metadata key {arch}.{name} is missing")
        return value

    dim = int(key("embedding_length"))
    n_heads = int(key("attention.head_count"))
    n_kv_heads = key("attention.head_count_kv", n_heads)
    if isinstance(n_kv_heads, list):  # per-layer head counts (hybrid models) are not ours
        raise UnsupportedModelError(f"{source}: per-layer {arch}.attention.head_count_kv is not supported")
    head_dim = int(key("attention.key_length", dim // n_heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{source}: key_length and value_length differ, which is not supported")
    rot_dims = int(key("rope.dimension_count", head_dim))
    if rot_dims != head_dim:
        raise UnsupportedModelError(
            f"{source}: partial rotary embeddings ({arch}.rope.dimension_count={rot_dims}, head dim {head_dim}) "
            f"are not supported")
    rope_theta = _f32(key("rope.freq_base", 10000.0))

    if "model.embed_tokens.weight" in shapes:
        vocab_size = shapes["model.embed_tokens.weight"][0]
    elif "tokenizer.ggml.tokens" in metadata:
        vocab_size = len(metadata["tokenizer.ggml.tokens"])
    else:
        vocab_size = int(key("vocab_size"))

    eos_ids: list[int] = []
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if metadata.get(k) is not None and int(metadata[k]) not in eos_ids:
            eos_ids.append(int(metadata[k]))
    bos = metadata.get("tokenizer.ggml.bos_token_id")

    return dict(
        arch=arch,
        dim=dim,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(n_kv_heads),
        head_dim=head_dim,
        ffn_dim=int(key("feed_forward_length")),
        vocab_size=int(vocab_size),
        norm_eps=_f32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=rope_theta,
        rope_scaling=_rope_scaling(metadata, arch, rope_theta, head_dim, rope_freqs, source),
        max_seq_len=int(key("context_length", 2048)),
        tie_embeddings=bool(shapes) and "lm_head.weight" not in shapes,
        qkv_bias=arch == "qwen2" or "model.layers.0.self_attn.q_proj.bias" in shapes,
        o_bias=arch != "qwen2" and "model.layers.0.self_attn.o_proj.bias" in shapes,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=tuple(eos_ids),
    )


def _f32(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.9999997e-06. Keep the 7 digits float32 holds."""
    return float(f"{float(value):.7g}")


def _rope_scaling(metadata: dict[str, Any], arch: str, rope_theta: float, head_dim: int,
                  rope_freqs: np.ndarray | None, source: str) -> dict[str, Any] | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if rope_freqs is not None:
        # Llama 3.1+ GGUFs carry the llama3 scaling only as per-frequency divisors (tensor rope_freqs.weight)
        return _llama3_from_rope_freqs(rope_freqs.astype(np.float64), rope_theta, head_dim, source)
    if kind in (None, "none"):
        return None
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    if kind == "linear":
        if factor is None:
            raise ModelLoadError(f"{source}: rope scaling type linear without {arch}.rope.scaling.factor")
        return {"rope_type": "linear", "factor": _f32(factor)}
    # ModelConfig refuses every other type by name (yarn, longrope, ...)
    scaling: dict[str, Any] = {"rope_type": kind}
    if factor is not None:
        scaling["factor"] = _f32(factor)
    return scaling


def _llama3_from_rope_freqs(divisors: np.ndarray, theta: float, head_dim: int, source: str) -> dict[str, Any]:
    """Recover llama3 rope_scaling parameters from llama.cpp's rope_freqs divisors.

    The converter writes, per frequency f with wavelength w = 2π/f: 1 when w < L/high, `factor` when w > L/low,
    and 1/((1-s)/factor + s) in between, where s = (L/w - low)/(high - low). Only the ratios L/(high-low) and
    low/(high-low) affect the result, so low_freq_factor is fixed at 1 and the rest solved for; the recovered
    parameters are checked by recomputing every divisor.
    """
    n = head_dim // 2
    if divisors.shape != (n,):
        raise UnsupportedModelError(f"{source}: rope_freqs.weight has shape {divisors.shape}, expected ({n},)")
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = float(divisors.max())
    if factor <= 1.0:
        raise UnsupportedModelError(f"{source}: rope_freqs.weight holds no scaling (all divisors <= 1)")
    smooth_mask = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if smooth_mask.sum() < 2:
        raise UnsupportedModelError(f"{source}: rope_freqs.weight has too few frequencies in the llama3 smoothing "
                                    f"band to recover its parameters")
    s = (1 / divisors[smooth_mask] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[smooth_mask], s, 1)  # s = slope/w + intercept
    low = 1.0
    high = low - low / intercept
    original = slope * (high - low)
    factor, high, original = (_snap(v) for v in (factor, high, original))
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(low),
               "high_freq_factor": high, "original_max_position_embeddings": original}
    if not np.allclose(_llama3_divisors(scaling, wavelen), divisors, rtol=1e-4, atol=1e-6):
        raise UnsupportedModelError(f"{source}: rope_freqs.weight does not follow the llama3 rope scaling")
    return scaling


def _snap(value: float) -> float | int:
    """Float32 storage blurs the recovered parameters; snap them to the round numbers configs use."""
    nearest = round(value)
    if abs(value - nearest) <= 1e-3 * max(1.0, abs(value)):
        return int(nearest) if nearest > 100 else float(nearest)
    return float(value)


def _llama3_divisors(scaling: dict[str, Any], wavelen: np.ndarray) -> np.ndarray:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    s = (original / wavelen - low) / (high - low)
    smooth = 1 / ((1 - s) / factor + s)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, smooth))
