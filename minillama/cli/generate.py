"""One-shot completion of a prompt (no chat template): the text streams to stdout as it is generated.

With -n N > 1 the N completions (forked from one prefill of the prompt) are printed one after the other, each under a
"--- choice i (finish reason) ---" line on stderr. With --json, stdout gets one JSON object instead:
{model, source, prompt, seed, sampler, drugs, choices: [{text, tokens, finish_reason}], stats}.
On a terminal a newline follows the text; piped, the text is exactly what the model wrote.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..drugs import drugs_from_args
from . import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser)
    parser.add_argument("-p", "--prompt", required=True, metavar="TEXT", help="the text to continue; - reads stdin")
    parser.add_argument("-n", dest="n", type=int, default=1, metavar="N",
                        help="how many completions to sample (default: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="K",
                        help="most tokens to generate per completion (default: 256)")
    parser.add_argument("--stop", action="append", default=None, metavar="S",
                        help="stop when the text contains S (repeatable); S itself is left out")
    parser.add_argument("--json", action="store_true", help="print one JSON object with choices and stats")
    parser.add_argument("--stats", action="store_true", help="print llama.cpp-style timing to stderr")
    common.add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    setup = common.SamplerSetup.from_args(args)
    drugs = drugs_from_args(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    engine = common.open_engine(args)
    seed = common.resolve_seed(setup)
    stream = engine.stream(prompt, max_new_tokens=args.max_new_tokens, sampler=setup.build(engine.tokenizer),
                           seed=seed, stop=args.stop, n=args.n, drugs=drugs)
    live = args.n == 1 and not args.json
    interrupted = False
    try:
        for piece in stream:          # with n > 1 this steps every sample; only the first one's text is yielded
            if live:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        stream.close()
    completion = stream.completion
    if args.json:
        json.dump({"model": args.model or common.DEFAULT_MODEL, "source": engine.source, "prompt": prompt,
                   "seed": seed, "sampler": setup.to_json(), "drugs": common.drugs_json(drugs),
                   "choices": [{"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason}
                               for c in completion.choices],
                   "stats": completion.stats.as_dict()}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif not live:
        for i, choice in enumerate(completion.choices):
            sys.stdout.flush()
            print(f"--- choice {i} ({choice.finish_reason}) ---", file=sys.stderr, flush=True)
            sys.stdout.write(choice.text + "\n")
    elif sys.stdout.isatty():
        sys.stdout.write("\n")
    if args.stats:
        sys.stdout.flush()
        common.print_timings(completion.stats, sys.stderr)
    return 130 if interrupted else 0
