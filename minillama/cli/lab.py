"""The sampler lab: every sampler and DRµGS dose on the same prompts and seeds; diversity, perplexity, collapse, cost.

For each configuration (see --samplers) it draws --n samples per prompt and reports distinct-1/2/3 and self-BLEU-4
across them, unique samples, perplexity of each under the clean model, rep-4 (RD-NET's char-level and SimCTG's
word-level), the longest repeated word n-gram, tokens/s and the slowdown vs greedy, and the share of steps in each
regime/state for the adaptive samplers. Writes a Markdown table to stdout, and lab.json plus frontier.png to --out.

--long-run runs RD-NET's protocol instead: one prompt and seed, greedy / vanilla / RD-NET / DRµGS side by side for
--long-tokens tokens with context shift, rep-4 every --long-every tokens (long_run.json, long_run.png).

Plots need matplotlib: pip install 'minillama[plot]'.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SamplerArgumentError
from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser)
    parser.add_argument("--prompts", metavar="FILE", default=None,
                        help="prompts: a .json list of strings or {text, kind}, or a text file with one per line "
                             "(default: the 10 shipped with minillama)")
    parser.add_argument("--max-prompts", type=int, default=None, metavar="K", help="use only the first K prompts")
    parser.add_argument("--samplers", metavar="LIST", default=None,
                        help="comma-separated configurations and families (baseline, drugs, adaptive, rdnet); "
                             "default: all. --list-samplers shows them")
    parser.add_argument("--list-samplers", action="store_true", help="print the configurations and exit")
    parser.add_argument("--n", type=int, default=8, metavar="N", help="samples per prompt (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="K",
                        help="tokens per sample (default: 256)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="base seed; prompt i uses seed + i (default: 0)")
    parser.add_argument("--template", choices=("auto", "chat", "raw"), default="auto",
                        help="wrap prompts in the chat template: auto = when the model has one (default)")
    parser.add_argument("--out", metavar="DIR", default="lab-out",
                        help="where lab.json and the plots go (default: ./lab-out)")
    parser.add_argument("--tag", default=None, help="file name prefix inside --out (default: the model's name)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (tiny models run faster with 1 on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    long = parser.add_argument_group("long run (RD-NET's protocol)")
    long.add_argument("--long-run", action="store_true", help="run the long-run protocol instead of the table")
    long.add_argument("--long-tokens", type=int, default=20_000, metavar="N", help="tokens per arm (default 20000)")
    long.add_argument("--long-every", type=int, default=1_000, metavar="N", help="rep-4 every N tokens (default 1000)")
    long.add_argument("--long-context", type=int, default=256, metavar="N",
                      help="context length for the long run, shifted when full (default 256; -c overrides)")
    long.add_argument("--long-arms", metavar="LIST", default=None,
                      help="arms: greedy, vanilla, rdnet, rdnet-greedy, drugs (default: all five)")
    long.add_argument("--long-prompt", metavar="TEXT", default=None, help="the long run's prompt")


def run(args: argparse.Namespace) -> int:
    from ..lab import configs as lab_configs
    if args.list_samplers:
        for c in lab_configs.CONFIGS.values():
            print(f"{c.name:22s} {c.family:9s} {c.description}")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise SamplerArgumentError(f"--threads must be >= 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.long_run:
        return _long_run(args, out)
    from ..lab import run as lab_run
    chosen = lab_configs.select(args.samplers)
    prompts = lab_run.load_prompts(args.prompts)
    if args.max_prompts is not None:
        if args.max_prompts < 1:
            raise SamplerArgumentError(f"--max-prompts must be >= 1, got {args.max_prompts}")
        prompts = prompts[:args.max_prompts]
    settings = lab_run.LabSettings(n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                   template=args.template)
    engine = common.open_engine(args)
    report = lab_run.run_lab(engine, chosen, prompts, settings, progress=not args.no_progress)
    return _publish(report, args, engine, out, "lab", lab_run.format_table, "frontier", lab_run.plot_frontier)


def _long_run(args: argparse.Namespace, out: Path) -> int:
    from ..lab import longrun
    arms = longrun.select_arms(args.long_arms)
    args.ctx_size = args.ctx_size or args.long_context
    args.context_shift = True
    engine = common.open_engine(args)
    report = longrun.long_run(engine, arms, prompt=args.long_prompt or longrun.DEFAULT_PROMPT,
                              tokens=args.long_tokens, every=args.long_every, seed=args.seed,
                              progress=not args.no_progress)
    return _publish(report, args, engine, out, "long_run", longrun.format_long_table, "long_run",
                    longrun.plot_long_run)


def _publish(report: dict, args: argparse.Namespace, engine, out: Path, name: str, table, plot_name: str,
             plot) -> int:
    """Print the report's table; write it as OUT/TAG-NAME.json and its plot as OUT/TAG-PLOT_NAME.png (or say
    which extra the plot needs)."""
    from ..lab import run as lab_run
    report["command"] = sys.argv[1:]
    tag = args.tag or lab_run.model_label(engine.source)
    json_path = lab_run.write_json(report, out / f"{tag}-{name}.json")
    print(table(report))
    print(f"wrote {json_path}", file=sys.stderr)
    written = plot(report, out / f"{tag}-{plot_name}.png")
    print(f"wrote {written}" if written else lab_run.PLOT_HINT, file=sys.stderr)
    return 0
