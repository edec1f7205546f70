"""PagedKVCache: per-layer page tensors plus per-sequence page tables.

Pages are ``[num_pages, page_size, H_kv, D]`` tensors, one K and one V per layer, shared by
every sequence. A sequence is a list of page ids and a length; its token at position p lives
in slot ``pages[p // page_size] * page_size + p % page_size``. Pages are reference counted
(``leapdec._C.PageAllocator``) so ``fork`` shares a prefix; a write into a shared page first
copies it (copy-on-write). ``truncate`` rolls a sequence back (speculative decoding) and
``compact`` moves accepted tree nodes into place. Running out of pages raises
``OutOfPagesError`` (a ``MemoryError``) and changes nothing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from leapdec import _C
from leapdec.ops import move_kv_slots

OutOfPagesError = _C.OutOfPagesError


@dataclass
class AttentionPlan:
    """Index tensors of one ``paged_attention`` call (FlashInfer names) and host-side maxima."""

    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_last_page_len: torch.Tensor
    max_qo_len: int
    max_kv_len: int

    def attention_kwargs(self) -> dict:
        return dict(qo_indptr=self.qo_indptr, kv_indptr=self.kv_indptr, kv_indices=self.kv_indices,
                    kv_last_page_len=self.kv_last_page_len, max_qo_len=self.max_qo_len,
                    max_kv_len=self.max_kv_len)


class PagedKVCache:
    """KV cache of ``num_layers`` layers in ``num_pages`` pages of ``page_size`` tokens."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_pages: int,
                 page_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu"):
        sizes = {}
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                            ("num_pages", num_pages), ("page_size", page_size)):
            try:
                sizes[name] = operator.index(value)
            except TypeError:
                sizes[name] = None
            if sizes[name] is None or isinstance(value, bool) or sizes[name] <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        num_layers, num_kv_heads, head_dim, num_pages, page_size = sizes.values()
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.page_size = page_size
        self.num_pages = num_pages
        self.device = torch.device(device)
        self.allocator = _C.PageAllocator(num_pages)
        self._pages: dict[int, list[int]] = {}
        self._lens: dict[int, int] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ sequences
    @property
    def num_free_pages(self) -> int:
        return self.allocator.num_free

    def new_sequence(self) -> int:
        """Start an empty sequence and return its id."""
        seq = self._next_id
        self._next_id += 1
        self._pages[seq], self._lens[seq] = [], 0
        return seq

    def _check(self, seq: int) -> None:
        if seq not in self._pages:
            raise KeyError(f"unknown sequence id {seq}")

    def seq_len(self, seq: int) -> int:
        self._check(seq)
        return self._lens[seq]

    def pages(self, seq: int) -> list[int]:
        self._check(seq)
        return list(self._pages[seq])

    def free(self, seq: int) -> None:
        """Drop a sequence; its pages return to the pool when no fork still holds them."""
        self._check(seq)
        self.allocator.release(self._pages.pop(seq))
        del self._lens[seq]

    def fork(self, seq: int) -> int:
        """A new sequence sharing every page of ``seq`` (copy-on-write on the next write)."""
        self._check(seq)
        child = self.new_sequence()
        self.allocator.share(self._pages[seq])
        self._pages[child] = list(self._pages[seq])
        self._lens[child] = self._lens[seq]
        return child

    def truncate(self, seq: int, new_len: int) -> None:
        """Roll ``seq`` back to its first ``new_len`` tokens, releasing pages past them."""
        self._check(seq)
        if not 0 <= new_len <= self._lens[seq]:
            raise ValueError(f"new_len must be in [0, {self._lens[seq]}], got {new_len}")
        keep = -(-new_len // self.page_size)
        self.allocator.release(self._pages[seq][keep:])
        del self._pages[seq][keep:]
        self._lens[seq] = new_len

    # ------------------------------------------------------------------ slots
    def _slots(self, seq: int, start: int, end: int) -> list[int]:
        pages, ps = self._pages[seq], self.page_size
        return [pages[p // ps] * ps + p % ps for p in range(start, end)]

    def slots(self, seq: int, start: int, end: int) -> torch.Tensor:
        """Slots of positions ``[start, end)`` of ``seq`` (int32, on the cache device), for reads."""
        self._check(seq)
        if not 0 <= start <= end <= self._lens[seq]:
            raise ValueError(f"positions [{start}, {end}) outside sequence {seq} of length {self._lens[seq]}")
        return torch.tensor(self._slots(seq, start, end), dtype=torch.int32, device=self.device)

    def writable_slots(self, seq: int, start: int, end: int) -> torch.Tensor:
        """Slots of existing positions ``[start, end)`` to overwrite in place (copies shared pages first)."""
        self._check(seq)
        if not 0 <= start <= end <= self._lens[seq]:
            raise ValueError(f"positions [{start}, {end}) outside sequence {seq} of length {self._lens[seq]}")
        if end > start:
            self._copy_on_write(seq, range(start // self.page_size, (end - 1) // self.page_size + 1))
        return torch.tensor(self._slots(seq, start, end), dtype=torch.int32, device=self.device)

    def _shared(self, seq: int, page_idx) -> list[int]:
        pages = self._pages[seq]
        return [i for i in page_idx if i < len(pages) and self.allocator.refcount(pages[i]) > 1]

    def _copy_on_write(self, seq: int, page_idx) -> None:
        shared = self._shared(seq, page_idx)
        if not shared:
            return
        fresh = self.allocator.allocate(len(shared))
        ps = self.page_size
        src, dst = [], []
        for i, new in zip(shared, fresh):
            old = self._pages[seq][i]
            src += range(old * ps, old * ps + ps)
            dst += range(new * ps, new * ps + ps)
        self._move(src, dst)
        self.allocator.release([self._pages[seq][i] for i in shared])
        for i, new in zip(shared, fresh):
            self._pages[seq][i] = new

    def _move(self, src: list[int], dst: list[int]) -> None:
        src_t = torch.tensor(src, dtype=torch.int32, device=self.device)
        dst_t = torch.tensor(dst, dtype=torch.int32, device=self.device)
        for k, v in zip(self.k_caches, self.v_caches):
            move_kv_slots(k, v, src_t, dst_t)

    def append(self, seqs: list[int], num_tokens: list[int]) -> torch.Tensor:
        """Grow each ``seqs[i]`` by ``num_tokens[i]`` positions and return their slots, concatenated
        (int32 ``[sum(num_tokens)]``) for ``append_paged_kv``. All-or-nothing on running out."""
        if len(seqs) != len(num_tokens):
            raise ValueError("seqs and num_tokens must have the same length")
        for s, n in zip(seqs, num_tokens):
            self._check(s)
            if n < 0:
                raise ValueError(f"num_tokens must be >= 0, got {n}")
        if len(set(seqs)) != len(seqs):
            raise ValueError("each sequence may appear once per append")
        ps = self.page_size
        need = 0
        for s, n in zip(seqs, num_tokens):
            length = self._lens[s]
            need += -(-(length + n) // ps) - len(self._pages[s])
            if n and length % ps and self._shared(s, [length // ps]):
                need += 1
        if need > self.allocator.num_free:
            raise OutOfPagesError(f"out of KV-cache pages: need {need}, {self.allocator.num_free} of "
                                  f"{self.num_pages} free (allocate a larger cache or free sequences)")
        slots = []
        for s, n in zip(seqs, num_tokens):
            length = self._lens[s]
            if n and length % ps:
                self._copy_on_write(s, [length // ps])
            grow = -(-(length + n) // ps) - len(self._pages[s])
            if grow > 0:
                self._pages[s] += self.allocator.allocate(grow)
            self._lens[s] = length + n
            slots += self._slots(s, length, length + n)
        return torch.tensor(slots, dtype=torch.int32, device=self.device)

    def compact(self, seq: int, start: int, keep: list[int]) -> None:
        """Keep positions ``keep`` (absolute, ascending, each >= start) of ``seq`` as positions
        ``start, start+1, ...`` and truncate the rest: the accepted path of a verified tree
        becomes contiguous and the rejected tree slots are freed."""
        self._check(seq)
        if not 0 <= start <= self._lens[seq]:
            raise ValueError(f"start must be in [0, {self._lens[seq]}] (the length of sequence {seq}), got {start}")
        if any(b <= a for a, b in zip(keep, keep[1:])) or (keep and (keep[0] < start or keep[-1] >= self._lens[seq])):
            raise ValueError(f"keep must be ascending positions in [{start}, {self._lens[seq]})")
        moves = [(p, start + i) for i, p in enumerate(keep) if p != start + i]
        if moves:
            lo = min(d for _, d in moves)
            self._copy_on_write(seq, range(lo // self.page_size, (start + len(keep) - 1) // self.page_size + 1))
            src = self._slots_of(seq, [p for p, _ in moves])
            dst = self._slots_of(seq, [d for _, d in moves])
            self._move(src, dst)
        self.truncate(seq, start + len(keep))

    def _slots_of(self, seq: int, positions: list[int]) -> list[int]:
        pages, ps = self._pages[seq], self.page_size
        return [pages[p // ps] * ps + p % ps for p in positions]

    # ------------------------------------------------------------------ attention metadata
    def plan(self, seqs: list[int], qo_lens: list[int]) -> AttentionPlan:
        """Index tensors for ``paged_attention`` over ``seqs`` whose last ``qo_lens[i]`` positions are queries."""
        seqs, qo_lens = list(seqs), list(qo_lens)
        if len(seqs) != len(qo_lens):
            raise ValueError(f"plan needs one qo_len per sequence: {len(seqs)} sequences, {len(qo_lens)} qo_lens")
        kv_indptr, kv_indices, last, qo_indptr = [0], [], [], [0]
        max_kv = 0
        for s, q in zip(seqs, qo_lens):
            self._check(s)
            length = self._lens[s]
            if q < 0:
                raise ValueError(f"qo_lens must be >= 0, got {q} for sequence {s}")
            if q > length:
                raise ValueError(f"sequence {s} has {length} positions, fewer than its {q} queries")
            pages = self._pages[s]
            kv_indices += pages
            kv_indptr.append(len(kv_indices))
            last.append(length - (len(pages) - 1) * self.page_size if pages else 0)
            qo_indptr.append(qo_indptr[-1] + q)
            max_kv = max(max_kv, length)

        def t(x):
            return torch.tensor(x, dtype=torch.int32, device=self.device)

        return AttentionPlan(t(qo_indptr), t(kv_indptr), t(kv_indices), t(last),
                             max(qo_lens, default=0), max_kv)
