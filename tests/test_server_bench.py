"""The in-process batching benchmark the bench command reports (no HTTP)."""
from __future__ import annotations

import pytest

from minillama import Engine
from minillama.server.bench import concurrent_decode_throughput


def test_rows_per_stream_count_and_no_leaked_blocks(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    rows = concurrent_decode_throughput(engine, streams=(1, 3), max_new_tokens=5)
    assert [r["streams"] for r in rows] == [1, 3]
    assert [r["new_tokens"] for r in rows] == [5, 15]       # EOS is banned: every stream runs to max_new_tokens
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0
    assert all(r["tokens_per_s"] > 0 and r["decode_s"] > 0 and r["ms_per_step"] > 0 for r in rows)
    assert engine.cache.manager.used_blocks == 0


def test_bad_arguments(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    with pytest.raises(ValueError, match="streams"):
        concurrent_decode_throughput(engine, streams=(0,))
    with pytest.raises(ValueError, match="max_new_tokens"):
        concurrent_decode_throughput(engine, max_new_tokens=0)
