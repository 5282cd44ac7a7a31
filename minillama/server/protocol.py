"""Reading OpenAI (and llama.cpp server) request bodies into what the engine needs, and OpenAI's error object.

Everything here runs on the event loop before a request is queued, so a bad field is a 400 that names it and the
scheduler only ever sees requests the engine can run. Fields this server does not know are ignored, as OpenAI
clients expect (they send `user`, `response_format`, ...).

Sampling: llama.cpp's fields (`top_k`, `min_p`, `repeat_penalty`, `dry_*`, `xtc_*`, `mirostat*`, `samplers`, ...)
and OpenAI's (`temperature`, `top_p`, `frequency_penalty`, `presence_penalty`, `logit_bias`, `seed`) go through
SamplingParams with llama.cpp's defaults for what is absent, as llama-server does (so temperature defaults to 0.8).
minillama's own: `drugs` = Drugs' fields ({"dose_theta": 0.3, "sites": "K", ...}) and `sampler` =
{"type": "entropy" | "alpha" | "rdnet" | "chain", ...that sampler's options}.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from ..drugs import Drugs
from ..errors import MinillamaError
from ..sampling.adaptive_cli import ADAPTIVE_NAMES, build_adaptive
from ..sampling.base import Sampler
from ..sampling.params import FIELD_ALIASES, SamplingParams

MAX_STOP_STRINGS = 16
_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
_DRUGS_FIELDS = tuple(f.name for f in dataclasses.fields(Drugs))


class RequestError(Exception):
    """A request the server refuses, as OpenAI reports it: an HTTP status and {"error": {message, type, param,
    code}}."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """One validated request: the prompt as token ids and everything the engine's stream() takes."""
    kind: str                      # "chat" | "completion"
    prompt_ids: list[int]
    max_tokens: int
    n: int
    stop: list[str]
    seed: int
    sampler: Sampler
    drugs: Drugs | None
    stream: bool
    include_usage: bool            # stream_options.include_usage: a last chunk with token counts


def parse_request(body: Any, engine, kind: str, *, max_n: int) -> GenerationRequest:
    """Validate a /v1/chat/completions (kind "chat") or /v1/completions (kind "completion") body."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    tokenizer = engine.tokenizer
    stop = _stop(body.get("stop"))
    if kind == "chat":
        prompt_ids = _chat_prompt(body, tokenizer)
        stop += [s for s in tokenizer.chat_template.stop_strings if s and s not in stop]
    else:
        prompt_ids = _completion_prompt(body, tokenizer)
    context = engine.context_length
    if len(prompt_ids) >= context:
        raise RequestError(f"the prompt has {len(prompt_ids)} tokens but the context holds {context}; shorten it "
                           f"(or start the server with a larger --ctx-size)",
                           param="messages" if kind == "chat" else "prompt", code="context_length_exceeded")
    max_key = next((k for k in ("max_completion_tokens", "max_tokens", "n_predict") if body.get(k) is not None),
                   None)
    if max_key is None:
        max_tokens = context - len(prompt_ids)          # until the context is full, as llama-server's n_predict -1
    else:
        max_tokens = _integer(body, max_key, 1, context)
    n = 1 if body.get("n") is None else _integer(body, "n", 1, max_n)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object like {\"include_usage\": true}", param="stream_options")
    include_usage = stream and bool((options or {}).get("include_usage", False))
    _refuse_logprobs(body, kind)
    params = _sampling_params(body)
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    return GenerationRequest(kind, prompt_ids, max_tokens, n, stop, seed, _sampler(body, params, tokenizer),
                             _drugs(body.get("drugs"), engine.config.n_layers), stream, include_usage)


# ---- prompts ----------------------------------------------------------------------------------------------------

def _chat_prompt(body: dict, tokenizer) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]")
        role = "system" if message["role"] == "developer" else message["role"]   # OpenAI's newer name for system
        plain.append({"role": role, "content": _content_text(message.get("content"), i)})
    try:
        text = tokenizer.chat_template.render(plain, add_generation_prompt=True)
    except MinillamaError as error:
        raise RequestError(str(error), param="messages") from None
    return tokenizer.encode(text, bos=False)


def _content_text(content: Any, i: int) -> str:
    """A message's text: a string, null (an assistant turn with no text), or a list of {"type": "text"} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                   f"are supported, got {part!r:.80}", param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts, got "
                       f"{type(content).__name__}", param=f"messages[{i}].content")


def _completion_prompt(body: dict, tokenizer) -> list[int]:
    """A string (encoded with BOS, as the engine does), a list of token ids, or a one-element list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, bos=True)
        if not ids:
            raise RequestError("prompt is empty and the model has no BOS token to start from", param="prompt")
        return ids
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        vocab = tokenizer.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})", param="prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError("prompt: batches of prompts are not supported; send one request per prompt (or use n)",
                           param="prompt")
    raise RequestError("prompt must be a non-empty string or a non-empty list of token ids", param="prompt")


# ---- scalar fields ----------------------------------------------------------------------------------------------

def _integer(body: dict, key: str, lo: int, hi: int) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}", param=key)
    return value


def _boolean(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false, got {value!r}", param=key)
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOP_STRINGS:
            raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(value)}", param="stop")
        return [s for s in value if s]
    raise RequestError(f"stop must be a string or a list of strings, got {value!r:.80}", param="stop")


def _refuse_logprobs(body: dict, kind: str) -> None:
    """Token log-probabilities are not reported yet; asking for them is an error rather than a silent omission."""
    for key in ("logprobs", "top_logprobs"):
        value = body.get(key)
        if value not in (None, False, 0):
            raise RequestError(f"{key} is not supported by minillama's server (leave it out, false or 0)",
                               param=key, code="unsupported_parameter")


# ---- samplers and noise -----------------------------------------------------------------------------------------

def _sampling_params(body: dict) -> SamplingParams:
    """SamplingParams from the body's sampling fields. Each field is checked on its own first so the 400 names the
    one at fault; null means "not given" (the llama.cpp default)."""
    given = {}
    for key, value in body.items():
        if value is not None and FIELD_ALIASES.get(key, key) in _SAMPLING_FIELDS:
            given[key] = value
    for key, value in given.items():
        try:
            SamplingParams.from_dict({key: value})
        except (MinillamaError, TypeError, ValueError) as error:
            raise RequestError(str(error), param=key) from None
    try:
        return SamplingParams.from_dict(given)
    except (MinillamaError, TypeError, ValueError) as error:
        raise RequestError(str(error), param=next(iter(given), None)) from None


def _sampler(body: dict, params: SamplingParams, tokenizer) -> Sampler:
    """llama.cpp's chain from the sampling fields, or the adaptive sampler the `sampler` object names (RD-NET with
    {"base": "chain"} wraps that chain)."""
    chain = params.to_sampler(tokenizer)
    spec = body.get("sampler")
    if spec is None:
        return chain
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise RequestError(f"sampler must be an object with a 'type' ({', '.join(('chain',) + ADAPTIVE_NAMES)}) and "
                           f"that sampler's options, got {spec!r:.80}", param="sampler")
    options = {k: v for k, v in spec.items() if k != "type"}
    if spec["type"] == "chain":
        if options:
            raise RequestError("sampler type 'chain' takes no options; set the chain with the request's sampling "
                               "fields (temperature, top_k, ...)", param="sampler")
        return chain
    try:
        return build_adaptive(spec["type"], options, chain, tokenizer=tokenizer)
    except (MinillamaError, TypeError, ValueError) as error:
        raise RequestError(f"sampler: {error}", param="sampler") from None


def _drugs(spec: Any, n_layers: int) -> Drugs | None:
    """A Drugs from its fields, checked against this model's depth. No dose at all is the same as no drugs."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise RequestError(f"drugs must be an object with Drugs' fields ({', '.join(_DRUGS_FIELDS)}), got "
                           f"{spec!r:.80}", param="drugs")
    unknown = sorted(set(spec) - set(_DRUGS_FIELDS))
    if unknown:
        raise RequestError(f"drugs has no field {', '.join(map(repr, unknown))}; fields: {', '.join(_DRUGS_FIELDS)}",
                           param="drugs")
    try:
        drugs = Drugs(**spec)
        drugs.plan(n_layers, [])
    except (MinillamaError, TypeError, ValueError) as error:
        raise RequestError(f"drugs: {error}", param="drugs") from None
    return drugs if drugs else None
