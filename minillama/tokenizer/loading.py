"""Building the right tokenizer from a model folder or from GGUF metadata.

A folder may hold tokenizer.json (Hugging Face), tokenizer.model (SentencePiece, or tiktoken ranks for Llama 3),
and the small JSON files that say which ids begin and end a text: tokenizer_config.json, special_tokens_map.json,
generation_config.json, config.json. Byte-level tokenizer.json wins (it carries the added tokens and the exact
pre-tokenizer); otherwise tokenizer.model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import TokenizerError
from .base import AddedToken, Tokenizer
from .bpe import ByteLevelBPETokenizer, Normalizer, unicode_normalizer
from .chat import ChatTemplate
from .pretokenize import (
    GGUF_IGNORE_MERGES, GGUF_PRE_TOKENIZERS, GPT2_PATTERN, Splitter, chain, split_digits, split_isolated, split_removed,
)
from .spm import SentencePieceTokenizer, SpmVocabTokenizer, load_sentencepiece
from .tiktoken_bpe import TiktokenTokenizer, is_tiktoken_file

# Texts that end a turn or a document in the families we run. Like llama.cpp (its "end of generation" list) we
# stop on any of them that the vocabulary holds as a special token, even when the config names only one.
END_OF_GENERATION_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None


class _FolderFacts:
    """The begin/end/add-BOS facts scattered over a model folder's small JSON files."""

    def __init__(self, folder: Path) -> None:
        def optional(name: str) -> dict[str, Any]:
            path = folder / name
            data = _read_json(path) if path.is_file() else {}
            if not isinstance(data, dict):
                raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
            return data

        self.tokenizer_config = optional("tokenizer_config.json")
        self.special_tokens_map = optional("special_tokens_map.json")
        self.generation_config = optional("generation_config.json")
        self.model_config = optional("config.json")

    @staticmethod
    def _text(value: Any) -> str | None:
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    def token_text(self, role: str) -> str | None:
        """The text of the bos/eos token as tokenizer_config.json or special_tokens_map.json name it."""
        key = f"{role}_token"
        return self._text(self.tokenizer_config.get(key)) or self._text(self.special_tokens_map.get(key))

    def token_ids(self, role: str) -> list[int]:
        """bos/eos ids as generation_config.json and config.json list them (an int or a list of ints)."""
        ids: list[int] = []
        for source in (self.generation_config, self.model_config):
            value = source.get(f"{role}_token_id")
            ids += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]
        return ids

    def added_tokens(self) -> list[AddedToken]:
        decoder = self.tokenizer_config.get("added_tokens_decoder") or {}
        return [
            AddedToken(t["content"], int(i), bool(t.get("special", True)), bool(t.get("lstrip")), bool(t.get("rstrip")))
            for i, t in decoder.items()
            if isinstance(t, dict) and isinstance(t.get("content"), str)
        ]

    def add_bos(self) -> bool | None:
        value = self.tokenizer_config.get("add_bos_token")
        return value if isinstance(value, bool) else None

    def chat_template_source(self) -> str | None:
        value = self.tokenizer_config.get("chat_template")
        if isinstance(value, list):  # several named templates: the default one is the chat template
            value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
        return value if isinstance(value, str) else None


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face-style model folder (or Meta's layout with tokenizer.model)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TokenizerError(
            f"{model_dir}: not a folder; expected a model folder holding tokenizer.json or tokenizer.model"
        )
    facts = _FolderFacts(model_dir)
    tokenizer_json = model_dir / "tokenizer.json"
    spec = _read_json(tokenizer_json) if tokenizer_json.is_file() else None
    if spec is not None and _is_byte_level(spec):
        try:
            return _from_tokenizer_json(spec, facts, tokenizer_json)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TokenizerError(f"{tokenizer_json}: malformed tokenizer.json ({type(exc).__name__}: {exc})") from None
    for model_file in (model_dir / "tokenizer.model", model_dir / "original" / "tokenizer.model"):
        if model_file.is_file():
            return _from_tokenizer_model(model_file, facts)
    if spec is not None:
        kind = (spec.get("model") or {}).get("type")
        raise TokenizerError(
            f"{tokenizer_json}: a {kind} tokenizer that is not byte-level BPE, which minillama does not run; "
            f"put the model's tokenizer.model next to it"
        )
    raise TokenizerError(f"{model_dir}: no tokenizer.json or tokenizer.model in the model folder")


def _resolve(text: str | None, lookup: dict[str, int]) -> int | None:
    return None if text is None else lookup.get(text)


def _end_ids(facts: _FolderFacts, lookup: dict[str, int], specials: Iterable[str]) -> list[int]:
    ids = facts.token_ids("eos")
    eos = _resolve(facts.token_text("eos"), lookup)
    if eos is not None:
        ids.append(eos)
    ids += [lookup[t] for t in END_OF_GENERATION_TEXTS if t in specials and t in lookup]
    return ids


# -- tokenizer.model ---------------------------------------------------------------------------------------------
def _from_tokenizer_model(path: Path, facts: _FolderFacts) -> Tokenizer:
    source = facts.chat_template_source()
    added = facts.added_tokens()
    add_bos = facts.add_bos()
    if is_tiktoken_file(path):
        names = [t.content for t in sorted(added, key=lambda t: t.id) if t.special] or None
        if names is not None and len(names) != 256:
            names = None  # a partial list cannot tell the ids of the rest: keep Llama 3's own naming
        return TiktokenTokenizer.from_file(path, special_names=names, chat_template_source=source,
                                           add_bos=True if add_bos is None else add_bos)
    processor = load_sentencepiece(path)
    lookup = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())
              if processor.is_control(i) or processor.is_unknown(i)}
    lookup.update({t.content: t.id for t in added})

    def piece(token_id: int) -> str | None:
        return processor.id_to_piece(token_id) if token_id >= 0 else None

    bos_text = facts.token_text("bos") or piece(processor.bos_id())
    eos_text = facts.token_text("eos") or piece(processor.eos_id())
    bos_id = _resolve(bos_text, lookup)
    if bos_id is None and facts.token_ids("bos"):
        bos_id = facts.token_ids("bos")[0]
    template = ChatTemplate.detect(source, set(lookup), bos_token=bos_text or "", eos_token=eos_text or "")
    return SentencePieceTokenizer(
        processor, added_tokens=added, bos_id=bos_id, eos_ids=_end_ids(facts, lookup, set(lookup)),
        add_bos=True if add_bos is None else add_bos, chat_template=template,
    )


# -- tokenizer.json ----------------------------------------------------------------------------------------------
def _is_byte_level(spec: dict[str, Any]) -> bool:
    def mentions_byte_level(component: Any) -> bool:
        if not isinstance(component, dict):
            return False
        if component.get("type") == "ByteLevel":
            return True
        children = component.get("pretokenizers") or component.get("decoders") or []
        return any(mentions_byte_level(c) for c in children)

    model = spec.get("model") or {}
    return model.get("type") == "BPE" and (
        mentions_byte_level(spec.get("pre_tokenizer")) or mentions_byte_level(spec.get("decoder"))
    )


def _from_tokenizer_json(spec: dict[str, Any], facts: _FolderFacts, path: Path) -> Tokenizer:
    model = spec["model"]
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise TokenizerError(f"{path}: BPE option {option}={model[option]!r} is not supported")
    if model.get("dropout"):
        raise TokenizerError(f"{path}: BPE dropout={model['dropout']} is not supported (it is for training only)")
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = [_merge_pair(m, path) for m in model.get("merges") or []]
    added_by_id = {t.id: t for t in facts.added_tokens()}
    for t in spec.get("added_tokens") or []:
        added_by_id[int(t["id"])] = AddedToken(
            t["content"], int(t["id"]), bool(t.get("special")), bool(t.get("lstrip")), bool(t.get("rstrip"))
        )
    added = list(added_by_id.values())
    lookup = dict(vocab)
    lookup.update({t.content: t.id for t in added})
    specials = {t.content for t in added if t.special}

    template_bos = _template_bos(spec.get("post_processor"), lookup)
    bos_text = facts.token_text("bos")
    bos_id = _resolve(bos_text, lookup)
    if bos_id is None:
        bos_id = template_bos if template_bos is not None else next(iter(facts.token_ids("bos")), None)
    add_bos = facts.add_bos()
    if add_bos is None:
        add_bos = template_bos is not None
    eos_text = facts.token_text("eos")
    id_to_text = {i: s for s, i in lookup.items()}
    template = ChatTemplate.detect(
        facts.chat_template_source(), specials,
        bos_token=bos_text or (id_to_text.get(bos_id, "") if bos_id is not None else ""),
        eos_token=eos_text or "",
    )
    unk = model.get("unk_token")
    return ByteLevelBPETokenizer(
        vocab=vocab,
        merges=merges,
        pre_tokenizer=_pre_tokenizer(spec.get("pre_tokenizer"), path),
        normalizer=_normalizer(spec.get("normalizer"), path),
        ignore_merges=bool(model.get("ignore_merges")),
        unk_id=vocab.get(unk) if isinstance(unk, str) else None,
        added_tokens=added,
        bos_id=bos_id,
        eos_ids=_end_ids(facts, lookup, specials),
        add_bos=add_bos,
        chat_template=template,
    )


def _merge_pair(merge: Any, path: Path) -> tuple[str, str]:
    if isinstance(merge, str):
        parts = merge.split(" ")
    else:
        parts = list(merge)
    if len(parts) != 2:
        raise TokenizerError(f"{path}: a BPE merge must be two tokens, got {merge!r}")
    return parts[0], parts[1]


def _template_bos(processor: Any, lookup: dict[str, int]) -> int | None:
    """The id a TemplateProcessing post-processor puts in front of a single text (Llama 3's <|begin_of_text|>)."""
    if not isinstance(processor, dict):
        return None
    if processor.get("type") == "Sequence":
        for child in processor.get("processors") or []:
            found = _template_bos(child, lookup)
            if found is not None:
                return found
        return None
    if processor.get("type") != "TemplateProcessing" or not processor.get("single"):
        return None
    first = processor["single"][0]
    if "SpecialToken" not in first:
        return None
    name = first["SpecialToken"]["id"]
    ids = ((processor.get("special_tokens") or {}).get(name) or {}).get("ids") or []
    return ids[0] if ids else lookup.get(name)


def _split_pattern(pattern: Any, path: Path) -> str:
    if isinstance(pattern, dict) and "Regex" in pattern:
        return pattern["Regex"]
    if isinstance(pattern, dict) and "String" in pattern:
        import re

        return re.escape(pattern["String"])
    raise TokenizerError(f"{path}: Split pre-tokenizer pattern {pattern!r} is neither a Regex nor a String")


def _pre_tokenizer(component: Any, path: Path) -> Splitter:
    if component is None:
        return lambda text: [text] if text else []
    kind = component.get("type")
    if kind == "Sequence":
        return chain([_pre_tokenizer(c, path) for c in component.get("pretokenizers") or []])
    if kind == "ByteLevel":
        regex_split = split_isolated(GPT2_PATTERN) if component.get("use_regex", True) else None
        add_prefix_space = bool(component.get("add_prefix_space"))

        def byte_level(text: str) -> list[str]:
            if add_prefix_space and not text.startswith(" "):
                text = " " + text
            return regex_split(text) if regex_split else [text]

        return byte_level
    if kind == "Split":
        if component.get("invert"):
            raise TokenizerError(f"{path}: Split pre-tokenizer with invert=true is not supported")
        behavior = component.get("behavior")
        pattern = _split_pattern(component.get("pattern"), path)
        if behavior == "Isolated":
            return split_isolated(pattern)
        if behavior == "Removed":
            return split_removed(pattern)
        raise TokenizerError(f"{path}: Split pre-tokenizer behavior {behavior!r} is not supported (Isolated, Removed)")
    if kind == "Digits":
        return split_digits(bool(component.get("individual_digits")))
    raise TokenizerError(
        f"{path}: pre-tokenizer {kind!r} is not supported (ByteLevel, Split, Digits and Sequences of them are)"
    )


def _normalizer(component: Any, path: Path) -> Normalizer | None:
    if component is None:
        return None
    kind = component.get("type")
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return unicode_normalizer(kind)
    if kind == "Lowercase":
        return str.lower
    if kind == "Sequence":
        steps = [n for n in (_normalizer(c, path) for c in component.get("normalizers") or []) if n is not None]

        def sequence(text: str) -> str:
            for step in steps:
                text = step(text)
            return text

        return sequence
    raise TokenizerError(f"{path}: normalizer {kind!r} is not supported (NFC/NFD/NFKC/NFKD, Lowercase, Sequence)")


# -- GGUF --------------------------------------------------------------------------------------------------------
def tokenizer_from_gguf(metadata: dict[str, Any], source: str = "GGUF metadata") -> Tokenizer:
    """The tokenizer stored in a GGUF file's metadata (plain Python values keyed by GGUF key names); source names
    the file in error messages."""
    try:
        return _from_gguf(metadata, source)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise TokenizerError(f"{source}: malformed tokenizer metadata ({type(exc).__name__}: {exc})") from None


def _from_gguf(metadata: dict[str, Any], source: str) -> Tokenizer:
    def key(name: str, default: Any = None) -> Any:
        return metadata.get(f"tokenizer.ggml.{name}", default)

    model = key("model")
    tokens = key("tokens")
    if model is None or not tokens:
        raise TokenizerError(f"{source}: no tokenizer in the GGUF metadata (tokenizer.ggml.model / .tokens missing)")
    types = list(key("token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
    bos_id = key("bos_token_id")
    eos_ids = [v for v in (key("eos_token_id"), key("eot_token_id"), key("eom_token_id")) if v is not None]
    # control (3) and user-defined (4) tokens are the ones matched whole in text
    specials = {t: i for i, t in enumerate(tokens) if types[i] == 3}
    eos_ids += [specials[t] for t in END_OF_GENERATION_TEXTS if t in specials]
    template = ChatTemplate.detect(
        metadata.get("tokenizer.chat_template"), specials,
        bos_token=tokens[bos_id] if isinstance(bos_id, int) and 0 <= bos_id < len(tokens) else "",
        eos_token=tokens[eos_ids[0]] if eos_ids and 0 <= eos_ids[0] < len(tokens) else "",
    )
    if model == "gpt2":
        pre = key("pre", "default")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise TokenizerError(
                f"{source}: tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer minillama knows "
                f"({', '.join(sorted(GGUF_PRE_TOKENIZERS))})"
            )
        merges = [_merge_pair(m, Path(source)) for m in key("merges") or []]
        added = [AddedToken(t, i, special=types[i] == 3) for i, t in enumerate(tokens) if types[i] in (3, 4)]
        return ByteLevelBPETokenizer(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            pre_tokenizer=GGUF_PRE_TOKENIZERS[pre](),
            ignore_merges=pre in GGUF_IGNORE_MERGES,
            unk_id=key("unknown_token_id"),
            added_tokens=added,
            bos_id=bos_id,
            eos_ids=eos_ids,
            add_bos=bool(key("add_bos_token", False)),
            chat_template=template,
        )
    if model == "llama":
        scores = key("scores")
        if scores is None:
            raise TokenizerError(f"{source}: a 'llama' (SentencePiece) vocabulary needs tokenizer.ggml.scores")
        return SpmVocabTokenizer(
            pieces=tokens,
            scores=scores,
            types=types,
            add_space_prefix=bool(key("add_space_prefix", True)),
            unk_id=key("unknown_token_id"),
            bos_id=bos_id,
            eos_ids=eos_ids,
            add_bos=bool(key("add_bos_token", True)),
            chat_template=template,
        )
    raise TokenizerError(
        f"{source}: tokenizer.ggml.model = {model!r} is not supported (minillama runs 'gpt2' and 'llama')"
    )
