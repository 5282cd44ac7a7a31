"""What continuous batching buys: aggregate decode tokens/s with 1, 4, 16, ... streams stepped together.

Runs in-process through the same engine.step the server's scheduler calls (no HTTP, no threads), so the numbers are
the engine's batching and nothing else. Each stream is its own request (own seed, own sampler clone) on the same
prompt, sampled with llama.cpp's default chain with EOS banned, so every stream decodes exactly max_new_tokens.
"""
from __future__ import annotations

import time
from typing import Sequence

from ..sampling.params import SamplingParams

BENCH_PROMPT = "Once upon a time, in a small village by the sea, there lived"


def concurrent_decode_throughput(engine, streams: Sequence[int] = (1, 4, 16), max_new_tokens: int = 64, *,
                                 prompt: str = BENCH_PROMPT, seed: int = 1234) -> list[dict]:
    """One row per stream count: {"streams", "new_tokens", "decode_s", "tokens_per_s", "ms_per_step",
    "speedup"} where speedup is tokens_per_s over the single-stream row's (None without a 1-stream row).
    Prefill is not timed: the rows measure decode steps only."""
    counts = [int(k) for k in streams]
    if not counts or any(k < 1 for k in counts):
        raise ValueError(f"streams must be positive counts, got {list(streams)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos_banned = {token: float("-inf") for token in engine.tokenizer.eos_ids}
    sampler = SamplingParams(logit_bias=eos_banned).to_sampler(engine.tokenizer)
    ids = engine.tokenizer.encode(prompt, bos=True)
    engine.generate(ids, max_new_tokens=2, sampler=sampler, seed=seed)     # warm-up: first-call allocations
    rows = []
    for k in counts:
        active = [engine.stream(ids, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed + i)
                  for i in range(k)]
        steps = 0
        t0 = time.perf_counter()
        while not all(s.finished for s in active):
            engine.step(active)
            steps += 1
        decode_s = time.perf_counter() - t0
        new_tokens = sum(len(s.completion.tokens) for s in active)
        rows.append({"streams": k, "new_tokens": new_tokens, "decode_s": decode_s,
                     "tokens_per_s": new_tokens / decode_s if decode_s > 0 else 0.0,
                     "ms_per_step": 1e3 * decode_s / steps if steps else 0.0})
    single = next((r["tokens_per_s"] for r in rows if r["streams"] == 1), None)
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / single if single else None
    return rows
