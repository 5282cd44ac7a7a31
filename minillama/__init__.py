"""minillama: a llama.cpp-style inference engine in pure PyTorch whose internals are steerable while it generates.

    from minillama import Engine, Drugs, SamplingParams
    engine = Engine.from_pretrained("weights/SmolLM2-135M-Instruct.Q4_1.gguf")
    print(engine.generate("Once upon a time", max_new_tokens=40, drugs=Drugs(dose_theta=0.3, sites="K")).text)
"""
from .capture import CaptureRequest, CapturedAttention
from .config import ModelConfig
from .drugs import Drugs, Peak
from .engine import Choice, Completion, Engine, Stats, Stream
from .errors import (CacheFullError, ContextOverflowError, GenerationError, MinillamaError, ModelLoadError,
                     SamplerArgumentError, TokenizerError, UnsupportedModelError)
from .sampling import (AlphaSampler, EntropyConfig, EntropySampler, Greedy, RDNet, SamplerChain, SamplerConfig,
                       SamplingParams)

__version__ = "0.1.0"

__all__ = [
    "AlphaSampler", "CacheFullError", "CaptureRequest", "CapturedAttention", "Choice", "Completion",
    "ContextOverflowError", "Drugs", "Engine", "EntropyConfig", "EntropySampler", "GenerationError", "Greedy",
    "MinillamaError", "ModelConfig", "ModelLoadError", "Peak", "RDNet", "SamplerArgumentError", "SamplerChain",
    "SamplerConfig", "SamplingParams", "Stats", "Stream", "TokenizerError", "UnsupportedModelError",
]
