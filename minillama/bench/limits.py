"""What the hardware allows a decode step: the matmul-only limit and the memory-bandwidth ceiling.

A one-token decode step multiplies a [1, dim] activation by every weight matrix of the model once. On a CPU those
matrix-vector products stream each weight from memory, so:
  - the matmul-only limit replays exactly those products (every Linear of every layer plus the LM head, on a
    one-token input) back to back with nothing in between: the step time of an engine with no other cost at all;
  - the bandwidth ceiling divides the weight bytes read per token by a measured read bandwidth (a large tensor
    reduction): the step time if the matmuls themselves streamed at the memory's full speed.
Both work on any torch module (minillama's Transformer, a transformers model, quantized linears), so the same
limit is printed beside both engines.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def decode_matmuls(model: nn.Module, vocab_size: int) -> list[tuple[int, Callable[[torch.Tensor], torch.Tensor], int]]:
    """(input features, the product, weight bytes) for every weight product of one decode step, in model order.

    Leaf modules with `in_features` are the linears (nn.Linear and quantized replacements alike). A model whose
    LM head is its embedding (tied, no Linear with `vocab_size` outputs) gets the embedding matrix as its head."""
    products = []
    seen: set[int] = set()
    for module in model.modules():
        if next(module.children(), None) is not None or not hasattr(module, "in_features"):
            continue
        if id(module) in seen:
            continue
        seen.add(id(module))
        products.append((int(module.in_features), module, _module_bytes(module)))
    if not any(getattr(m, "out_features", None) == vocab_size for _, m, _ in products):
        head = _tied_head(model)
        products.append((head.shape[1], lambda x, w=head: F.linear(x, w), head.numel() * head.element_size()))
    return products


def _tied_head(model: nn.Module) -> torch.Tensor:
    if hasattr(model, "output_weight"):                       # minillama's Transformer
        return model.output_weight()
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        return model.get_output_embeddings().weight           # transformers
    return model.get_input_embeddings().weight


def _module_bytes(module: nn.Module) -> int:
    """Weight bytes of one leaf module; a quantized layer (minillama.quant.QuantLinear) holds its packed weight
    outside its parameters and reports the size itself through `nbytes()`."""
    if callable(getattr(module, "nbytes", None)):
        return int(module.nbytes())
    return (sum(t.numel() * t.element_size() for t in module.parameters(recurse=False))
            + sum(t.numel() * t.element_size() for t in module.buffers(recurse=False)))


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of all weights (embeddings and norms included), quantized layers at their packed size."""
    return sum(_module_bytes(m) for m in model.modules() if next(m.children(), None) is None)


def weight_bytes_per_token(model: nn.Module, vocab_size: int) -> int:
    return sum(nbytes for _, _, nbytes in decode_matmuls(model, vocab_size))


@torch.inference_mode()
def matmul_only_seconds(model: nn.Module, vocab_size: int, dtype: torch.dtype, *, repeat: int = 7,
                        warmup: int = 2) -> list[float]:
    """Seconds per replay of one token's weight products, one value per repeat."""
    products = decode_matmuls(model, vocab_size)
    device = next(model.parameters()).device
    inputs = {n: torch.randn(1, n, dtype=dtype, device=device) for n in {n for n, _, _ in products}}
    times = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        for n, product, _ in products:
            product(inputs[n])
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def read_bandwidth(nbytes: int = 1 << 29, *, repeat: int = 7) -> float:
    """Measured read bandwidth in bytes/s: the best of `repeat` float32 sums over an `nbytes` tensor (large enough
    to defeat the caches). The best, not the median: a ceiling is what the memory can do, not what it did while
    the machine was busy."""
    data = torch.ones(nbytes // 4, dtype=torch.float32)
    data.sum()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - t0)
    return data.numel() * 4 / min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


