"""Pre-tokenization: cutting text into the words that BPE then merges inside.

Tokenizers write their split patterns for Oniguruma / fancy-regex, which know Unicode properties (`\\p{L}`,
`\\p{N}`) that Python's `re` does not. Rather than depend on the third-party `regex` package we translate those
patterns: each property becomes an explicit character class built once from `unicodedata`, and `\\s`/`\\S` become
the Unicode White_Space set (Python's own `\\s` also matches the separators U+001C..U+001F, Oniguruma's does not).
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Callable

from ..errors import TokenizerError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

# Unicode White_Space, which is what Oniguruma and fancy-regex mean by \s.
_WHITE_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"

Splitter = Callable[[str], list[str]]


@functools.cache
def _category_runs() -> tuple[tuple[int, int, str], ...]:
    """(first, last, category) for every maximal run of code points sharing a general category; one scan, cached."""
    runs: list[tuple[int, int, str]] = []
    start, current = 0, unicodedata.category("\0")
    for cp in range(1, sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat != current:
            runs.append((start, cp - 1, current))
            start, current = cp, cat
    runs.append((start, sys.maxunicode, current))
    return tuple(runs)


@functools.cache
def _category_class(prefix: str) -> str:
    """The body of a character class for every code point whose general category starts with prefix ("L", "Nd")."""
    ranges: list[tuple[int, int]] = []
    for first, last, cat in _category_runs():
        if cat.startswith(prefix):
            if ranges and ranges[-1][1] == first - 1:
                ranges[-1] = (ranges[-1][0], last)
            else:
                ranges.append((first, last))
    if not ranges:
        raise TokenizerError(f"unknown Unicode property \\p{{{prefix}}} in a pre-tokenizer pattern")

    def esc(cp: int) -> str:
        return f"\\U{cp:08x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


_ESCAPE = re.compile(r"\\p\{(\w+)\}|\\P\{(\w+)\}|\\p(\w)|\\[sS]|\\.|\[|\]|.", re.DOTALL)


def translate_pattern(pattern: str) -> str:
    """Rewrite an Oniguruma/fancy-regex pattern into one Python's `re` compiles with the same meaning."""
    out: list[str] = []
    in_class = False
    class_tokens: list[str] = []  # tokens since the class opened: a "]" right after "[" or "[^" is a literal
    for m in _ESCAPE.finditer(pattern):
        tok = m.group(0)
        prop = m.group(1) or m.group(3)
        if prop:
            body = _category_class(prop)
            out.append(body if in_class else f"[{body}]")
        elif m.group(2):
            if in_class:
                raise TokenizerError(f"pre-tokenizer pattern {pattern!r}: \\P{{..}} inside [...] is not supported")
            out.append(f"[^{_category_class(m.group(2))}]")
        elif tok == "\\s":
            out.append(_WHITE_SPACE if in_class else f"[{_WHITE_SPACE}]")
        elif tok == "\\S":
            if in_class:
                raise TokenizerError(f"pre-tokenizer pattern {pattern!r}: \\S inside [...] is not supported")
            out.append(f"[^{_WHITE_SPACE}]")
        else:
            if tok == "[" and not in_class:
                in_class = True
                class_tokens = []
            elif tok == "]" and in_class and class_tokens not in ([], ["^"]):
                in_class = False
            out.append(tok)
        if in_class and tok != "[":
            class_tokens.append(tok)
    return "".join(out)


@functools.lru_cache(maxsize=16)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(translate_pattern(pattern))
    except re.error as exc:
        raise TokenizerError(f"pre-tokenizer pattern {pattern!r} does not compile: {exc}") from exc


def split_isolated(pattern: str) -> Splitter:
    """Matches become pieces of their own and so do the stretches between them (HF `Split`, behavior Isolated)."""
    regex = compile_pattern(pattern)

    def split(text: str) -> list[str]:
        pieces: list[str] = []
        last = 0
        for m in regex.finditer(text):
            if m.start() > last:
                pieces.append(text[last:m.start()])
            if m.end() > m.start():
                pieces.append(m.group(0))
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        return pieces

    return split


def split_removed(pattern: str) -> Splitter:
    """Matches are dropped, the stretches between them are the pieces (HF `Split`, behavior Removed)."""
    regex = compile_pattern(pattern)
    return lambda text: [p for p in regex.split(text) if p]


def split_digits(individual: bool) -> Splitter:
    """HF `Digits`: numeric characters (\\p{N}) apart from the rest, each alone or as runs."""
    return split_isolated(r"\p{N}" if individual else r"\p{N}+")


def chain(splitters: list[Splitter]) -> Splitter:
    """Apply each splitter to every piece the previous one produced (HF `Sequence` of pre-tokenizers)."""

    def split(text: str) -> list[str]:
        pieces = [text]
        for splitter in splitters:
            pieces = [sub for piece in pieces for sub in splitter(piece)]
        return pieces

    return split


# llama.cpp's names in "tokenizer.ggml.pre" and the splits it applies for each (llama-vocab.cpp).
GGUF_PRE_TOKENIZERS: dict[str, Callable[[], Splitter]] = {
    "default": lambda: split_isolated(GPT2_PATTERN),
    "gpt-2": lambda: split_isolated(GPT2_PATTERN),
    "llama-bpe": lambda: split_isolated(LLAMA3_PATTERN),
    "llama3": lambda: split_isolated(LLAMA3_PATTERN),
    "qwen2": lambda: split_isolated(QWEN2_PATTERN),
    "smollm": lambda: chain([split_digits(individual=True), split_isolated(GPT2_PATTERN)]),
    "starcoder": lambda: chain([split_digits(individual=True), split_isolated(GPT2_PATTERN)]),
    "refact": lambda: chain([split_digits(individual=True), split_isolated(GPT2_PATTERN)]),
}
# Pre-tokenizers after which llama.cpp takes a word that is a whole token as is, without merging (Llama 3's
# tokenizer.json says the same with "ignore_merges": true).
GGUF_IGNORE_MERGES = frozenset({"llama-bpe", "llama3"})
