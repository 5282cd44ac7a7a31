"""The paged cache: decoding through it equals full recomputation, across blocks, rewinds, forks and shifts."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from minillama.cache import PagedKVCache
from minillama.config import ModelConfig
from minillama.engine import Engine
from minillama.errors import CacheFullError
from minillama.model import build_model


class FakeTokenizer:
    """Enough of a tokenizer for cache mechanics: ids in, placeholder text out."""
    eos_ids = ()
    vocab_size = 512

    class _Decoder:
        def push(self, token: int) -> str:
            return f"<{token}>"

        def flush(self) -> str:
            return ""

    def stream_decoder(self, prefix=()):
        return self._Decoder()


@pytest.fixture(scope="module")
def model(stories_dir):
    cfg = ModelConfig.from_hf_file(stories_dir / "config.json")
    tensors = load_file(str(stories_dir / "model.safetensors")).items()
    return build_model(cfg, tensors, dtype=torch.float32, device=torch.device("cpu"))


def engine(model, **kw) -> Engine:
    return Engine(model, FakeTokenizer(), block_size=4, **kw)


def step(e: Engine, seq, tokens: list[int]) -> torch.Tensor:
    return e._forward([seq], [tokens]).logits[0]


def test_decode_equals_recompute_across_blocks(model):
    e = engine(model)
    seq = e.cache.new_sequence()
    ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317]
    step(e, seq, ids[:3])
    for i in range(3, len(ids)):
        got = step(e, seq, [ids[i]])
        want = e.logits(ids[:i + 1])[-1]
        assert (got - want).abs().max() <= 1e-4, f"step {i}"
    assert len(seq.blocks) == 4  # 15 tokens in blocks of 4


def test_rewind_and_reappend(model):
    e = engine(model)
    seq = e.cache.new_sequence()
    step(e, seq, [1, 403, 407, 261, 378, 432, 383])
    e.cache.rewind(seq, 3)
    assert len(seq) == 3 and len(seq.blocks) == 1
    got = step(e, seq, [300, 301])
    want = e.logits([1, 403, 407, 300, 301])[-1]
    assert (got - want).abs().max() <= 1e-4


def test_fork_shares_blocks_and_copies_on_write(model):
    e = engine(model)
    parent = e.cache.new_sequence()
    prompt = [1, 403, 407, 261, 378, 432]           # 6 tokens: one full block, one partial
    step(e, parent, prompt)
    used = e.cache.manager.used_blocks
    child = e.cache.fork(parent)
    assert e.cache.manager.used_blocks == used       # nothing copied yet
    got_child = step(e, child, [300, 301])
    got_parent = step(e, parent, [302])
    assert child.blocks[0] == parent.blocks[0]       # the full block stays shared
    assert child.blocks[1] != parent.blocks[1]       # the partial one was copied before the write
    assert (got_child - e.logits(prompt + [300, 301])[-1]).abs().max() <= 1e-4
    assert (got_parent - e.logits(prompt + [302])[-1]).abs().max() <= 1e-4
    e.cache.free(child)
    e.cache.free(parent)
    assert e.cache.manager.used_blocks == 0


def test_batched_decode_of_forks_equals_recompute(model):
    e = engine(model)
    parent = e.cache.new_sequence()
    prompt = [1, 403, 407, 261, 378]
    step(e, parent, prompt)
    kids = [e.cache.fork(parent) for _ in range(3)]
    step(e, kids[1], [310])                           # lengths now differ inside the batch
    out = e._forward(kids, [[320], [321], [322]]).logits
    histories = [prompt + [320], prompt + [310, 321], prompt + [322]]
    for row, ids in enumerate(histories):
        assert (out[row] - e.logits(ids)[-1]).abs().max() <= 1e-4


def test_context_shift_repositions_kept_keys(model):
    e = engine(model)
    seq = e.cache.new_sequence()
    ids = [1] + list(range(300, 319))                 # 20 tokens
    step(e, seq, ids)
    rotary = model.rotary
    old_k = e.cache.k[:, :, e.cache.read_slots(seq, 20)].clone()
    old_v = e.cache.v[:, :, e.cache.read_slots(seq, 20)].clone()
    n_keep, n_discard = 4, 8
    e.cache.shift(seq, n_keep, n_discard, rotary)
    assert seq.tokens == ids[:4] + ids[12:]
    new_slots = e.cache.read_slots(seq, len(seq))
    new_k, new_v = e.cache.k[:, :, new_slots], e.cache.v[:, :, new_slots]
    kept = list(range(4)) + list(range(12, 20))
    # reference: the keys as computed (pre-RoPE) rotated to their new positions 0..11
    raw = rotary.rotate(old_k[:, :, kept].transpose(1, 2), torch.tensor(kept), inverse=True)
    want = rotary.rotate(raw, torch.arange(len(kept))).transpose(1, 2)
    assert (new_k - want).abs().max() <= 1e-5
    assert torch.equal(new_v, old_v[:, :, kept])
    assert torch.isfinite(step(e, seq, [5])).all()


def test_shift_on_shared_blocks_leaves_the_other_sequence_alone(model):
    e = engine(model)
    a = e.cache.new_sequence()
    step(e, a, [1] + list(range(300, 315)))
    b = e.cache.fork(a)
    before = e.logits(a.tokens + [7])[-1]
    e.cache.shift(b, 2, 6, model.rotary)
    assert (step(e, a, [7]) - before).abs().max() <= 1e-4


def test_cache_full_is_an_error_and_changes_nothing(model):
    e = Engine(model, FakeTokenizer(), block_size=4, max_cache_tokens=8)
    seq = e.cache.new_sequence()
    step(e, seq, [1, 2, 3, 4, 5, 6])
    with pytest.raises(CacheFullError, match="KV cache is full"):
        step(e, seq, [7, 8, 9])
    assert len(seq) == 6 and len(seq.blocks) == 2
    assert torch.isfinite(step(e, seq, [7])).all()


def test_pool_grows_with_tokens_held():
    cache = PagedKVCache(2, 1, 4, block_size=4, max_tokens=1024, initial_tokens=8)
    assert cache.k.shape[2] == 8
    seq = cache.new_sequence()
    cache.reserve(seq, 30)
    assert cache.k.shape[2] == 32 and cache.manager.used_blocks == 8


def test_prefix_blocks_are_shared_across_requests(model):
    e = engine(model)
    prompt = [1] + list(range(300, 313))                       # 14 tokens: 3 full blocks of 4
    first = e.generate(prompt, max_new_tokens=5)
    assert e.cache.manager.used_blocks == 0                    # freed, but its full blocks stay indexed
    seq = e.cache.new_sequence()
    assert e.cache.attach_prefix(seq, prompt) == 12
    assert e.cache.manager.used_blocks == 3
    got = step(e, seq, prompt[12:])
    assert (got - e.logits(prompt)[-1]).abs().max() <= 1e-4
    e.cache.free(seq)
    again = e.generate(prompt, max_new_tokens=5)
    assert again.tokens == first.tokens and again.stats.prompt_tokens == 2
    other = e.generate([1, 300, 301, 302, 450] + list(range(310, 319)), max_new_tokens=3)
    assert other.stats.prompt_tokens == 10                     # only the first block is shared
    assert e.cache.manager.used_blocks == 0


def test_rewritten_prefix_block_leaves_the_index(model):
    e = engine(model)
    prompt = [1] + list(range(300, 311))                       # 12 tokens: exactly 3 blocks
    seq = e.cache.new_sequence()
    step(e, seq, prompt)
    e.cache.index_prefix(seq)
    e.cache.rewind(seq, 6)                                     # block 1 becomes partial and is written again
    step(e, seq, [400, 401])
    probe = e.cache.new_sequence()
    assert e.cache.attach_prefix(probe, prompt + [5]) == 4     # only block 0 still matches
    assert (step(e, probe, prompt[4:]) - e.logits(prompt)[-1]).abs().max() <= 1e-4


def test_a_repeated_prompt_stays_contiguous(model):
    """The block after a reused prefix is taken back even though it is still indexed: a contiguous sequence is read
    as a view every decode step, where a gapped one is gathered."""
    e = engine(model)
    prompt = [1] + list(range(300, 315))                       # 16 tokens: 4 full blocks, 3 reused next time
    e.generate(prompt, max_new_tokens=5)
    seq = e.cache.new_sequence()
    assert e.cache.attach_prefix(seq, prompt) == 12
    step(e, seq, prompt[12:])
    assert seq.contiguous and seq.blocks == [seq.blocks[0] + i for i in range(len(seq.blocks))]
    e.cache.free(seq)
