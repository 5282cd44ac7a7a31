"""Load a checkpoint (a Hugging Face model folder or a .gguf file) as a config plus a stream of weights.

Weights come out one at a time, in Hugging Face naming, already in the target dtype and device: the caller copies
each into its model and drops it, so loading never holds the whole model twice. Names and shapes are checked against
the config before the first tensor is read, so a bad checkpoint fails fast with the file and tensor named.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import torch

from ..config import ModelConfig
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: Iterator[tuple[str, torch.Tensor]]   # (HF name, tensor on the device, in the requested dtype or, for
                                                  # dtype=None, as stored), one at a time
    tokenizer: "Tokenizer | None"
    path: Path                                    # the model folder or the .gguf file
    metadata: dict[str, Any]                      # GGUF metadata as plain values, or the parsed config.json
    tensor_names: list[str]                       # every name `tensors` will yield, in that order


class WeightSource(Protocol):
    """What each checkpoint format provides (SafetensorsFolder, GGUFFile)."""
    path: Path
    config: ModelConfig
    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    def read(self, name: str) -> torch.Tensor: ...


def load_checkpoint(source: str | Path, *, dtype: torch.dtype | None, device: torch.device | str = "cpu",
                    with_tokenizer: bool = True) -> Checkpoint:
    """Open a model folder (config.json + safetensors) or a .gguf file and check it; weights load lazily.
    dtype=None yields each tensor in the dtype it is stored in (GGUF quantizations as float32): build_model converts
    as it copies, so loading never holds a tensor in two dtypes at once."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise ModelLoadError(f"dtype {dtype} is not supported (supported: float32, bfloat16, float16)")
    device = _check_device(device)
    weights = open_weights(source)
    names = expected_shapes(weights.config)
    _check_shapes(weights, names)
    tokenizer = _load_tokenizer(weights) if with_tokenizer else None
    return Checkpoint(config=weights.config, tensors=_stream(weights, list(names), dtype, device),
                      tokenizer=tokenizer, path=weights.path, metadata=weights.metadata, tensor_names=list(names))


def open_weights(source: str | Path) -> WeightSource:
    """The reader for `source`: a SafetensorsFolder or a GGUFFile. Reads headers only."""
    from .gguf import GGUFFile
    from .safetensors import SafetensorsFolder

    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"{path}: the path does not exist. Pass a model folder or a .gguf file, or download a model first: "
            f"python scripts/download_weights.py NAME")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path}: not a model; pass a model folder (config.json + safetensors) "
                                 f"or a .gguf file")
        return GGUFFile(path)
    if (path / "config.json").is_file():
        return SafetensorsFolder(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return GGUFFile(ggufs[0])
    if ggufs:
        raise ModelLoadError(f"{path}: holds several .gguf files ({', '.join(p.name for p in ggufs)}); "
                             f"pass the one to load")
    raise ModelLoadError(f"{path}: no config.json (and no .gguf file) in the model folder")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, in Hugging Face naming and loading order, with its shape."""
    d, hd, f, v = config.dim, config.head_dim, config.ffn_dim, config.vocab_size
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (q, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv, d)
        if config.qkv_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q,)
            shapes[p + "self_attn.k_proj.bias"] = (kv,)
            shapes[p + "self_attn.v_proj.bias"] = (kv,)
        shapes[p + "self_attn.o_proj.weight"] = (d, q)
        if config.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (f, d)
        shapes[p + "mlp.up_proj.weight"] = (f, d)
        shapes[p + "mlp.down_proj.weight"] = (d, f)
    shapes["model.norm.weight"] = (d,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def _check_shapes(weights: WeightSource, expected: dict[str, tuple[int, ...]]) -> None:
    missing = [name for name in expected if name not in weights.shapes]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(f"{weights.path}: missing tensor {', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        found = tuple(weights.shapes[name])
        if found != shape:
            raise ModelLoadError(f"{weights.path}: tensor {name} has shape {list(found)}, "
                                 f"expected {list(shape)} from the model config")


def _stream(weights: WeightSource, names: list[str], dtype: torch.dtype | None,
            device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    # Holds no reference to a tensor once it is yielded: the caller decides what stays alive.
    for name in names:
        yield name, weights.read(name).to(device=device, dtype=dtype)      # dtype=None keeps the stored one


def _check_device(device: torch.device | str) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"device {device!r} is not a device (use 'cpu' or 'cuda')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} was asked for but CUDA is not available; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"device {str(device)!r} is not supported (use 'cpu' or 'cuda')")
    return device


def _load_tokenizer(weights: WeightSource) -> "Tokenizer":
    # imported here so loading works on its own while the tokenizer package is optional for weights-only use
    from ..tokenizer import load_tokenizer, tokenizer_from_gguf
    from .gguf import GGUFFile

    if isinstance(weights, GGUFFile):
        return tokenizer_from_gguf(weights.metadata)
    return load_tokenizer(weights.path)
