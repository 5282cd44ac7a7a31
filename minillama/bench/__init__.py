"""Measuring minillama: decode/prefill timing, the decode limits the hardware sets, and the bench table.

    measure.py  timing generations (pp, tg, ttft), the variants with steering on, load time, peak RSS
    limits.py   the matmul-only limit and the memory-bandwidth ceiling of a decode step
    stats.py    median and spread over repeats
    table.py    rows and the llama-bench-style markdown table
    suite.py    `minillama bench`'s rows from an open engine
"""
from .limits import decode_matmuls, matmul_only_seconds, read_bandwidth, weight_bytes_per_token
from .measure import (CapturingGreedy, IdsOnlyTokenizer, RunTiming, Variant, bench_prompt, bench_variants, eos_disabled, peak_rss_bytes,
                      standard_variants, time_generation, timed_load)
from .stats import Summary
from .suite import bench_rows
from .table import Row, bench_table, markdown_table

__all__ = ["CapturingGreedy", "IdsOnlyTokenizer", "Row", "RunTiming", "Summary", "Variant", "bench_prompt", "bench_rows", "bench_table",
           "bench_variants", "decode_matmuls", "eos_disabled", "markdown_table", "matmul_only_seconds",
           "peak_rss_bytes", "read_bandwidth", "standard_variants", "time_generation", "timed_load",
           "weight_bytes_per_token"]
