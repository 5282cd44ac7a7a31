"""minillama: a llama.cpp-style inference engine in pure PyTorch whose internals are steerable while it generates.

    from minillama import Engine, Drugs
    engine = Engine.from_pretrained("weights/SmolLM2-135M-Instruct.Q4_1.gguf")
    print(engine.generate("Once upon a time", max_new_tokens=40, drugs=Drugs(dose_theta=0.3, sites="K")).text)

Names are imported on first use, so tools that only need a little of the package (the download script, `--help`)
start without loading torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "engine", "Completion": "engine", "Choice": "engine", "Stats": "engine", "Stream": "engine",
    "Drugs": "drugs", "Peak": "drugs",
    "ModelConfig": "config",
    "CaptureRequest": "capture", "CapturedAttention": "capture",
    "SamplingParams": "sampling", "SamplerChain": "sampling", "Greedy": "sampling", "EntropySampler": "sampling",
    "EntropyConfig": "sampling", "AlphaSampler": "sampling", "SamplerConfig": "sampling", "RDNet": "sampling",
    "MinillamaError": "errors", "ModelLoadError": "errors", "UnsupportedModelError": "errors",
    "TokenizerError": "errors", "SamplerArgumentError": "errors", "CacheFullError": "errors",
    "ContextOverflowError": "errors", "GenerationError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'minillama' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
