"""`minillama bench` end to end on stories260K (tiny -p/-n/--repeat), and the measurement helpers it is built on.
No timing assertions: only that every row is there, finite and positive, and that the JSON has its schema."""
from __future__ import annotations

import json
import math

import pytest
import torch

from minillama.bench import Summary, decode_matmuls, markdown_table, weight_bytes_per_token
from minillama.bench.measure import IdsOnlyTokenizer, bench_prompt, eos_disabled, standard_variants
from minillama.cli import main
from minillama.errors import SamplerArgumentError

VARIANT_ROWS = ["drugs all sites", "capture all layers", "chain (llama.cpp default)", "entropy", "alpha",
                "alpha + lookahead", "rdnet"]


def test_bench_table_and_json_on_stories260k(stories_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "-m", str(stories_dir), "-p", "8", "-n", "3", "-r", "1", "--threads", "1",
                 "--streams", "1,2", "--json", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    table = captured.out
    assert table.startswith("| model")
    for test in ["pp8", "tg3", "ttft pp8", "load", "peak RSS", "tg limit: matmul-only", "tg ceiling: bandwidth",
                 "tg3 x1 streams", "tg3 x2 streams"] + [f"tg3 {v}" for v in VARIANT_ROWS]:
        assert f"| {test} " in table, test
    assert "bench: [1/1] greedy" in captured.err          # progress goes to stderr, not into the table

    report = json.loads(out.read_text())
    assert {"model", "source", "size_bytes", "params", "dtype", "quant", "threads", "torch", "n_prompt", "n_gen",
            "repeat", "rows"} <= set(report)
    assert report["dtype"] == "float32" and report["n_prompt"] == 8 and report["n_gen"] == 3
    assert report["params"] > 200_000
    rows = {r["test"]: r for r in report["rows"]}
    for row in rows.values():
        assert {"test", "unit", "median", "spread", "stdev", "mean", "n", "vs_greedy", "note"} <= set(row)
        assert math.isfinite(row["median"]) and row["median"] > 0, row
    assert rows["tg3"]["vs_greedy"] is None
    for v in VARIANT_ROWS:
        assert math.isfinite(rows[f"tg3 {v}"]["vs_greedy"])
    assert rows["peak RSS"]["unit"] == "MiB"


def test_bench_variant_selection_and_no_limits(stories_dir, capsys):
    assert main(["bench", "-m", str(stories_dir), "-p", "4", "-n", "2", "-r", "2", "--variants", "drugs",
                 "--no-limits", "--streams", ""]) == 0
    table = capsys.readouterr().out
    assert "| tg2 drugs all sites " in table and "entropy" not in table and "matmul-only" not in table


@pytest.mark.parametrize("argv, message", [(["-n", "1"], "-n/--n-gen"), (["-r", "0"], "-r/--repeat"),
                                           (["--variants", "bogus"], "bogus")])
def test_bench_bad_arguments_are_named(stories_dir, capsys, argv, message):
    assert main(["bench", "-m", str(stories_dir), "-p", "4", "--no-limits", "--streams", ""] + argv) == 1
    assert message in capsys.readouterr().err


def test_variant_keys():
    assert [v.key for v in standard_variants()] == ["greedy", "drugs", "capture", "chain", "entropy", "alpha",
                                                    "alpha-lookahead", "rdnet"]
    assert [v.key for v in standard_variants(["rdnet", "greedy"])] == ["greedy", "rdnet"]
    with pytest.raises(SamplerArgumentError, match="nope"):
        standard_variants(["nope"])


def test_decode_matmuls_cover_every_weight_product(stories_dir):
    from minillama import Engine
    engine = Engine.from_pretrained(stories_dir)
    cfg = engine.config
    products = decode_matmuls(engine.model, cfg.vocab_size)
    assert len(products) == 4 * cfg.n_layers + 1                # fused qkv, o, fused gate/up, down; the head
    linear_bytes = sum(m.weight.numel() * 4 for m in engine.model.modules() if isinstance(m, torch.nn.Linear))
    head_bytes = cfg.vocab_size * cfg.dim * 4
    assert weight_bytes_per_token(engine.model, cfg.vocab_size) == linear_bytes + (head_bytes if cfg.tie_embeddings
                                                                                  else 0)
    x = {n: torch.randn(1, n) for n, _, _ in products}
    assert products[-1][1](x[products[-1][0]]).shape == (1, cfg.vocab_size)


def test_eos_disabled_restores_the_tokenizer(stories_dir):
    from minillama import Engine
    engine = Engine.from_pretrained(stories_dir)
    tok = engine.tokenizer
    with eos_disabled(engine):
        assert engine.tokenizer.eos_ids == () and engine.tokenizer.vocab_size == tok.vocab_size
        c = engine.generate(bench_prompt(tok.vocab_size, 5, tok.bos_id), max_new_tokens=40)
        assert c.finish_reason == "length" and len(c.tokens) == 40
    assert engine.tokenizer is tok


def test_ids_only_tokenizer_runs_a_weights_only_engine(stories_dir):
    from minillama import Engine
    from minillama.loading import load_checkpoint
    from minillama.model import build_model
    ckpt = load_checkpoint(stories_dir, dtype=torch.float32, with_tokenizer=False)
    engine = Engine(build_model(ckpt.config, ckpt.tensors, dtype=torch.float32, device=torch.device("cpu")),
                    IdsOnlyTokenizer(ckpt.config.vocab_size))
    c = engine.generate([1, 2, 3], max_new_tokens=5)
    assert len(c.tokens) == 5 and c.text == ""


def test_summary_and_markdown():
    s = Summary.of([3.0, 1.0, 2.0])
    assert (s.median, s.spread, s.n) == (2.0, 1.0, 3)
    assert s.format(1) == "2.0 ± 1.0"
    assert Summary.of([5.0]).stdev == 0.0
    table = markdown_table(["name", "value"], [["a", "1.5"], ["bb", "10.25"]]).splitlines()
    assert table[0] == "| name | value |" and table[1] == "| ---- | ----: |" and table[3] == "| bb   | 10.25 |"
    assert bench_prompt(100, 6, 1, seed=3)[0] == 1 and len(bench_prompt(100, 6, None)) == 6


def test_bench_int8_rows(stories_dir, tmp_path, capsys):
    out = tmp_path / "int8.json"
    assert main(["bench", "-m", str(stories_dir), "-p", "4", "-n", "2", "-r", "1", "--quant", "int8",
                 "--variants", "none", "--streams", "", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "float32 int8" in table and "| tg limit: matmul-only " in table
    report = json.loads(out.read_text())
    assert report["quant"] == "int8" and report["params"] > 200_000     # packed weights still count as parameters
    from minillama import Engine
    engine = Engine.from_pretrained(stories_dir)
    assert report["size_bytes"] < weight_bytes_per_token(engine.model, engine.config.vocab_size)  # int8 < float32
