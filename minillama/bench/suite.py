"""`minillama bench`'s whole measurement: the rows of its table and its JSON, from an open engine."""
from __future__ import annotations

from typing import Callable

import torch

from .limits import matmul_only_seconds, read_bandwidth, weight_bytes_per_token
from .measure import VariantResult, bench_variants, peak_rss_bytes, standard_variants
from .stats import Summary
from .table import Row


def _relative(value: float, baseline: float) -> float:
    return value / baseline - 1.0 if baseline else 0.0


def bench_rows(engine, *, prompt_tokens: int, new_tokens: int, repeat: int, load_s: list[float],
               variants: list[str] | None = None, limits: bool = True, streams: tuple[int, ...] = (1, 4, 16),
               progress: Callable[[str], None] | None = None) -> list[Row]:
    """pp, tg (greedy and every variant, with its change vs greedy), ttft, load, peak RSS, the decode limits and,
    when the server's batching benchmark is installed, aggregate tokens/s with several concurrent streams."""
    results = bench_variants(engine, standard_variants(variants), prompt_tokens=prompt_tokens,
                             new_tokens=new_tokens, repeat=repeat, progress=progress)
    greedy: VariantResult = results[0]
    base_tg = greedy.summary("tg_tps").median
    rows = [Row(f"pp{prompt_tokens}", "t/s", greedy.summary("pp_tps")),
            Row(f"tg{new_tokens}", "t/s", greedy.summary("tg_tps"))]
    for result in results[1:]:
        tg = result.summary("tg_tps")
        rows.append(Row(f"tg{new_tokens} {result.variant}", "t/s", tg, _relative(tg.median, base_tg)))
    ttft = Summary.of([1e3 * r.ttft_s for r in greedy.runs])
    rows.append(Row(f"ttft pp{prompt_tokens}", "ms", ttft))
    rows.append(Row("load", "s", Summary.of(load_s)))
    # before the limits: the bandwidth probe's 512 MiB tensor would otherwise be the high-water mark
    rows.append(Row("peak RSS", "MiB", Summary.of([peak_rss_bytes() / 2**20]),
                    note="resident-set high-water mark of the whole process so far (VmHWM)"))
    if limits:
        if progress is not None:
            progress("decode limits (matmul-only replay, read bandwidth)")
        model, vocab = engine.model, engine.config.vocab_size
        step = matmul_only_seconds(model, vocab, engine.dtype, repeat=max(repeat, 5))
        limit = 1 / Summary.of(step).median
        rows.append(Row("tg limit: matmul-only", "t/s", Summary.of([1 / s for s in step]),
                        note=f"every weight product of one token replayed back to back; greedy tg reaches "
                             f"{100 * base_tg / limit:.0f}% of it"))
        bandwidth = read_bandwidth()
        per_token = weight_bytes_per_token(model, vocab)
        ceiling = bandwidth / per_token
        rows.append(Row("tg ceiling: bandwidth", "t/s", Summary.of([ceiling]),
                        note=f"{bandwidth / 1e9:.1f} GB/s measured read bandwidth / {per_token / 2**20:.1f} MiB "
                             f"of weights per token; greedy tg reaches {100 * base_tg / ceiling:.0f}% of it"))
    rows.extend(_concurrent_rows(engine, streams, new_tokens, progress))
    return rows


def _concurrent_rows(engine, streams: tuple[int, ...], new_tokens: int, progress) -> list[Row]:
    if not streams:
        return []
    try:
        from ..server.bench import concurrent_decode_throughput
    except ImportError as error:      # the server's optional dependencies are missing
        return [Row("concurrent streams", "t/s", Summary.of([0.0]), note=f"skipped: {error}")]
    if progress is not None:
        progress(f"concurrent streams {', '.join(map(str, streams))}")
    with torch.inference_mode():
        measured = concurrent_decode_throughput(engine, streams=streams, max_new_tokens=min(new_tokens, 64))
    rows = []
    for row in measured:
        speedup = None if row["speedup"] is None else row["speedup"] - 1.0
        rows.append(Row(f"tg{row['new_tokens'] // row['streams']} x{row['streams']} streams", "t/s",
                        Summary.of([row["tokens_per_s"]]), speedup))
    rows[0].note = ("aggregate tokens/s of all streams stepped together (llama.cpp chain sampler, one run each); "
                    "'vs greedy' of these rows is vs the 1-stream row")
    return rows
