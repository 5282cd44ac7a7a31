"""Serve a model over HTTP with OpenAI's API (chat and completions, streaming), batching concurrent requests.

    python -m minillama serve --model SOURCE [--host 127.0.0.1] [--port 8080] [--max-batch 8] [--api-key KEY]

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health. Any OpenAI client works
(base_url http://HOST:PORT/v1). Besides OpenAI's fields a request may carry llama.cpp's sampling fields (top_k,
min_p, repeat_penalty, dry_*, xtc_*, mirostat, samplers, ...; llama.cpp's defaults where absent), a "drugs" object
(Drugs' fields: dose_theta, sites, dose_shape, sink_protect, cold_shower_every, kind) and a "sampler" object
({"type": "entropy" | "alpha" | "rdnet", ...options}). logprobs are not supported (a 400 says so).

Concurrent requests decode together, one batched forward per step (at most --max-batch sequences); others wait in a
queue of at most --max-queue requests, and past it get 503. The server binds to localhost unless --host says
otherwise; with --api-key (or $MINILLAMA_API_KEY) every endpoint but /health needs 'Authorization: Bearer KEY'.
Needs the optional extra: pip install 'minillama[serve]'.
"""
from __future__ import annotations

import argparse
import os

from ..errors import MinillamaError, ModelLoadError
from . import common

INSTALL_HINT = "pip install 'minillama[serve]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    group.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one (default: 8080)")
    group.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="most sequences decoded together in one step; a request with n samples counts n "
                            "(default: 8)")
    group.add_argument("--max-queue", type=int, default=64, metavar="Q",
                       help="most requests waiting for room in the batch; more get HTTP 503 (default: 64)")
    group.add_argument("--api-key", default=os.environ.get("MINILLAMA_API_KEY"), metavar="KEY",
                       help="require 'Authorization: Bearer KEY' (default: $MINILLAMA_API_KEY, else no key)")
    group.add_argument("--cache-tokens", type=int, default=None, metavar="T",
                       help="most tokens the KV cache may hold over all requests; it grows on demand up to this. "
                            "A request is admitted once its prompt + max_tokens (per sample) fits beside the running "
                            "ones (default: max(4 x context, 65536))")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
        from ..server.app import create_app
    except ImportError as error:
        raise MinillamaError(f"the server needs starlette and uvicorn ({error}); install them with: "
                             f"{INSTALL_HINT}") from None
    if args.max_batch < 1:
        raise MinillamaError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 0:
        raise MinillamaError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise MinillamaError(f"--port must be in [0, 65535], got {args.port}")
    engine = _open_engine(args)
    app = create_app(engine, model_name=args.model or common.DEFAULT_MODEL, max_batch=args.max_batch,
                     max_queue=args.max_queue, api_key=args.api_key or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _open_engine(args: argparse.Namespace):
    """common.open_engine, with --cache-tokens passed on."""
    from ..engine import Engine
    if args.cache_tokens is not None and args.cache_tokens < 1:
        raise MinillamaError(f"--cache-tokens must be >= 1, got {args.cache_tokens}")
    source = common.resolve_source(args.model)
    try:
        return Engine.from_pretrained(source, dtype=args.dtype, device=args.device, quant=args.quant,
                                      context_length=args.ctx_size, context_shift=args.context_shift,
                                      max_cache_tokens=args.cache_tokens)
    except ModelLoadError as error:
        if source.is_dir() and not (source / "config.json").exists():   # an empty or half-made folder
            raise ModelLoadError(f"{error}. {common.download_hint(source)}") from error
        raise
