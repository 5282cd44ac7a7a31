"""Time one Linear (1 token and a 64-token prefill) with every int8/int4 CPU kernel we could use, at real shapes.

    python docs/quant/bench_kernels.py [--rounds 5] [--torchao /path/to/torchao]

Rounds are interleaved (every kernel once per round, shapes in turn) and the median is reported, because the
machine is shared. Prints a Markdown table: milliseconds per call and speed-up over float32 F.linear.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {  # (in, out)
    "SmolLM2-135M": [(576, 1728), (576, 576), (576, 3072), (1536, 576), (576, 49152)],
    "Llama-1B": [(2048, 3072), (2048, 2048), (2048, 16384), (8192, 2048), (2048, 128256)],
}


def kernels(w: torch.Tensor, torchao_ok: bool) -> dict:
    out_f, in_f = w.shape
    scale = w.abs().amax(1).clamp_min(1e-8) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(out_f, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    # int4, groups of 32 along K, asymmetric (what the int4 CPU kernel wants)
    g = 32
    wg = w.reshape(out_f, in_f // g, g)
    lo, hi = wg.amin(-1), wg.amax(-1)
    s4 = ((hi - lo) / 15).clamp_min(1e-8)
    q4 = torch.round((wg - lo[..., None]) / s4[..., None]).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
    p4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
    zeros = lo + 8 * s4                        # the kernel computes (q - 8) * scale + zero
    sz = torch.stack([s4, zeros], -1).transpose(0, 1).contiguous()   # [K/g, N, 2]
    ks = {
        "float32 F.linear": lambda x: F.linear(x, w),
        "fbgemm linear_dynamic": lambda x: torch.ops.quantized.linear_dynamic(x, packed, True),
        "aten _weight_int8pack_mm": lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scale),
        "aten _weight_int4pack_mm_for_cpu": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p4, g, sz),
    }
    if torchao_ok:
        from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_)
        for name, cfg in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                          ("torchao int8 dyn-act int8 weight", Int8DynamicActivationInt8WeightConfig())):
            lin = torch.nn.Linear(in_f, out_f, bias=False)
            lin.weight.data.copy_(w)
            try:
                quantize_(lin, cfg)
                ks[name] = lin
            except Exception as e:  # report and move on: a config this build cannot run
                print(f"# {name}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
    return ks


def timed(fn, x, reps: int) -> float:
    t = time.perf_counter()
    fn(x)
    if time.perf_counter() - t > 0.2:      # a slow kernel: one more call is enough to time it
        reps = 1
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t) / reps * 1e3


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--torchao", default=None, help="a folder holding the torchao package (pip --target)")
    args = ap.parse_args()
    torchao_ok = False
    if args.torchao:
        sys.path.insert(0, args.torchao)
        try:
            import torchao  # noqa: F401
            torchao_ok = True
        except Exception as e:
            print(f"# torchao unusable: {e}", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, engine {torch.backends.quantized.engine}, "
          f"cpu {torch.backends.cpu.get_cpu_capability()}\n")
    for model, shapes in SHAPES.items():
        losing: set[str] = set()
        for tokens in (1, 64):
            results: dict[tuple, list[float]] = {}
            built = {s: kernels(torch.randn(s[1], s[0]) * 0.02, torchao_ok) for s in shapes}
            # a kernel slower than float32 at every shape for one token is not timed again on a prefill
            built = {s: {n: k for n, k in ks.items() if n not in losing} for s, ks in built.items()}
            xs = {s: torch.randn(tokens, s[0]) for s in shapes}
            for _ in range(args.rounds):
                for s in shapes:
                    for name, fn in built[s].items():
                        reps = max(3, int(2e8 / (s[0] * s[1] * tokens)))
                        try:
                            results.setdefault((s, name), []).append(timed(fn, xs[s], min(reps, 200)))
                        except Exception as e:
                            results[(s, name)] = [float("nan")]
                            print(f"# {name} {s}: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
            names = list(next(iter(built.values())))
            print(f"### {model}, {tokens} token{'s' if tokens > 1 else ''}: ms per call (speed-up vs float32)\n")
            print("| in→out | " + " | ".join(names) + " |")
            print("|---" * (len(names) + 1) + "|")
            for s in shapes:
                base = statistics.median(results[(s, names[0])])
                cells = []
                for n in names:
                    m = statistics.median(results[(s, n)])
                    cells.append(f"{m:.3f} ({base / m:.2f}×)")
                print(f"| {s[0]}→{s[1]} | " + " | ".join(cells) + " |")
            print()
            if tokens == 1:
                losing = {n for n in names[1:] if all(statistics.median(results[(s, n)]) >
                                                      statistics.median(results[(s, names[0])]) for s in shapes)}
                if losing:
                    print(f"(slower than float32 at every shape, not timed on the prefill: {', '.join(sorted(losing))})\n")
            del built


if __name__ == "__main__":
    main()
