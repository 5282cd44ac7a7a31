"""scripts/bench_vs_transformers.py: argument parsing, and one tiny random shape through the whole comparison
(weights folder, both engines, the limits, the table, the JSON). No timing assertions."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vs_transformers.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_vs_transformers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_defaults_and_quick(script):
    args = script.parse_args([])
    assert (args.shapes, args.dtypes) == (["smollm2", "llama1b"], ["float32", "bfloat16", "int8"])
    assert (args.n_prompt, args.n_gen, args.runs, args.load_runs) == (256, 64, 5, 2)
    quick = script.parse_args(["--quick", "--shapes", "tiny", "--dtypes", "bfloat16", "-n", "5"])
    assert (quick.shapes, quick.dtypes, quick.n_prompt, quick.n_gen, quick.runs) == (["tiny"], ["bfloat16"], 64, 5, 3)
    assert script.parse_args(["--load-runs", "0"]).load_runs == 0


@pytest.mark.parametrize("argv", [["--shapes", "gpt5"], ["--dtypes", "float8"], ["-n", "1"], ["--runs", "0"]])
def test_bad_arguments_exit_2(script, argv, capsys):
    with pytest.raises(SystemExit) as info:
        script.parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_llama1b_shape_is_llama_3_2_1b(script):
    shape = script.RANDOM_SHAPES["llama1b"]
    names = script._hf_names(shape)
    params = sum(torch.Size(s).numel() for s in names.values())
    assert 1.23e9 < params < 1.24e9                   # Llama-3.2-1B: 1.236B parameters with tied embeddings
    config = script._llama_config(shape)
    assert config.rope_parameters["rope_type"] == "llama3" and config.tie_word_embeddings


def test_tiny_shape_end_to_end(script, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert script.main(["--shapes", "tiny", "--dtypes", "float32", "-p", "8", "-n", "3", "--runs", "2",
                        "--load-runs", "0", "--threads", "1", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### tiny float32" in printed and "| decode t/s" in printed and "matmul-only limit" in printed
    assert "machine: " in printed and "load average" in printed
    report = json.loads(out.read_text())
    (res,) = report["results"]
    assert res["same_greedy_tokens"] == "8/8"      # same weights, same greedy tokens: the comparison is fair
    for metric in ("decode_tps", "prefill_tps", "ttft_ms"):
        for engine in ("minillama", "transformers"):
            assert res[metric][engine]["median"] > 0 and res[metric][engine]["n"] == 2
    assert res["load_s"] == {"minillama": None, "transformers": None}
    assert res["matmul_only_tps"]["median"] > 0 and report["bandwidth"] > 0
    # the folder is kept and reused by the next run
    assert (tmp_path / "tiny" / "model.safetensors").is_file() and (tmp_path / "tiny" / "config.json").is_file()


def test_load_probe_in_process(script, tmp_path):
    folder = script.build_random_folder(tmp_path / "tiny", script.RANDOM_SHAPES["tiny"])
    for engine in ("minillama", "transformers"):
        probe = script.probe_load(engine, folder, "float32")
        assert probe["load_s"] > 0 and probe["peak_rss"] >= probe["baseline_rss"] > 0


def test_int8_rows_compare_against_transformers_float32(script, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert script.main(["--shapes", "tiny", "--dtypes", "int8", "-p", "8", "-n", "3", "--runs", "1",
                        "--load-runs", "1", "--threads", "1", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### tiny int8 (transformers in float32)" in printed
    (res,) = json.loads(out.read_text())["results"]
    float32_bytes = 4 * sum(torch.Size(s).numel() for s in script._hf_names(script.RANDOM_SHAPES["tiny"]).values())
    assert res["model_bytes"] < 0.35 * float32_bytes          # int8 weights, counted at their packed size
    assert res["load_s"]["minillama"]["median"] > 0 and res["peak_rss_mib"]["transformers"]["n"] == 1
