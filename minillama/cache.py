"""The paged KV cache: a pool of fixed-size blocks shared by sequences through reference counts.

Layout: one K and one V tensor for all layers, [n_layers, kv_heads, slots, head_dim], where slot = block * block_size
+ offset. A sequence owns a block table; token i of a sequence lives in slot blocks[i // bs] * bs + i % bs.
Keeping the slot axis next to head_dim means a sequence whose blocks are consecutive is read as a plain view
(no gather), which is the common case of one conversation.

The pool starts small and doubles on demand up to `max_blocks`, so memory follows the tokens actually held.
Keys are stored after RoPE (what the model attends with); a context shift re-rotates the keys it keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import CacheFullError


@dataclass(eq=False)
class Sequence:
    """One sequence's view of the cache. `tokens` are the ids whose K/V are cached, in position order."""
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    contiguous: bool = True              # blocks are b, b+1, b+2, ... (read without a gather)
    drugged_from: int | None = None      # first cached position computed under cache-tainting noise

    def __len__(self) -> int:
        return len(self.tokens)

    def mark_drugged(self, start: int) -> None:
        if self.drugged_from is None or start < self.drugged_from:
            self.drugged_from = start

    @property
    def drugged_count(self) -> int:
        return 0 if self.drugged_from is None else len(self.tokens) - self.drugged_from


class BlockManager:
    """Reference-counted block ids, plus a prefix index of full, clean blocks (nano-vllm's chained hash).

    A full block of prompt tokens is indexed by a hash of its tokens chained with the previous block's hash, so
    equal hashes mean equal prefixes (verified by comparing tokens). When its last user frees it, an indexed block
    keeps its contents and stays findable until the block is handed out again: a later request with the same
    prompt prefix picks it up instead of recomputing it. Plain free blocks are handed out before indexed ones,
    and the block right after a sequence's last one is preferred (even over keeping a cached prefix block), to keep
    sequences contiguous."""

    def __init__(self, capacity: int, max_blocks: int):
        self.max_blocks = max_blocks
        self.ref_counts: list[int] = [0] * capacity
        self.free: set[int] = set(range(capacity))      # plain free blocks
        self.free_indexed: dict[int, None] = {}          # free blocks still in the prefix index, oldest first
        self.hash_to_block: dict[int, int] = {}
        self.block_key: dict[int, tuple[int, tuple[int, ...]]] = {}   # block -> (hash, tokens)

    @property
    def capacity(self) -> int:
        return len(self.ref_counts)

    @property
    def used_blocks(self) -> int:
        """Blocks some sequence holds (indexed blocks nobody holds count as free)."""
        return self.capacity - len(self.free) - len(self.free_indexed)

    @property
    def free_blocks(self) -> int:
        """Blocks that can still be handed out, counting those the pool may grow to."""
        return len(self.free) + len(self.free_indexed) + self.max_blocks - self.capacity

    def extend(self, new_capacity: int) -> None:
        self.free.update(range(self.capacity, new_capacity))
        self.ref_counts.extend([0] * (new_capacity - self.capacity))

    def allocate(self, after: int | None = None) -> int:
        nxt = None if after is None else after + 1
        if nxt is not None and (nxt in self.free or nxt in self.free_indexed):
            # keeping the sequence contiguous (read as a view every step) is worth more than one cached prefix block
            block = nxt
        elif self.free:
            block = min(self.free)
        else:
            block = next(iter(self.free_indexed))            # evict the oldest cached prefix block
        self.free.discard(block)
        self.free_indexed.pop(block, None)
        self.forget(block)
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        if self.ref_counts[block] == 0:                      # revived from the prefix index
            self.free_indexed.pop(block)
        self.ref_counts[block] += 1

    def decref(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            if block in self.block_key:
                self.free_indexed[block] = None
            else:
                self.free.add(block)

    # ---- prefix index ------------------------------------------------------------------------------------------
    @staticmethod
    def chain_hash(previous: int, tokens: tuple[int, ...]) -> int:
        return hash((previous, tokens))

    def index(self, block: int, key: int, tokens: tuple[int, ...]) -> None:
        if key not in self.hash_to_block and block not in self.block_key:
            self.hash_to_block[key] = block
            self.block_key[block] = (key, tokens)

    def lookup(self, key: int, tokens: tuple[int, ...]) -> int | None:
        block = self.hash_to_block.get(key)
        if block is None or self.block_key[block][1] != tokens:
            return None
        return block

    def forget(self, block: int) -> None:
        """The block's contents are about to change: drop it from the index."""
        entry = self.block_key.pop(block, None)
        if entry is not None:
            del self.hash_to_block[entry[0]]
            if self.ref_counts[block] == 0 and block in self.free_indexed:
                self.free_indexed.pop(block)
                self.free.add(block)


class PagedKVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, block_size: int = 16,
                 max_tokens: int = 1 << 20, initial_tokens: int = 1024, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        max_blocks = max(1, -(-max_tokens // block_size))
        capacity = min(max_blocks, max(1, -(-initial_tokens // block_size)))
        self.manager = BlockManager(capacity, max_blocks)
        shape = (n_layers, n_kv_heads, capacity * block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._next_id = 0

    # ---- sequences -------------------------------------------------------------------------------------------
    def new_sequence(self) -> Sequence:
        self._next_id += 1
        return Sequence(self._next_id)

    def fork(self, parent: Sequence) -> Sequence:
        """A child sharing every block of the parent. Whoever writes into a shared block first copies it."""
        child = self.new_sequence()
        child.tokens = list(parent.tokens)
        child.blocks = list(parent.blocks)
        child.contiguous = parent.contiguous
        child.drugged_from = parent.drugged_from
        for b in child.blocks:
            self.manager.incref(b)
        return child

    def free(self, seq: Sequence) -> None:
        for b in seq.blocks:
            self.manager.decref(b)
        seq.blocks = []
        seq.tokens = []
        seq.contiguous = True
        seq.drugged_from = None

    def rewind(self, seq: Sequence, n: int) -> None:
        """Truncate `seq` to its first n tokens, freeing the blocks it no longer needs."""
        n = max(0, min(n, len(seq)))
        keep_blocks = -(-n // self.block_size)
        for b in seq.blocks[keep_blocks:]:
            self.manager.decref(b)
        del seq.blocks[keep_blocks:]
        del seq.tokens[n:]
        if seq.drugged_from is not None and seq.drugged_from >= n:
            seq.drugged_from = None
        if not seq.blocks:
            seq.contiguous = True

    # ---- writing -----------------------------------------------------------------------------------------------
    def reserve(self, seq: Sequence, n: int) -> torch.Tensor:
        """Slots for the next n tokens of `seq` (allocating blocks, copying a shared partial block first).
        Nothing about the sequence's length changes until `commit`; if anything fails, no state is corrupted."""
        bs = self.block_size
        start = len(seq)
        needed = -(-(start + n) // bs) - len(seq.blocks)
        if needed > self.manager.free_blocks:
            raise CacheFullError(
                f"the KV cache is full: {needed} more blocks of {bs} tokens are needed, "
                f"{self.manager.free_blocks} are free (max {self.manager.max_blocks * bs} tokens); "
                "free sequences, shorten the prompt or raise max_cache_tokens")
        if start % bs:
            if self.manager.ref_counts[seq.blocks[-1]] > 1:
                self._copy_on_write(seq)
            else:
                self.manager.forget(seq.blocks[-1])
        for _ in range(needed):
            self._ensure_free_block()
            last = seq.blocks[-1] if seq.blocks else None
            block = self.manager.allocate(after=last)
            seq.contiguous = seq.contiguous and (last is None or block == last + 1)
            seq.blocks.append(block)
        return self.slots(seq, start, start + n)

    def commit(self, seq: Sequence, tokens: list[int]) -> None:
        seq.tokens.extend(tokens)

    def slots(self, seq: Sequence, start: int, stop: int) -> torch.Tensor:
        bs = self.block_size
        if seq.contiguous and seq.blocks:
            base = seq.blocks[0] * bs
            return torch.arange(base + start, base + stop, device=self.k.device)
        pos = torch.arange(start, stop)
        table = torch.tensor(seq.blocks, dtype=torch.int64)
        return (table[pos // bs] * bs + pos % bs).to(self.k.device)

    def _copy_on_write(self, seq: Sequence) -> None:
        old = seq.blocks[-1]
        self._ensure_free_block()
        before = seq.blocks[-2] if len(seq.blocks) > 1 else None
        new = self.manager.allocate(after=before)
        bs = self.block_size
        self.k[:, :, new * bs:(new + 1) * bs] = self.k[:, :, old * bs:(old + 1) * bs]
        self.v[:, :, new * bs:(new + 1) * bs] = self.v[:, :, old * bs:(old + 1) * bs]
        self.manager.decref(old)
        seq.blocks[-1] = new
        seq.contiguous = self._is_contiguous(seq.blocks)

    def _ensure_free_block(self) -> None:
        m = self.manager
        if m.free or m.free_indexed:   # reuse (or evict) before growing: memory follows the tokens held
            return
        grow_to = min(self.manager.max_blocks, self.manager.capacity * 2)
        bs = self.block_size
        pad = (grow_to - self.manager.capacity) * bs
        self.k = torch.cat([self.k, self.k.new_zeros(*self.k.shape[:2], pad, self.k.shape[3])], dim=2)
        self.v = torch.cat([self.v, self.v.new_zeros(*self.v.shape[:2], pad, self.v.shape[3])], dim=2)
        self.manager.extend(grow_to)

    @staticmethod
    def _is_contiguous(blocks: list[int]) -> bool:
        return all(b == blocks[0] + i for i, b in enumerate(blocks))

    # ---- prefix sharing across requests ---------------------------------------------------------------------------
    def attach_prefix(self, seq: Sequence, ids: list[int]) -> int:
        """Give an empty sequence every cached full block that matches the start of `ids`. Returns how many
        tokens it now holds (always fewer than len(ids), so the caller has at least one token to compute)."""
        assert not seq.tokens, "attach_prefix needs an empty sequence"
        bs, key = self.block_size, 0
        for i in range((len(ids) - 1) // bs):
            chunk = tuple(ids[i * bs:(i + 1) * bs])
            key = self.manager.chain_hash(key, chunk)
            block = self.manager.lookup(key, chunk)
            if block is None:
                break
            self.manager.incref(block)
            seq.contiguous = seq.contiguous and (not seq.blocks or block == seq.blocks[-1] + 1)
            seq.blocks.append(block)
            seq.tokens.extend(chunk)
        return len(seq.tokens)

    def index_prefix(self, seq: Sequence) -> None:
        """Make the sequence's full, clean blocks findable by later requests with the same prefix."""
        bs, key = self.block_size, 0
        clean = len(seq) if seq.drugged_from is None else seq.drugged_from
        for i in range(clean // bs):
            chunk = tuple(seq.tokens[i * bs:(i + 1) * bs])
            key = self.manager.chain_hash(key, chunk)
            self.manager.index(seq.blocks[i], key, chunk)

    # ---- reading -----------------------------------------------------------------------------------------------
    def read_slots(self, seq: Sequence, length: int) -> torch.Tensor:
        return self.slots(seq, 0, length)

    # ---- context shift -----------------------------------------------------------------------------------------
    def shift(self, seq: Sequence, n_keep: int, n_discard: int, rotary) -> None:
        """Drop tokens [n_keep, n_keep + n_discard) and move the rest down, re-rotating their keys by -n_discard
        so they sit at their new positions (llama.cpp's context shift). Works on shared blocks: the moved part is
        written to fresh blocks, never into a block another sequence still reads."""
        total = len(seq)
        if n_discard <= 0 or n_keep + n_discard > total:
            raise ValueError(f"cannot discard {n_discard} tokens after keeping {n_keep} of {total}")
        src = self.slots(seq, n_keep + n_discard, total)
        delta = torch.full((1,), -n_discard, dtype=torch.int64, device=self.k.device)
        # [layers, kv_heads, n, d]: rotating by a constant delta is one cos/sin pair for every position.
        moved_k = rotary.rotate(self.k[:, :, src].transpose(1, 2), delta.expand(len(src)), inverse=False).transpose(1, 2)
        moved_v = self.v[:, :, src]
        moved_tokens = seq.tokens[n_keep + n_discard:]
        drugged = seq.drugged_from
        self.rewind(seq, n_keep)
        dst = self.reserve(seq, len(moved_tokens))
        self.k[:, :, dst] = moved_k
        self.v[:, :, dst] = moved_v
        self.commit(seq, moved_tokens)
        if drugged is not None:
            seq.mark_drugged(max(n_keep, drugged - n_discard) if drugged >= n_keep else drugged)
