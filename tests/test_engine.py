"""The decode loop: seeds, n samples, stop strings, chat cache reuse, interrupts, bad input, capture, long runs."""
from __future__ import annotations

import pytest
import torch

from minillama import CaptureRequest, Engine, SamplingParams
from minillama.errors import ContextOverflowError, GenerationError, SamplerArgumentError
from minillama.sampling.base import Greedy, StepContext
from modelfactory import make_hf_model
from test_model_parity import weights_only_engine


@pytest.fixture(scope="module")
def engine(stories_dir) -> Engine:
    return Engine.from_pretrained(stories_dir, block_size=8)


def chain(**kw):
    return SamplingParams(**kw).to_sampler()


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine):
    a = engine.generate("Once upon a time", max_new_tokens=40, sampler=chain(temp=1.0), seed=7)
    b = engine.generate("Once upon a time", max_new_tokens=40, sampler=chain(temp=1.0), seed=7)
    c = engine.generate("Once upon a time", max_new_tokens=40, sampler=chain(temp=1.0), seed=8)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_n_samples_share_the_prompt_and_decode_as_one_batch(engine):
    used_before = engine.cache.manager.used_blocks
    out = engine.generate("Once upon a time", max_new_tokens=30, sampler=chain(temp=1.0), seed=3, n=4)
    again = engine.generate("Once upon a time", max_new_tokens=30, sampler=chain(temp=1.0), seed=3, n=4)
    texts = [c.text for c in out.choices]
    assert len(out.choices) == 4 and len(set(texts)) > 1
    assert texts == [c.text for c in again.choices]
    assert engine.cache.manager.used_blocks == used_before
    assert out.stats.prompt_tokens == len(engine.tokenizer.encode("Once upon a time"))


def test_stop_strings_end_the_text_and_are_never_streamed(engine):
    full = engine.generate("Once upon a time", max_new_tokens=40).text
    assert "Lily" in full
    stopped = engine.generate("Once upon a time", max_new_tokens=40, stop=["Lily"])
    assert stopped.finish_reason == "stop" and stopped.text == full[:full.index("Lily")]
    stream = engine.stream("Once upon a time", max_new_tokens=40, stop="Lily")
    assert "".join(stream) == stopped.text
    assert stream.completion.finish_reason == "stop"


def test_stream_pieces_add_up_to_the_text(engine):
    stream = engine.stream("Once upon a time", max_new_tokens=30)
    pieces = list(stream)
    assert len(pieces) > 5 and "".join(pieces) == stream.completion.text
    assert stream.completion.stats.new_tokens == 30 and stream.completion.stats.decode_tps > 0


def test_bad_arguments_are_named(engine):
    with pytest.raises(SamplerArgumentError, match="max_new_tokens"):
        engine.generate("hi", max_new_tokens=0)
    with pytest.raises(SamplerArgumentError, match="stop"):
        engine.generate("hi", max_new_tokens=3, stop=3)
    with pytest.raises(SamplerArgumentError, match="n must"):
        engine.generate("hi", max_new_tokens=3, n=0)
    with pytest.raises(SamplerArgumentError, match="empty"):
        engine.generate([], max_new_tokens=3)
    with pytest.raises(ContextOverflowError, match="context"):
        engine.generate([1] * 600, max_new_tokens=3)
    assert engine.cache.manager.used_blocks == 0


def test_nan_logits_are_an_error(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    engine.model.norm.weight[0] = float("nan")
    with pytest.raises(GenerationError, match="NaN"):
        engine.generate("Once", max_new_tokens=3)


class Interrupting(Greedy):
    """Greedy, but Ctrl-C arrives on the given step."""

    def __init__(self, at: int):
        self.at, self.steps = at, 0

    def sample(self, ctx: StepContext) -> int:
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt
        return super().sample(ctx)

    def clone(self):
        return self        # share the counter so the test sees it fire


def test_interrupted_chat_keeps_the_engine_and_history_usable(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    messages = [{"role": "user", "content": "Once upon a time"}]
    first = engine.chat(messages, max_new_tokens=10)
    messages.append({"role": "assistant", "content": first.text})
    messages.append({"role": "user", "content": "Then"})
    snapshot = [dict(m) for m in messages]
    stream = engine.chat(messages, stream=True, max_new_tokens=20, sampler=Interrupting(at=5))
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            pass
    assert stream.completion.finish_reason == "interrupted" and len(stream.completion.tokens) == 4
    assert messages == snapshot
    again = engine.chat(messages, max_new_tokens=10)
    assert again.finish_reason in ("length", "eos") and again.text
    assert engine.generate("Once upon a time", max_new_tokens=5).text


def test_chat_follow_up_prefills_only_the_new_turn(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    messages = [{"role": "user", "content": "Once upon a time there was a cat."}]
    first = engine.chat(messages, max_new_tokens=12)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "The end."}]
    second = engine.chat(messages, max_new_tokens=12)
    full = engine.tokenizer.encode(engine.tokenizer.chat_template.render(messages), bos=False)
    assert second.stats.prompt_tokens < len(full) // 2
    # and the answer is what a fresh engine gives for the whole conversation
    fresh = Engine.from_pretrained(stories_dir).chat(messages, max_new_tokens=12)
    assert fresh.tokens == second.tokens


def test_capture_matches_transformers_attention(tmp_path):
    import transformers
    folder = make_hf_model(tmp_path, n_heads=4, n_kv_heads=2, n_layers=3)
    engine = weights_only_engine(folder)
    ids = list(range(5, 30))
    seq = engine.cache.new_sequence()
    engine._forward([seq], [ids[:-1]])
    out = engine._forward([seq], [ids[-1:]], capture=CaptureRequest(layers=None))
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = ref(torch.tensor([ids]), output_attentions=True).attentions
    captured = out.attention[0]
    assert sorted(captured.probs) == [0, 1, 2]
    for layer in range(3):
        assert (captured.probs[layer] - attentions[layer][0, :, -1]).abs().max() <= 1e-5
        assert captured.scores[layer].shape == (4, len(ids))


def test_capture_in_batched_decode_covers_each_valid_context(engine):
    seqs = [engine.cache.new_sequence() for _ in range(2)]
    engine._forward([seqs[0]], [[1, 403, 407]])
    engine._forward([seqs[1]], [[1, 403, 407, 261, 378, 432]])
    out = engine._forward(seqs, [[5], [6]], capture=CaptureRequest(layers=(-1,)))
    for seq, captured in zip(seqs, out.attention):
        probs = captured.probs[4]
        assert probs.shape == (8, len(seq)) and torch.allclose(probs.sum(-1), torch.ones(8))
        engine.cache.free(seq)


def test_twenty_thousand_tokens_with_context_shift_in_flat_memory(stories_dir):
    engine = Engine.from_pretrained(stories_dir, context_length=128, context_shift=True, block_size=16)
    stream = engine.stream("Once upon a time", max_new_tokens=20_000, sampler=chain(temp=1.0), seed=1)
    peak, samples = 0, []
    for i, _ in enumerate(stream):
        peak = max(peak, engine.cache.manager.used_blocks)
        if i % 2000 == 0:
            samples.append(engine.cache.manager.capacity)
    done = stream.completion
    assert done.stats.new_tokens == 20_000 and done.finish_reason == "length"
    assert peak <= 128 // 16 + 1                       # never more than one context's worth of blocks
    assert len(set(samples)) == 1                       # the pool never grew after the first window
    assert engine.cache.manager.used_blocks == 0


def poison_rows_from(engine, position: int) -> None:
    """NaN logits for every sequence whose newest token sits at `position` or later (the others stay clean)."""
    real = engine.model.forward

    def forward(tokens, batch, **kwargs):
        out = real(tokens, batch, **kwargs)
        out.logits[batch.positions[:, -1] >= position] = float("nan")
        return out

    engine.model.forward = forward


def test_a_failing_stream_ends_alone_in_a_batched_step(stories_dir):
    engine = Engine.from_pretrained(stories_dir)
    clean = engine.generate([1, 403, 407], max_new_tokens=8).tokens
    poison_rows_from(engine, 12)
    short = engine.stream([1, 403, 407], max_new_tokens=8)           # positions 3..10: never poisoned
    long = engine.stream([1] + list(range(300, 309)), max_new_tokens=8)   # reaches position 12 on its third step
    while not short.finished:
        engine.step([s for s in (short, long) if not s.finished and s.error is None])
    assert long.error is not None and "NaN" in str(long.error)
    assert short.completion.tokens == clean                          # the batch-mate was not disturbed
    with pytest.raises(GenerationError, match="NaN"):                # iterating the failed stream raises, once freed
        list(long)
    assert engine.cache.manager.used_blocks == 0


def test_a_sampler_error_ends_only_its_stream(stories_dir):
    class Exhausted(Greedy):
        def sample(self, ctx: StepContext) -> int:
            if len(ctx.tokens) > 5:
                raise GenerationError("no candidate has a finite, positive probability")
            return super().sample(ctx)

    engine = Engine.from_pretrained(stories_dir)
    good = engine.stream([1, 403, 407], max_new_tokens=6)
    bad = engine.stream([1, 403, 407], max_new_tokens=6, sampler=Exhausted())
    while not good.finished:
        engine.step([s for s in (good, bad) if not s.finished and s.error is None])
    assert bad.error is not None and len(good.completion.tokens) == 6
    bad.close()
    assert engine.cache.manager.used_blocks == 0
