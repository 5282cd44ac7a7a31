"""Samplers: llama.cpp's chain and the adaptive samplers, all implementing `base.Sampler`."""
from .alpha import AlphaSampler, SamplerConfig
from .base import Greedy, LookaheadResult, Sampler, StepContext
from .chain import SamplerChain
from .entropy import EntropyConfig, EntropySampler
from .params import SamplingParams
from .rdnet import RDNet

__all__ = ["AlphaSampler", "EntropyConfig", "EntropySampler", "Greedy", "LookaheadResult", "RDNet", "Sampler",
           "SamplerChain", "SamplerConfig", "SamplingParams", "StepContext"]
