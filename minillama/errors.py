"""The errors minillama raises. Each one says which file or argument is wrong and what to do."""


class MinillamaError(Exception):
    """Base class of every error minillama raises on purpose."""


class ModelLoadError(MinillamaError):
    """A model folder or file is missing, unreadable, truncated or of an unsupported kind."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint is readable but its architecture or an option of it is not supported."""


class TokenizerError(MinillamaError):
    """A tokenizer file is missing, unreadable or does not fit the model."""


class SamplerArgumentError(MinillamaError, ValueError):
    """A sampler or noise argument is out of its range; the message names the argument and the range."""


class CacheFullError(MinillamaError):
    """The KV cache has no free block left; nothing was written."""


class ContextOverflowError(MinillamaError, ValueError):
    """A prompt or a generation does not fit in the context and context shift is off."""


class GenerationError(MinillamaError):
    """The forward pass produced something unusable (NaN logits, for example)."""
