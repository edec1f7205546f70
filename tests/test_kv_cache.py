"""PagedKVCache invariants: page accounting, copy-on-write forks, rollback, compaction.

A stateful hypothesis test drives random sequences of operations against a plain Python model
(each sequence a list of token values) and checks, after every step, that reading each
sequence back through its slots gives the model's values and that page counts add up.
"""

import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from leapdec.kv_cache import OutOfPagesError, PagedKVCache
from leapdec.ops import append_paged_kv

H, D = 2, 4


def write(cache, slots, values):
    """Write token value x as a K row full of x and a V row full of -x, in every layer."""
    vals = torch.tensor(values, dtype=torch.float32)
    k = vals.view(-1, 1, 1).expand(-1, H, D).contiguous()
    for kc, vc in zip(cache.k_caches, cache.v_caches):
        append_paged_kv(k, -k, kc, vc, slots)


def read(cache, seq):
    slots = cache.slots(seq, 0, cache.seq_len(seq)).long()
    out = []
    for kc, vc in zip(cache.k_caches, cache.v_caches):
        k = kc.view(-1, H, D)[slots]
        v = vc.view(-1, H, D)[slots]
        assert torch.equal(k, -v)
        out.append(k[:, 0, 0].tolist())
    assert all(o == out[0] for o in out)
    return out[0]


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cache = None
        self.model = {}
        self.counter = 0

    @rule(page_size=st.sampled_from([1, 2, 4]), num_pages=st.integers(4, 16))
    @precondition(lambda self: self.cache is None)
    def init(self, page_size, num_pages):
        self.cache = PagedKVCache(num_layers=2, num_kv_heads=H, head_dim=D, num_pages=num_pages,
                                  page_size=page_size)

    def fresh(self, n):
        vals = list(range(self.counter + 1, self.counter + 1 + n))
        self.counter += n
        return vals

    @rule()
    @precondition(lambda self: self.cache is not None)
    def new(self):
        self.model[self.cache.new_sequence()] = []

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def append(self, data):
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=3, unique=True))
        ns = [data.draw(st.integers(0, 6)) for _ in seqs]
        free_before = self.cache.num_free_pages
        try:
            slots = self.cache.append(seqs, ns)
        except OutOfPagesError:
            assert self.cache.num_free_pages == free_before
            for s in seqs:
                assert self.cache.seq_len(s) == len(self.model[s])
            return
        vals = self.fresh(sum(ns))
        write(self.cache, slots, vals)
        i = 0
        for s, n in zip(seqs, ns):
            self.model[s] += vals[i:i + n]
            i += n

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def fork(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        self.model[self.cache.fork(s)] = list(self.model[s])

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def truncate(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        n = data.draw(st.integers(0, len(self.model[s])))
        self.cache.truncate(s, n)
        del self.model[s][n:]

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def overwrite(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        n = len(self.model[s])
        if n == 0:
            return
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        try:
            slots = self.cache.writable_slots(s, a, b)
        except OutOfPagesError:
            return
        vals = self.fresh(b - a)
        write(self.cache, slots, vals)
        self.model[s][a:b] = vals

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def compact(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        n = len(self.model[s])
        start = data.draw(st.integers(0, n))
        keep = sorted(data.draw(st.sets(st.integers(start, max(start, n - 1)), max_size=4))) if n > start else []
        try:
            self.cache.compact(s, start, keep)
        except OutOfPagesError:
            return
        self.model[s] = self.model[s][:start] + [self.model[s][p] for p in keep]

    @rule(data=st.data())
    @precondition(lambda self: self.cache is not None and self.model)
    def free(self, data):
        s = data.draw(st.sampled_from(sorted(self.model)))
        self.cache.free(s)
        del self.model[s]

    @invariant()
    def contents_match(self):
        if self.cache is None:
            return
        for s, vals in self.model.items():
            assert self.cache.seq_len(s) == len(vals)
            assert read(self.cache, s) == [float(v) for v in vals]

    @invariant()
    def pages_add_up(self):
        if self.cache is None:
            return
        holders = {}
        for s in self.model:
            pages = self.cache.pages(s)
            assert len(pages) == -(-self.cache.seq_len(s) // self.cache.page_size)
            for p in pages:
                holders[p] = holders.get(p, 0) + 1
        for p, n in holders.items():
            assert self.cache.allocator.refcount(p) == n
        assert self.cache.num_free_pages + len(holders) == self.cache.num_pages


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_plan_matches_flashinfer_layout():
    cache = PagedKVCache(1, H, D, num_pages=8, page_size=4)
    a, b = cache.new_sequence(), cache.new_sequence()
    cache.append([a, b], [5, 4])
    plan = cache.plan([a, b], [2, 1])
    assert plan.qo_indptr.tolist() == [0, 2, 3]
    assert plan.kv_indptr.tolist() == [0, 2, 3]
    assert plan.kv_last_page_len.tolist() == [1, 4]
    assert plan.kv_indices.tolist() == cache.pages(a) + cache.pages(b)
    assert (plan.max_qo_len, plan.max_kv_len) == (2, 5)
    with pytest.raises(ValueError, match="fewer than"):
        cache.plan([a], [6])


def test_out_of_pages_changes_nothing():
    cache = PagedKVCache(1, H, D, num_pages=2, page_size=2)
    s = cache.new_sequence()
    cache.append([s], [3])
    with pytest.raises(MemoryError, match="out of KV-cache pages"):
        cache.append([s], [2])
    assert cache.seq_len(s) == 3 and cache.num_free_pages == 0


def test_bad_arguments():
    cache = PagedKVCache(1, H, D, num_pages=2, page_size=2)
    s = cache.new_sequence()
    with pytest.raises(KeyError, match="unknown sequence"):
        cache.seq_len(99)
    with pytest.raises(ValueError, match="new_len"):
        cache.truncate(s, 1)
    with pytest.raises(ValueError, match="once per append"):
        cache.append([s, s], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        PagedKVCache(1, H, D, num_pages=0)


@pytest.mark.parametrize("field", ["num_kv_heads", "head_dim", "page_size", "num_layers"])
def test_zero_sizes_are_rejected_at_creation(field):
    """A cache with zero KV heads, head_dim or page size would reach paged_attention (SIGFPE)."""
    args = dict(num_layers=1, num_kv_heads=H, head_dim=D, num_pages=2, page_size=2)
    args[field] = 0
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        PagedKVCache(**args)


def test_plan_needs_one_qo_len_per_sequence():
    cache = PagedKVCache(1, H, D, num_pages=8, page_size=4)
    a, b = cache.new_sequence(), cache.new_sequence()
    cache.append([a, b], [5, 4])
    with pytest.raises(ValueError, match="2 sequences, 1 qo_lens"):
        cache.plan([a, b], [1])
    with pytest.raises(ValueError, match="1 sequences, 2 qo_lens"):
        cache.plan([a], [1, 1])
    with pytest.raises(ValueError, match="qo_lens must be >= 0"):
        cache.plan([a], [-1])


def test_compact_rejects_negative_or_past_the_end_start():
    cache = PagedKVCache(1, H, D, num_pages=8, page_size=4)
    s = cache.new_sequence()
    cache.append([s], [6])
    pages = cache.pages(s)
    with pytest.raises(ValueError, match="start must be in"):
        cache.compact(s, -1, [0, 1])
    with pytest.raises(ValueError, match="start must be in"):
        cache.compact(s, 7, [])
    assert cache.seq_len(s) == 6 and cache.pages(s) == pages
