"""Int8 weights kept quantized on the CPU: every Linear of the decoder and the LM head, per-output-channel scales.

Decode on a CPU reads every weight once per token, so its speed is bounded by weight bytes: int8 reads a quarter
of float32. The matmul is PyTorch's FBGEMM dynamic-quantization kernel (`quantized::linear_dynamic`): weights are
int8 packed once at load, each call quantizes the activations per tensor to uint8 on the fly and accumulates in
int32. It measured fastest of the CPU int8/int4 kernels PyTorch and torchao offer on this machine, see
docs/quant/KERNELS.md. Norms stay float. The embedding is int8 too, one scale per row, dequantized only for the
rows a step looks up: it is a fifth of a small model's weights (SmolLM2, Llama 3.2 1B), so a float one alone would
keep the model above a third of its float32 size. A tied model's head is a separate FBGEMM copy of the same matrix.

One scale for a whole activation vector is what breaks real models: SmolLM2's hidden states carry a few channels
tens of times larger than the rest, so 7-bit steps sized for them leave the others a handful of levels (perplexity
+163%). So every quantized Linear computes y = (W R^T)(R x) with a fixed orthogonal R (the QuaRot idea): R spreads an
outlier's energy over its block of 64 channels before the activation is quantized, the weight absorbs R^T once at
load, and the product is unchanged in exact arithmetic; R is a Hadamard matrix per block of 64, one small matmul
per call. Inputs with several rows (prefill, batches) are scaled to a max of 1 per row first, so one token's
outliers do not set the step for the others. Measured in docs/quant/RESULTS.md.

Two ways in:
    quantize_linears_(meta_model, "int8")   before build_model fills the model: each nn.Linear becomes an unfilled
                                            QuantLinear whose `weight` slot quantizes the float weight as it is
                                            copied in, so no float copy of the whole model ever exists;
    quantize_tied_head_(model)              after filling: the quantized head of a tied model (quantized from the
                                            float embedding as it streamed past);
    quantize_model_(model, "int8")          an already built float model, in place (tests, tools).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from .errors import MinillamaError

QUANT_SCHEMES = ("int8",)
_INT8_ENGINES = ("x86", "fbgemm", "qnnpack")


class QuantizationError(MinillamaError, ValueError):
    """An unknown quantization name, a platform without the int8 kernels, or a weight that cannot be quantized."""


def check_quant(quant: str, device: torch.device | str = "cpu") -> str:
    """Validate a quantization name for `device` and make sure the int8 engine is selected. Returns the name."""
    if quant not in QUANT_SCHEMES:
        raise QuantizationError(f"quant={quant!r} is not known (known: {', '.join(QUANT_SCHEMES)}, or None for "
                                f"float weights)")
    if torch.device(device).type != "cpu":
        raise QuantizationError(f"quant={quant!r} runs on the CPU only; got device {str(device)!r}. Use "
                                f"device='cpu', or drop quant and use dtype='bfloat16' on {device}")
    _select_int8_engine()
    return quant


def _select_int8_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine in _INT8_ENGINES:
        return torch.backends.quantized.engine
    for engine in _INT8_ENGINES:
        if engine in engines:
            torch.backends.quantized.engine = engine
            return engine
    raise QuantizationError(
        f"this PyTorch build has no int8 CPU engine (supported_engines={engines}, need one of "
        f"{', '.join(_INT8_ENGINES)}); load without quant (float32 or dtype='bfloat16') instead")


class Rotation:
    """R = I ⊗ H: a Hadamard matrix H (Sylvester, orthonormal) on each block of up to 64 channels of the last
    dimension. H is symmetric and its own inverse, so R is too. One small matmul per call: x viewed as [-1, 64] @ H.
    (A full-width rotation, or a random orthogonal mix of the blocks on top, measured no better on SmolLM2 and
    costs a second matmul per Linear.)"""

    _cache: dict[int, "Rotation"] = {}

    def __init__(self, n: int):
        block = 1
        while block < 64 and n % (2 * block) == 0:
            block *= 2
        self.block = block
        self.hadamard = _hadamard(block)

    @classmethod
    def for_size(cls, n: int) -> "Rotation":
        """One shared instance per width."""
        if n not in cls._cache:
            cls._cache[n] = cls(n)
        return cls._cache[n]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """R x along the last dimension (applied to a weight's rows: W R^T, since R is symmetric)."""
        return (x.reshape(-1, self.block) @ self.hadamard).reshape(x.shape)

    inverse = __call__   # R R = I


def _hadamard(n: int) -> torch.Tensor:
    """Sylvester's n×n Hadamard matrix (n a power of two), scaled to be orthonormal."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n ** 0.5


# Float temporaries of at most ~32 MiB however large the matrix (a 128k-row head is 1 GiB in float32). Much smaller
# chunks measured slower: each fresh temporary is mapped and page-faulted anew.
_CHUNK_BYTES = 32 << 20


def quantize_int8(weight: torch.Tensor, name: str = "weight",
                  rotation: "Rotation | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of weight (rotated first when given: W R^T): (q int8 [out, in],
    scale float32 [out]) with weight ≈ q * scale. Works through the rows in chunks, so loading never holds a float
    copy of a whole matrix next to the one being read."""
    weight = weight.detach()
    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0], dtype=torch.float32)
    chunk = max(1, _CHUNK_BYTES // (4 * weight.shape[1]))
    for start in range(0, weight.shape[0], chunk):
        rows = slice(start, start + chunk)
        # a new float32 tensor either way, ours to divide in place
        w = rotation(weight[rows].float()) if rotation is not None else weight[rows].to(torch.float32, copy=True)
        row_scale = torch.linalg.vector_norm(w, ord=math.inf, dim=1).clamp_min_(1e-12).div_(127.0)
        if not torch.isfinite(row_scale).all():                     # a NaN or inf anywhere in a row shows here
            raise QuantizationError(f"{name}: the weight holds NaN or infinite values and cannot be quantized")
        scale[rows] = row_scale
        q[rows] = w.div_(row_scale[:, None]).round_()                # |w / scale| <= 127 by construction
    return q, scale


class _WeightSlot:
    """What `.weight` of a QuantLinear or QuantEmbedding is: build_model checks its `.shape` and `.copy_`s the float
    weight into it; the copy quantizes into the owning module and keeps nothing float."""

    def __init__(self, owner: "QuantLinear | QuantEmbedding", shape: tuple[int, int]):
        self._owner = owner
        self.shape = torch.Size(shape)

    def copy_(self, weight: torch.Tensor) -> "_WeightSlot":
        self._owner.load_weight(weight)
        return self

    def __repr__(self) -> str:
        state = "filled" if self._owner.filled else "empty"
        return f"QuantizedWeight(int8, shape={tuple(self.shape)}, {state})"


class QuantLinear(nn.Module):
    """Drop-in for nn.Linear with int8 weights: y = (R x) @ (q * scale)^T (+ bias), where q * scale ≈ W R^T.
    Any leading shape ([B, T, in]);
    float32 activations go to the kernel as they are, bfloat16/float16 ones are computed in float32 and cast back.
    The bias (Qwen2's q/k/v) stays a float parameter, added after the matmul so it can arrive before or after
    the weight while loading."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, name: str = "weight"):
        super().__init__()
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.weight = _WeightSlot(self, (out_features, in_features))
        self.rotation = Rotation.for_size(in_features)
        self._packed = None                       # FBGEMM's packed int8 weight of W R^T (opaque, not a tensor)
        self.scale: torch.Tensor | None = None    # [out] float32, kept for dequantize() and reporting

    @property
    def filled(self) -> bool:
        return self._packed is not None

    def load_weight(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise QuantizationError(f"{self.name}: expected a weight of shape {(self.out_features, self.in_features)},"
                                    f" got {tuple(weight.shape)}")
        if weight.device.type != "cpu":
            raise QuantizationError(f"{self.name}: int8 weights live on the CPU; got a weight on {weight.device}")
        q, scale = quantize_int8(weight, self.name, self.rotation)
        with warnings.catch_warnings():
            # PyTorch marks quantized tensor creation deprecated (issue 184982); it is still the only way to hand
            # FBGEMM a per-channel int8 weight, and the kernel itself is not deprecated. Re-check on upgrades.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                              torch.zeros(self.out_features, dtype=torch.long), 0)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.scale = scale

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, name: str = "weight") -> "QuantLinear":
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias is not None, name)
        module.load_weight(weight)
        if bias is not None:
            module.bias.copy_(bias.float())
        return module

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the int8 one stands for ((q * scale) R), for checks and analysis; not used to compute."""
        q, _ = torch.ops.quantized.linear_unpack(self._packed)
        return self.rotation.inverse(q.dequantize().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            raise QuantizationError(f"{self.name}: this quantized Linear was never given its weight")
        xf = self.rotation(x if x.dtype == torch.float32 else x.float())   # a new tensor, ours to scale in place
        row_max = None
        if xf.numel() > self.in_features:
            # several rows: scale each to max 1 so the kernel's one per-tensor step fits every row, not the largest
            row_max = torch.linalg.vector_norm(xf, ord=math.inf, dim=-1, keepdim=True).clamp_min_(1e-12)
            xf.div_(row_max)
        # reduce_range: 7-bit activations, so AVX2's int16 pairwise accumulation (vpmaddubsw) cannot saturate
        y = torch.ops.quantized.linear_dynamic(xf, self._packed, True)
        if row_max is not None:
            y.mul_(row_max)
        if self.bias is not None:
            y.add_(self.bias)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"

    def nbytes(self) -> int:
        """Bytes this layer's weights take: int8 weight + float32 scale (+ bias)."""
        return self.in_features * self.out_features + 4 * self.out_features + (
            0 if self.bias is None else self.bias.numel() * self.bias.element_size())


class QuantEmbedding(nn.Module):
    """Drop-in for nn.Embedding with int8 rows and one float32 scale per row (no rotation: a lookup reads rows, it
    does not quantize activations). The output has the model's dtype, followed through `model.to(dtype)`.
    With `ties_head`, the float weight that streams in also becomes `tied_head`, the quantized LM head."""

    def __init__(self, num_embeddings: int, dim: int, ties_head: bool = False):
        super().__init__()
        self.num_embeddings, self.dim, self.ties_head = num_embeddings, dim, ties_head
        self.weight = _WeightSlot(self, (num_embeddings, dim))
        self.q: torch.Tensor | None = None        # [vocab, dim] int8
        self.scale: torch.Tensor | None = None    # [vocab] float32
        self.tied_head: QuantLinear | None = None
        self.out_dtype = torch.float32

    @property
    def filled(self) -> bool:
        return self.q is not None

    def load_weight(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise QuantizationError(f"embedding: expected a weight of shape {tuple(self.weight.shape)}, got "
                                    f"{tuple(weight.shape)}")
        self.q, self.scale = quantize_int8(weight, "embedding")
        if self.ties_head:
            self.tied_head = QuantLinear.from_float(weight, name="lm_head (tied to the embedding)")

    @classmethod
    def from_float(cls, weight: torch.Tensor, ties_head: bool = False) -> "QuantEmbedding":
        module = cls(*weight.shape, ties_head=ties_head)
        module.load_weight(weight)
        module.out_dtype = weight.dtype
        return module

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.q is None:
            raise QuantizationError("embedding: this quantized embedding was never given its weight")
        return (self.q[tokens].float() * self.scale[tokens].unsqueeze(-1)).to(self.out_dtype)

    def _apply(self, fn, recurse=True):
        # q and scale are plain attributes, so .to(bfloat16) cannot round the scales (and the int8 rows stay on the
        # CPU, where they must live); follow the dtype that .to() asks for by applying it to an empty probe
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(fn, recurse)

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix the int8 rows stand for, for checks and analysis."""
        return self.q.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}, int8"

    def nbytes(self) -> int:
        return self.num_embeddings * self.dim + 4 * self.num_embeddings


def _linear_modules(model: nn.Module):
    for module_name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                yield module, child_name, child, f"{module_name}.{child_name}".lstrip(".")


def quantize_linears_(model: nn.Module, quant: str) -> nn.Module:
    """Replace every nn.Linear of `model` (typically still on the meta device) by an unfilled QuantLinear and the
    embedding by an unfilled QuantEmbedding. Copying a float weight into `.weight` quantizes it. Returns the model."""
    check_quant(quant)
    for parent, child_name, child, full_name in list(_linear_modules(model)):
        setattr(parent, child_name, QuantLinear(child.in_features, child.out_features, child.bias is not None,
                                                full_name))
    model.embed = QuantEmbedding(*model.embed.weight.shape, ties_head=model.lm_head is None)
    return model


def quantize_tied_head_(model: nn.Module) -> nn.Module:
    """A tied model computes logits with its embedding matrix; give it the quantized copy its QuantEmbedding made
    while loading as `lm_head`, so the largest matmul of decode reads int8 too."""
    if getattr(model, "lm_head", None) is None:
        model.lm_head, model.embed.tied_head = model.embed.tied_head, None   # handed over, not held twice
    return model


@torch.no_grad()
def quantize_model_(model: nn.Module, quant: str) -> nn.Module:
    """Quantize an already built float model in place: every nn.Linear, the embedding, and a tied LM head."""
    check_quant(quant)
    for parent, child_name, child, full_name in list(_linear_modules(model)):
        setattr(parent, child_name, QuantLinear.from_float(child.weight, child.bias, full_name))
    model.embed = QuantEmbedding.from_float(model.embed.weight, ties_head=model.lm_head is None)
    return quantize_tied_head_(model)


def float_nbytes(model: nn.Module) -> int:
    """Bytes of the float parameters and buffers the model holds (norms and biases once quantized)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point())


def quantized_nbytes(model: nn.Module) -> int:
    """Bytes of the int8 weights (with their scales) the model holds."""
    return sum(m.nbytes() for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding)))
