"""The engine: loads a model, owns the paged cache, and runs the decode loop that samplers and noise plug into.

One decode step, for every unfinished sequence (a "run"):
    sample the next token from the pending logits (the sampler sees logits, history, hidden state, attention,
    its generator and a lookahead handle) -> stream its text, check EOS / stop strings / length
    -> shift the context if it is full -> one batched forward of the new tokens (noise applied here)
    -> the forward's logits become the next step's pending logits.
The prompt is prefilled clean in one forward; `n` samples fork the prompt's blocks after prefill.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence as Seq

import torch

from .cache import PagedKVCache, Sequence
from .capture import CaptureRequest
from .config import ModelConfig
from .errors import ContextOverflowError, GenerationError, MinillamaError, SamplerArgumentError
from .model import ForwardBatch, ModelOutput, Transformer, build_model
from .sampling.base import LookaheadResult, Sampler, StepContext

_PROMPT_ACCEPT_WINDOW = 512   # prompt tokens fed to a sampler's accept() before generating (penalty windows)


@dataclass
class Stats:
    prompt_tokens: int = 0          # tokens prefilled (for a chat follow-up: only the new turn)
    new_tokens: int = 0             # tokens generated, all samples together
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0             # time to the first generated token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "ttft_s": self.ttft_s,
                "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps}


@dataclass
class Choice:
    index: int
    tokens: list[int]
    text: str
    finish_reason: str                      # "eos" | "stop" | "length" | "interrupted"
    records: list[dict[str, Any]] = field(default_factory=list)
    sampler: Any = None                     # the sampler state this sample ended with (regime counts, ...)


@dataclass
class Completion:
    choices: list[Choice]
    stats: Stats

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def tokens(self) -> list[int]:
        return self.choices[0].tokens

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.choices[0].records


class _Run:
    """One sequence being generated: its cache sequence, sampler, random streams, text and stop state."""

    def __init__(self, engine: "Engine", index: int, seq: Sequence, sampler: Sampler | None, seed: int,
                 history: list[int], max_new: int, stop: list[str], drugs, records: bool):
        self.index, self.seq, self.sampler, self.drugs = index, seq, sampler, drugs
        device = engine.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.noise_generator = torch.Generator(device=device).manual_seed(seed ^ 0x5DEECE66D)
        self.history = history
        self.prompt_len = len(history)
        self.max_new, self.stop, self.keep_records = max_new, stop, records
        self.new_tokens: list[int] = []
        self.records: list[dict[str, Any]] = []
        # the prompt's tail tells the decoder whether the first new piece starts a word (sentencepiece spaces)
        self.decoder = engine.tokenizer.stream_decoder(prefix=history[-8:])
        self.text = ""
        self.emitted = 0                    # characters of `text` already handed to a stream
        self.finish_reason: str | None = None
        self.pending: ModelOutput | None = None
        self.pending_row = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_text(self, piece: str) -> None:
        self.text += piece
        if not self.stop:
            return
        window = max(len(s) for s in self.stop) + len(piece)
        start = max(0, len(self.text) - window)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.finish_reason = "stop"

    def printable(self) -> str:
        """Text not yet streamed, holding back a tail that might still become a stop string."""
        end = len(self.text)
        if not self.finished:
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.emitted), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return piece

    def choice(self) -> Choice:
        return Choice(self.index, list(self.new_tokens), self.text, self.finish_reason or "interrupted",
                      self.records, self.sampler)


class Stream:
    """Iterates the printable text of the first sample as it is generated; `.completion` when done (or
    interrupted: a KeyboardInterrupt while iterating leaves the engine usable and `.completion` partial).
    `.error` is the GenerationError that ended it, if one did (NaN logits, a sampler with nothing to draw); iterating
    raises it, after freeing the stream's cache."""

    def __init__(self, engine: "Engine", runs: list[_Run], stats: Stats, on_finish=None):
        self._engine, self._runs, self._stats, self._on_finish = engine, runs, stats, on_finish
        self._completion: Completion | None = None
        self._t0 = time.perf_counter()
        self.error: GenerationError | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        first = self._runs[0]
        while True:
            piece = first.printable()
            if piece:
                return piece
            if self.finished:
                self._finish()
                raise StopIteration
            try:
                self._engine.step([self])
            except KeyboardInterrupt:
                self.close()
                raise
            if self.error is not None:
                self.close()
                raise self.error

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self._runs)

    def close(self) -> None:
        """Stop generating now; unfinished samples end as "interrupted"."""
        for r in self._runs:
            if not r.finished:
                r.finish_reason = "interrupted"
        self._finish()

    def _finish(self) -> None:
        if self._completion is not None:
            return
        for run in self._runs:       # text the decoders still hold back (an unfinished UTF-8 character)
            tail = run.decoder.flush()
            if tail and run.finish_reason in ("eos", "length", "interrupted"):
                run.add_text(tail)
        self._stats.decode_s = time.perf_counter() - self._t0
        self._completion = Completion([r.choice() for r in self._runs], self._stats)
        if self._on_finish is not None:
            self._on_finish(self._runs)

    @property
    def completion(self) -> Completion:
        if self._completion is None:
            raise RuntimeError("the stream has not finished yet; iterate it to the end or call close()")
        return self._completion

    def poll(self) -> list[str]:
        """For each sample, the printable text produced since the last poll (what a server streams out)."""
        return [r.printable() for r in self._runs]


class Engine:
    def __init__(self, model: Transformer, tokenizer, *, context_length: int | None = None,
                 context_shift: bool = False, n_keep: int | None = None, block_size: int = 16,
                 max_cache_tokens: int | None = None, source: str = ""):
        self.model = model
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.device = model.norm.weight.device   # the norms: always float parameters, even with int8 weights
        self.dtype = model.norm.weight.dtype
        self.source = source
        self.context_length = context_length or self.config.max_seq_len
        if self.context_length < 8:
            raise SamplerArgumentError(f"context_length must be >= 8, got {self.context_length}")
        self.context_shift = context_shift
        self.n_keep = n_keep
        cfg = self.config
        self.cache = PagedKVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, block_size=block_size,
                                  max_tokens=max_cache_tokens or max(4 * self.context_length, 1 << 16),
                                  initial_tokens=min(self.context_length, 1024), dtype=self.dtype, device=self.device)
        self._chat_seq: Sequence | None = None

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path, *, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, quant: str | None = None,
                        context_length: int | None = None, context_shift: bool = False,
                        n_keep: int | None = None, block_size: int = 16,
                        max_cache_tokens: int | None = None) -> "Engine":
        """Load a model folder (Hugging Face layout) or a .gguf file."""
        from .loading import load_checkpoint
        device = torch.device(device or "cpu")
        dtype = _parse_dtype(dtype)
        if quant is not None:
            from .quant import check_quant
            check_quant(quant, device)   # unknown names and platforms without int8 kernels fail before any reading
        ckpt = load_checkpoint(source, dtype=None, device=device)      # build_model converts each tensor as it copies
        model = build_model(ckpt.config, ckpt.tensors, dtype=dtype, device=device, quant=quant)
        tokenizer = ckpt.tokenizer
        if tokenizer is not None and tokenizer.vocab_size > ckpt.config.vocab_size:
            from .errors import TokenizerError
            raise TokenizerError(f"{ckpt.path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                                 f"vocabulary has only {ckpt.config.vocab_size}")
        return cls(model, tokenizer, context_length=context_length, context_shift=context_shift, n_keep=n_keep,
                   block_size=block_size, max_cache_tokens=max_cache_tokens, source=str(source))

    # ---- one clean forward -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, ids: Seq[int]) -> torch.Tensor:
        """[len(ids), vocab] float32 logits of a clean forward pass of `ids` (nothing stays in the cache)."""
        ids = self._check_ids(list(ids))
        seq = self.cache.new_sequence()
        try:
            out = self._forward([seq], [ids], all_logits=True)
        finally:
            self.cache.free(seq)
        return out.logits[0]

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(self, prompt: str | Seq[int], *, max_new_tokens: int = 256, sampler: Sampler | None = None,
                 seed: int | None = None, stop: str | Seq[str] | None = None, n: int = 1, drugs=None,
                 records: bool = False) -> Completion:
        stream = self.stream(prompt, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed, stop=stop, n=n,
                             drugs=drugs, records=records)
        try:
            while not stream.finished:
                self.step([stream])
        except KeyboardInterrupt:
            stream.close()
            raise
        stream._finish()
        return stream.completion

    def stream(self, prompt: str | Seq[int], *, max_new_tokens: int = 256, sampler: Sampler | None = None,
               seed: int | None = None, stop: str | Seq[str] | None = None, n: int = 1, drugs=None,
               records: bool = False) -> Stream:
        ids = self._encode_prompt(prompt)
        seq = self.cache.new_sequence()
        self.cache.attach_prefix(seq, ids)       # a prompt prefix another request computed is reused
        return self._start(seq, ids, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed, stop=stop, n=n,
                           drugs=drugs, records=records, keep_parent=False)

    def chat(self, messages: list[dict[str, str]], *, stream: bool = False, max_new_tokens: int = 512,
             sampler: Sampler | None = None, seed: int | None = None, stop: str | Seq[str] | None = None,
             drugs=None, records: bool = False, template=None) -> Completion | Stream:
        """Answer the conversation. The conversation's cache is kept: a follow-up only prefills what changed."""
        template = template or self.tokenizer.chat_template
        text = template.render(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode(text, bos=False)
        ids = self._check_ids(ids)
        if self._chat_seq is None:
            self._chat_seq = self.cache.new_sequence()
        seq = self._chat_seq
        common = _common_prefix(seq.tokens, ids)
        self.cache.rewind(seq, min(common, len(ids) - 1))    # at least one token to prefill, for fresh logits
        stops = list(_as_stop_list(stop)) + [s for s in template.stop_strings if s]
        s = self._start(seq, ids, max_new_tokens=max_new_tokens, sampler=sampler, seed=seed, stop=stops, n=1,
                        drugs=drugs, records=records, keep_parent=True)
        if stream:
            return s
        for _ in s:
            pass
        return s.completion

    def reset_chat(self) -> None:
        if self._chat_seq is not None:
            self.cache.free(self._chat_seq)
        self._chat_seq = None

    @torch.inference_mode()
    def cold_shower(self) -> int:
        """Recompute, clean, every cached position of the conversation that was computed under noise.
        Costs one batched forward over the drugged span (not the whole context). Returns how many positions."""
        seq = self._chat_seq
        if seq is None or seq.drugged_from is None:
            return 0
        return self._shower(seq)

    # ---- internals -------------------------------------------------------------------------------------------
    def _encode_prompt(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, bos=True)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise SamplerArgumentError("the prompt is empty and the model has no BOS token to start from; "
                                       "give at least one token")
        return self._check_ids(ids)

    def _check_ids(self, ids: list[int]) -> list[int]:
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise SamplerArgumentError(f"token id {bad[0]} is outside the vocabulary [0, {self.config.vocab_size})")
        if not ids:
            raise SamplerArgumentError("the prompt is empty")
        return ids

    def _start(self, seq: Sequence, ids: list[int], *, max_new_tokens: int, sampler, seed, stop, n: int, drugs,
               records: bool, keep_parent: bool) -> Stream:
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise SamplerArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(n, int) or n < 1:
            raise SamplerArgumentError(f"n must be an integer >= 1, got {n!r}")
        stops = _as_stop_list(stop)
        if len(ids) >= self.context_length:
            if not keep_parent:
                self.cache.free(seq)
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens but the context holds "
                                       f"{self.context_length}; shorten it or raise --ctx-size")
        if drugs is not None:
            drugs.layer_thetas(self.config.n_layers)   # checks the dose shape against this model before prefill
        seed = random.getrandbits(62) if seed is None else int(seed)
        stats = Stats()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                cached = min(len(seq.tokens), len(ids))
                new = ids[cached:]
                out = self._forward([seq], [new], capture=_capture_of([sampler]))
        except BaseException:
            if not keep_parent:
                self.cache.free(seq)
            raise
        self.cache.index_prefix(seq)
        stats.prompt_tokens = len(new)
        stats.prefill_s = time.perf_counter() - t0
        base = _prepared(sampler, ids)
        runs = []
        for i in range(n):
            child = seq if i == 0 else self.cache.fork(seq)
            run = _Run(self, i, child, base.clone() if (base is not None and i > 0) else base,
                       (seed + i * 0x9E3779B1) % (1 << 62), list(ids), max_new_tokens, stops, drugs, records)
            run.pending, run.pending_row = out, 0
            runs.append(run)
        # a conversation's sequence outlives the answer; a one-shot generation frees its blocks when done
        return Stream(self, runs, stats, None if keep_parent else self._free_runs)

    def _free_runs(self, runs: list[_Run]) -> None:
        for r in runs:
            self.cache.free(r.seq)

    @torch.inference_mode()
    def step(self, streams: list[Stream]) -> None:
        """One decode step for every unfinished sample of these streams, in one batched forward (per distinct
        dose of drugs). Streams may come from different requests: this is what continuous batching calls.
        A GenerationError ends only the stream it belongs to (its `.error`); the others go on."""
        active: list[tuple[Stream, _Run]] = []
        for stream in streams:
            runs = [r for r in stream._runs if not r.finished]
            t_sample = time.perf_counter()
            try:
                for run in runs:
                    token = self._sample(run)
                    if stream._stats.new_tokens == 0:
                        stream._stats.ttft_s = stream._stats.prefill_s + time.perf_counter() - t_sample
                    stream._stats.new_tokens += 1
                    self._advance(run, token)
            except GenerationError as error:
                stream.error = error
                continue
            active.extend((stream, run) for run in runs)
            if stream.finished:
                stream._finish()
        feeding = [(stream, run) for stream, run in active if not run.finished and stream.error is None]
        if not feeding:
            return
        for _, run in feeding:
            self._make_room(run)
            every = run.drugs.cold_shower_every if run.drugs is not None else None
            if every and run.seq.drugged_count >= every:
                self._shower(run.seq)
        groups: dict[int, list[tuple[Stream, _Run]]] = {}
        for stream, run in feeding:
            groups.setdefault(id(run.drugs), []).append((stream, run))
        for group in groups.values():
            try:
                self._feed([run for _, run in group])
            except GenerationError as error:
                if len(group) == 1:
                    group[0][0].error = error
                    continue
                # The batch failed as a whole; a failed forward commits nothing, so feed each sequence on its own to
                # find the ones that fail by themselves, and let the others go on.
                for stream, run in group:
                    try:
                        self._feed([run])
                    except GenerationError as alone:
                        stream.error = alone

    def _feed(self, runs: list[_Run]) -> None:
        """One forward of each run's newest token (all sharing one dose of drugs); the logits wait in `pending`."""
        drugs = runs[0].drugs
        noise = drugs.plan(self.config.n_layers, [r.noise_generator for r in runs]) if drugs else None
        out = self._forward([r.seq for r in runs], [[r.history[-1]] for r in runs], noise=noise,
                            capture=_capture_of([r.sampler for r in runs]))
        for row, run in enumerate(runs):
            run.pending, run.pending_row = out, row

    def _sample(self, run: _Run) -> int:
        out, row = run.pending, run.pending_row
        logits = out.logits[row]
        if run.sampler is None:
            token = int(torch.argmax(logits))
            if run.keep_records:
                run.records.append({"token": token})
            return token
        ctx = StepContext(logits=logits, tokens=run.history, prompt_len=run.prompt_len, hidden=out.hidden[row],
                          generator=run.generator,
                          attention=out.attention[row] if out.attention is not None else None,
                          lookahead=lambda cands, run=run: self._lookahead(run, cands))
        token = int(run.sampler.sample(ctx))
        run.sampler.accept(token)
        if run.keep_records:
            ctx.record["token"] = token
            run.records.append(ctx.record)
        return token

    def _advance(self, run: _Run, token: int) -> None:
        if token in self.tokenizer.eos_ids:
            run.finish_reason = "eos"
            return
        run.history.append(token)
        run.new_tokens.append(token)
        run.add_text(run.decoder.push(token))
        if not run.finished and len(run.new_tokens) >= run.max_new:
            run.finish_reason = "length"

    def _make_room(self, run: _Run) -> None:
        """Before feeding one more token: shift the context if it is full (or end the run if shifting is off)."""
        seq = run.seq
        if len(seq) + 1 <= self.context_length:
            return
        if not self.context_shift:
            run.finish_reason = "length"
            return
        n_keep = self.n_keep if self.n_keep is not None else min(run.prompt_len, self.context_length // 4)
        n_discard = (len(seq) - n_keep) // 2
        self.cache.shift(seq, n_keep, n_discard, self.model.rotary)

    def _shower(self, seq: Sequence) -> int:
        start = seq.drugged_from
        tokens = seq.tokens[start:]
        self.cache.rewind(seq, start)
        self._forward([seq], [tokens])
        seq.drugged_from = None
        return len(tokens)

    def _lookahead(self, run: _Run, candidates: Seq[int]) -> LookaheadResult:
        """Evaluate each candidate next token on its own fork of the cache, all in one batched forward, clean."""
        cands = [int(c) for c in candidates]
        forks = [self.cache.fork(run.seq) for _ in cands]
        try:
            with torch.inference_mode():
                out = self._forward(forks, [[c] for c in cands], capture=_capture_of([run.sampler]))
        finally:
            for f in forks:
                self.cache.free(f)
        return LookaheadResult(candidates=cands, logits=out.logits, hidden=out.hidden, attention=out.attention)

    def _forward(self, seqs: list[Sequence], new_tokens: list[list[int]], *, noise=None,
                 capture: CaptureRequest | None = None, all_logits: bool = False) -> ModelOutput:
        """Write the new tokens' K/V into the cache and run the model. All sequences get the same number of new
        tokens. The sequences' lengths only change once the forward has succeeded."""
        T = len(new_tokens[0])
        cache = self.cache
        slots = [cache.reserve(s, T) for s in seqs]
        starts = [len(s) for s in seqs]
        lengths = [st + T for st in starts]
        device = self.device
        positions = torch.tensor([list(range(st, st + T)) for st in starts], device=device)
        batch = ForwardBatch(cache=cache, write_slots=torch.cat(slots) if len(slots) > 1 else slots[0],
                             positions=positions, lengths=lengths)
        if len(seqs) * T == 1:
            batch.write_slot = int(slots[0])
        if len(seqs) == 1 and seqs[0].contiguous:
            batch.contig_start = seqs[0].blocks[0] * cache.block_size
        else:
            L = max(lengths)
            rows = [cache.read_slots(s, n) for s, n in zip(seqs, lengths)]
            batch.read_slots = torch.stack([torch.nn.functional.pad(r, (0, L - len(r))) for r in rows])
            if any(n != L for n in lengths):      # padding to mask only when the contexts differ in length
                ar = torch.arange(L, device=device)
                batch.valid = ar[None, :] < torch.tensor(lengths, device=device)[:, None]
        tokens = torch.tensor(new_tokens, device=device)
        layers = capture.resolve(self.config.n_layers) if capture is not None else frozenset()
        out = self.model(tokens, batch, noise=noise, capture=layers, all_logits=all_logits)
        if torch.isnan(out.logits).any():     # one check for the whole batch; nothing is committed
            raise GenerationError("the model produced NaN logits; try float32 (--dtype float32)")
        for s, toks, st in zip(seqs, new_tokens, starts):
            cache.commit(s, toks)
            # Any dosed site changes what later layers compute for these tokens (K/V noise through the attention
            # output), so their cached K/V are "drugged" even though no noise is written into the cache itself.
            if noise is not None:
                s.mark_drugged(st)
        return out


def _prepared(sampler: Sampler | None, prompt_ids: list[int]) -> Sampler | None:
    """A fresh copy of the user's sampler that has seen the prompt (penalty windows count prompt tokens, as in
    llama.cpp); the user's object is never mutated, so the same call with the same seed repeats exactly."""
    if sampler is None:
        return None
    s = sampler.clone()
    s.reset()
    for t in prompt_ids[-_PROMPT_ACCEPT_WINDOW:]:
        s.accept(t)
    return s


def _capture_of(samplers) -> CaptureRequest | None:
    request = None
    for s in samplers:
        wanted = getattr(s, "capture", None) if s is not None else None
        if wanted is not None:
            request = wanted.merge(request)
    return request


def _as_stop_list(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise SamplerArgumentError(f"stop must be a string or a list of strings, got {type(stop).__name__}")


def _common_prefix(a: Seq[int], b: Seq[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "f16": torch.float16}


def _parse_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise SamplerArgumentError(f"dtype {dtype!r} is not supported (float32, bfloat16, float16)")
