"""Chat with a model: answers stream as they are generated; the conversation and its KV cache carry across turns.

Each input line is one message; lines starting with / are commands (/help lists them). Ctrl-C stops the current
answer (the partial answer stays in the conversation, marked as interrupted); Ctrl-C at the prompt, Ctrl-D or
/quit leave.

With stdin a terminal, the prompt is "> " with line editing. With stdin piped (`minillama chat < questions.txt`),
there is no prompt and no banner: stdout holds only the answers, one per input message, each ending with a newline;
notices and command output go to stderr. Reading stops at end of input.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from ..drugs import Drugs, drugs_from_args, parse_drugs_command
from ..errors import MinillamaError
from . import common

COMMANDS_HELP = """commands:
  /help                          this list
  /reset                         forget the conversation (the system prompt stays)
  /system TEXT                   set the system prompt (the conversation stays)
  /sampler                       show the active sampler, its chain in order
  /sampler key=value ...         change chain settings, e.g. /sampler top_k=20 temp=0.5
  /sampler entropy|alpha|rdnet [key=value ...]
                                 an adaptive sampler over the chain
  /sampler chain [key=value ...] back to the plain chain
  /drugs                         show the noise (DRµGS) settings
  /drugs key=value ... | off     change them, e.g. /drugs theta=0.3 sites=K,V
  /shower                        recompute the drugged cache positions clean (cold shower)
  /stats                         timing of the last answer, and the sampler's regimes when it has them
  /save FILE                     save the conversation (messages, model, sampler, drugs) as JSON
  /quit                          leave (Ctrl-D too)
Ctrl-C stops an answer; at the prompt it leaves."""

PROMPT = "> "
INTERRUPTED_MARK = "interrupted"     # key set on an assistant message that Ctrl-C cut short


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", default=None, help="system prompt")
    parser.add_argument("--stats", action="store_true", help="print llama.cpp-style timing after each answer")
    parser.add_argument("--max-new-tokens", type=int, default=1024, metavar="K",
                        help="longest answer in tokens (default: 1024)")
    parser.add_argument("--cold-shower", action="store_true",
                        help="before reading each message, recompute the positions that noise touched, clean "
                             "(always on when the drugs set cold_shower_every)")
    common.add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    setup = common.SamplerSetup.from_args(args)
    drugs = drugs_from_args(args)
    engine = common.open_engine(args)
    session = ChatSession(engine, setup, drugs, model=args.model or common.DEFAULT_MODEL, system=args.system,
                          max_new_tokens=args.max_new_tokens, show_stats=args.stats, cold_shower=args.cold_shower)
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
        where = "" if engine.source == session.model else f" ({engine.source})"
        print(f"minillama chat: {session.model}{where}; sampler: {session.setup.describe()}\n"
              f"/help for commands, Ctrl-D to leave", file=sys.stderr)
    while True:
        session.shower_if_due()
        line = _read_line(interactive)
        if line is None:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        try:
            session.answer(line)
        except MinillamaError as error:     # e.g. the conversation outgrew the context: say so, keep chatting
            print(f"error: {error}", file=sys.stderr)


class ChatSession:
    """The conversation, the sampler and drugs in use, and what each command and message does to them."""

    def __init__(self, engine, setup: common.SamplerSetup, drugs: Drugs | None, *, model: str,
                 system: str | None, max_new_tokens: int, show_stats: bool, cold_shower: bool,
                 out: TextIO | None = None, err: TextIO | None = None):
        self.engine = engine
        self.setup = setup
        self.sampler = setup.build(engine.tokenizer)
        self.drugs = drugs
        self.model = model
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self.max_new_tokens = max_new_tokens
        self.show_stats = show_stats
        self.cold_shower = cold_shower
        self.last = None                         # the last answer's Completion
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    # ---- messages ------------------------------------------------------------------------------------------------
    def answer(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        conversation = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        stream = None
        interrupted = False
        try:
            stream = self.engine.chat(conversation, stream=True, max_new_tokens=self.max_new_tokens,
                                      sampler=self.sampler, seed=common.resolve_seed(self.setup),
                                      drugs=self.drugs, records=True)
            for piece in stream:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            interrupted = True
            if stream is not None:
                stream.close()     # idempotent: the engine may already have closed it
        except MinillamaError:
            self.messages.pop()    # the message was not answered; leave the conversation as it was
            raise
        self.out.write("\n")
        self.out.flush()
        if stream is None:         # interrupted while the prompt was being read in: nothing was said
            self.messages.pop()
            print("[interrupted]", file=self.err)
            return
        self.last = stream.completion
        reply: dict[str, Any] = {"role": "assistant", "content": self.last.text}
        if interrupted or self.last.finish_reason == "interrupted":
            reply[INTERRUPTED_MARK] = True
            print("[interrupted]", file=self.err)
        self.messages.append(reply)
        if self.show_stats:
            common.print_timings(self.last.stats, self.err)

    def shower_if_due(self) -> None:
        """The cold shower while waiting for input: recompute clean what noise touched, before the next message."""
        if self.drugs is not None and (self.cold_shower or getattr(self.drugs, "cold_shower_every", None)):
            recomputed = self.engine.cold_shower()
            if recomputed and self.show_stats:
                print(f"cold shower: recomputed {recomputed} positions", file=self.err)

    # ---- commands ------------------------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run one /command; False means leave. A bad command or argument says why and changes nothing."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        handler = getattr(self, f"_cmd_{name}", None) if name.isidentifier() else None
        if handler is None:
            print(f"unknown command /{name}; /help lists the commands", file=self.err)
            return True
        try:
            return handler(rest) is not False
        except MinillamaError as error:
            print(f"error: {error}", file=self.err)
            return True

    def _cmd_help(self, rest: str) -> None:
        print(COMMANDS_HELP, file=self.err)

    def _cmd_quit(self, rest: str) -> bool:
        return False

    _cmd_exit = _cmd_quit

    def _cmd_reset(self, rest: str) -> None:
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.engine.reset_chat()
        self.last = None
        print("conversation reset", file=self.err)

    def _cmd_system(self, rest: str) -> None:
        if not rest:
            current = next((m["content"] for m in self.messages if m["role"] == "system"), None)
            print(f"system prompt: {current!r}" if current else "no system prompt; /system TEXT sets one",
                  file=self.err)
            return
        # The engine re-reads the conversation from where it changed, so the old answers stay and stay cached
        # up to the system turn.
        self.messages = [{"role": "system", "content": rest}] + [m for m in self.messages if m["role"] != "system"]
        print("system prompt set", file=self.err)

    def _cmd_sampler(self, rest: str) -> None:
        if rest:
            setup = self.setup.command(rest, self.engine.tokenizer)
            sampler = setup.build(self.engine.tokenizer)
            self.setup, self.sampler = setup, sampler
        print(f"sampler: {self.setup.describe(self.engine.tokenizer)}", file=self.err)

    def _cmd_drugs(self, rest: str) -> None:
        if rest:
            self.drugs = parse_drugs_command(rest, self.drugs)
        print(f"drugs: {self.drugs.describe() if self.drugs is not None else 'off'}", file=self.err)

    def _cmd_shower(self, rest: str) -> None:
        print(f"cold shower: recomputed {self.engine.cold_shower()} positions", file=self.err)

    def _cmd_stats(self, rest: str) -> None:
        if self.last is None:
            print("no answer yet", file=self.err)
            return
        common.print_timings(self.last.stats, self.err)
        # entropix-style samplers record a "regime" per step, AlphaSampler a "state"
        regimes = Counter(r.get("regime") or r.get("state") for r in self.last.records
                          if r.get("regime") or r.get("state"))
        if regimes:
            counts = ", ".join(f"{name} {count}" for name, count in regimes.most_common())
            print(f"sampler regimes: {counts}", file=self.err)

    def _cmd_save(self, rest: str) -> None:
        if not rest:
            print("usage: /save FILE", file=self.err)
            return
        path = Path(rest).expanduser()
        record = {"model": self.model, "source": self.engine.source, "sampler": self.setup.to_json(),
                  "drugs": common.drugs_json(self.drugs), "messages": self.messages}
        try:
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as error:
            print(f"error: cannot write {path}: {error.strerror or error}", file=self.err)
            return
        print(f"saved {len(self.messages)} messages to {path}", file=self.err)


def _read_line(interactive: bool) -> str | None:
    """The next input line, or None at end of input. Ctrl-C here propagates (the program leaves with 130)."""
    if interactive and sys.stdout.isatty():
        try:
            return input(PROMPT)
        except EOFError:
            print(file=sys.stderr)
            return None
    if interactive:                  # stdout redirected: keep the prompt out of it
        print(PROMPT, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line if line else None


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it is what gives input() history and editing)
    except ImportError:
        pass
