"""ModelConfig: everything the forward pass needs to know about a checkpoint, and nothing else."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
# rope_scaling types we implement; every other one (yarn, longrope, su, ...) is refused by name.
SUPPORTED_ROPE_SCALING = ("llama3", "linear", "dynamic")


@dataclass(frozen=True)
class ModelConfig:
    arch: str                      # "llama", "mistral" or "qwen2"
    dim: int                       # hidden size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int                   # SwiGLU intermediate size
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_seq_len: int = 2048        # trained context length
    tie_embeddings: bool = False
    qkv_bias: bool = False         # Qwen2 has biases on q/k/v
    o_bias: bool = False           # Llama's `attention_bias` also puts one on o_proj
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.n_heads}) is not a multiple of num_key_value_heads ({self.n_kv_heads})")
        if self.rope_scaling is not None:
            kind = rope_scaling_type(self.rope_scaling)
            if kind not in SUPPORTED_ROPE_SCALING:
                raise UnsupportedModelError(
                    f"rope_scaling type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_SCALING)})")

    @property
    def n_groups(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        archs = cfg.get("architectures") or []
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            model_type = cfg.get("model_type")
            if model_type in ("llama", "mistral", "qwen2") and not archs:
                arch = model_type
            else:
                raise UnsupportedModelError(
                    f"{source}: architecture {archs or model_type!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        try:
            dim = int(cfg["hidden_size"])
            n_heads = int(cfg["num_attention_heads"])
            head_dim = cfg.get("head_dim") or dim // n_heads
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
            if cfg.get("mlp_bias"):
                raise UnsupportedModelError(f"{source}: mlp_bias=true is not supported")
            rope_scaling = cfg.get("rope_scaling")
            rope_theta = cfg.get("rope_theta")
            # transformers 5 folds rope settings into `rope_parameters`
            params = cfg.get("rope_parameters")
            if isinstance(params, dict):
                rope_theta = rope_theta or params.get("rope_theta")
                if rope_scaling is None and rope_scaling_type(params) not in (None, "default"):
                    rope_scaling = params
            if rope_scaling is not None and rope_scaling_type(rope_scaling) in (None, "default"):
                rope_scaling = None
            return cls(
                arch=arch,
                dim=dim,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
                head_dim=int(head_dim),
                ffn_dim=int(cfg["intermediate_size"]),
                vocab_size=int(cfg["vocab_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                rope_theta=float(rope_theta or 10000.0),
                rope_scaling=dict(rope_scaling) if rope_scaling else None,
                max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)),
                o_bias=arch != "qwen2" and bool(cfg.get("attention_bias", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=tuple(int(e) for e in eos_ids),
            )
        except KeyError as missing:
            raise ModelLoadError(f"{source}: required field {missing} is missing") from None
        except (TypeError, ValueError) as bad:
            raise ModelLoadError(f"{source}: malformed value ({bad})") from None

    @classmethod
    def from_hf_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no config.json in the model folder") from None
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(cfg, str(path))


def rope_scaling_type(scaling: dict[str, Any]) -> str | None:
    return scaling.get("rope_type") or scaling.get("type")
