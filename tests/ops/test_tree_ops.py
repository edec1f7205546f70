"""Tree speculative decoding ops: build_tree and verify_tree_{greedy,typical,sampling}.

Hand-built trees with exact answers, random ragged batches against leapdec.reference, bad
trees, opcheck, chain sampling against textbook speculative sampling, and chi-square tests that
tree speculative sampling emits tokens distributed as the target.
"""

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import build_tree, verify_tree_greedy, verify_tree_sampling, verify_tree_typical
from leapdec.ops import tree as tree_ops

OPS = torch.ops.leapdec
RULES = ["iid", "without_replacement", "deterministic"]

# node:     0   1  2  3  4  5  6  7
# parent:  -1   0  0  0  1  1  2  4       (3 children under the root; 7 is a grandchild of 1)
HAND_PARENTS = [-1, 0, 0, 0, 1, 1, 2, 4]


def i32(rows, device):
    return torch.tensor(rows, dtype=torch.int32, device=device)


def i64(rows, device):
    return torch.tensor(rows, dtype=torch.int64, device=device)


def random_parents(batch, num_nodes, gen, absent_prob=0.2):
    """Random valid trees; absent nodes (-2) anywhere, never above a present node."""
    parents = torch.full((batch, num_nodes), -2, dtype=torch.int32)
    parents[:, 0] = -1
    for b in range(batch):
        present = [0]
        size = int(torch.randint(1, num_nodes + 1, (1,), generator=gen))
        for i in range(1, size):
            if torch.rand(1, generator=gen).item() < absent_prob:
                continue
            parents[b, i] = present[int(torch.randint(len(present), (1,), generator=gen))]
            present.append(i)
    return parents


def assert_same_verification(got, want):
    for name, g, w in zip(("accept_len", "accept_index", "bonus"), got, want):
        assert torch.equal(g.cpu(), w.cpu()), f"{name}: got {g.cpu()}, want {w.cpu()}"


# ----------------------------------------------------------------------------- build_tree

def test_build_tree_hand(device):
    parents = i32([HAND_PARENTS, [-1, 0, 1, -2, 1, -2, -2, -2]], device)
    mask, depth = build_tree(parents)
    ancestors = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 3], 4: [0, 1, 4], 5: [0, 1, 5], 6: [0, 2, 6],
                 7: [0, 1, 4, 7]}
    want = torch.zeros(2, 8, 8, dtype=torch.bool)
    for i, anc in ancestors.items():
        want[0, i, anc] = True
    for i, anc in {0: [0], 1: [0, 1], 2: [0, 1, 2], 4: [0, 1, 4]}.items():
        want[1, i, anc] = True
    assert torch.equal(mask.cpu(), want)
    assert depth.cpu().tolist() == [[0, 1, 1, 1, 2, 2, 2, 3], [0, 1, 2, -1, 2, -1, -1, -1]]
    assert mask.dtype == torch.bool and depth.dtype == torch.int32


def test_build_tree_chain_is_causal(device):
    mask, depth = build_tree(i32([[-1] + list(range(9))], device))
    assert torch.equal(mask[0].cpu(), torch.ones(10, 10, dtype=torch.bool).tril())
    assert depth[0].cpu().tolist() == list(range(10))


def test_build_tree_random_vs_reference(device):
    gen = torch.Generator().manual_seed(1)
    for batch, num_nodes in [(1, 1), (3, 8), (5, 33), (2, 64)]:
        parents = random_parents(batch, num_nodes, gen)
        mask, depth = build_tree(parents.to(device))
        want_mask, want_depth = ref.build_tree(parents)
        assert torch.equal(mask.cpu(), want_mask)
        assert torch.equal(depth.cpu(), want_depth)


def test_build_tree_int64_parents_are_converted(device):
    mask, depth = build_tree(torch.tensor([HAND_PARENTS], device=device))
    assert depth.dtype == torch.int32 and depth[0, 7].item() == 3


# ----------------------------------------------------------------------------- verify_tree_greedy

def test_verify_tree_greedy_hand(device):
    parents = i32([HAND_PARENTS] * 3, device)
    #             node: 0   1   2   3   4   5   6   7
    candidates = i64([[9, 10, 11, 12, 20, 21, 22, 30],    # 1 (10) then 5 (21), no child of 5
                      [9, 10, 11, 12, 20, 21, 22, 30],    # 1 then 4 then 7 -> leaf
                      [9, 10, 11, 12, 20, 21, 22, 30]],   # nothing matches at the root
                     device)
    target = i64([[10, 21, 0, 0, 0, 40, 0, 0],
                  [10, 20, 0, 0, 30, 0, 0, 50],
                  [13, 0, 0, 0, 0, 0, 0, 0]], device)
    out = verify_tree_greedy(candidates, parents, target)
    assert out.accept_len.cpu().tolist() == [3, 4, 1]
    assert out.accept_index.cpu().tolist() == [[0, 1, 5, -1, -1, -1, -1, -1],
                                               [0, 1, 4, 7, -1, -1, -1, -1],
                                               [0, -1, -1, -1, -1, -1, -1, -1]]
    assert out.bonus.cpu().tolist() == [40, 50, 13]
    assert out.accept_len.dtype == torch.int32 and out.bonus.dtype == torch.int64


def test_verify_tree_greedy_duplicate_siblings_take_first(device):
    # nodes 1 and 2 both carry token 5 == target[0]; node 2 alone would lead deeper: the first wins.
    parents = i32([[-1, 0, 0, 2]], device)
    out = verify_tree_greedy(i64([[0, 5, 5, 6]], device), parents, i64([[5, 7, 6, 8]], device))
    assert out.accept_index.cpu().tolist() == [[0, 1, -1, -1]] and out.bonus.item() == 7


def test_verify_tree_greedy_chain_and_int32_tokens(device):
    parents = i32([[-1, 0, 1, 2, 3]], device)
    candidates = torch.tensor([[1, 2, 3, 9, 5]], dtype=torch.int32, device=device)
    target = torch.tensor([[2, 3, 4, 5, 6]], dtype=torch.int32, device=device)
    out = verify_tree_greedy(candidates, parents, target)
    assert out.accept_len.tolist() == [3] and out.bonus.tolist() == [4]


def test_verify_tree_greedy_absent_nodes_are_never_accepted(device):
    parents = i32([[-1, 0, -2, -2]], device)
    out = verify_tree_greedy(i64([[0, 1, 1, 1]], device), parents, i64([[2, 0, 0, 0]], device))
    assert out.accept_len.tolist() == [1] and out.bonus.tolist() == [2]


def test_verify_tree_greedy_random_vs_reference(device):
    gen = torch.Generator().manual_seed(2)
    for batch, num_nodes, vocab in [(1, 1, 3), (4, 10, 2), (6, 40, 3), (3, 64, 4)]:
        parents = random_parents(batch, num_nodes, gen)
        candidates = torch.randint(vocab, (batch, num_nodes), generator=gen)
        target = torch.randint(vocab, (batch, num_nodes), generator=gen)
        got = verify_tree_greedy(candidates.to(device), parents.to(device), target.to(device))
        assert_same_verification(got, ref.verify_tree_greedy(candidates, parents, target))


def test_verify_tree_greedy_matches_medusa_path_rule(device):
    """Medusa scores every root-to-leaf path (cumprod of matches) and takes the first longest;
    with distinct siblings (top-k tokens) this is the tree walk."""
    from leapdec.trees import MC_SIM_7B_63, tree_from_choices

    tree = tree_from_choices(MC_SIM_7B_63)
    gen = torch.Generator().manual_seed(3)
    batch, heads, topk, vocab = 16, 4, 10, 12
    head_topk = torch.stack([torch.randperm(vocab, generator=gen)[:topk] for _ in range(batch * heads)])
    head_topk = head_topk.view(batch, heads, topk)
    candidates = tree.fill_candidates(torch.randint(vocab, (batch,), generator=gen), head_topk)
    # the target after node n is mostly one of the top-3 of the head proposing n's children
    next_head = tree.depth.long().clamp(max=heads - 1)
    rank = torch.randint(3, (batch, tree.num_nodes), generator=gen)
    target = head_topk[torch.arange(batch)[:, None], next_head[None, :], rank]
    target = torch.where(torch.rand(batch, tree.num_nodes, generator=gen) < 0.1,
                         torch.randint(vocab, (batch, tree.num_nodes), generator=gen), target)
    got = verify_tree_greedy(candidates.to(device), tree.batch_parents(batch, device), target.to(device))
    lengths = []
    for b in range(batch):
        best_len, best_path = -1, None
        for path in tree.leaf_paths():
            n = 0
            while n + 1 < len(path) and candidates[b, path[n + 1]] == target[b, path[n]]:
                n += 1
            if n > best_len:
                best_len, best_path = n, path
        lengths.append(best_len + 1)
        assert got.accept_index[b, : best_len + 1].cpu().tolist() == best_path[: best_len + 1]
        assert int(got.bonus[b]) == int(target[b, best_path[best_len]])
    assert got.accept_len.cpu().tolist() == lengths
    assert max(lengths) >= 3


# ----------------------------------------------------------------------------- verify_tree_typical

def peaked_logits(vocab, token, logit, device):
    row = torch.zeros(vocab, device=device)
    row[token] = logit
    return row


def test_verify_tree_typical_hand(device):
    vocab = 8
    # parents: root -> 1, 2 ; 1 -> 3 ; 2 -> 4
    parents = i32([[-1, 0, 0, 1, 2]], device)
    candidates = i64([[0, 3, 5, 6, 7]], device)
    logits = torch.zeros(1, 5, vocab, device=device)
    logits[0, 0] = peaked_logits(vocab, 3, 2.0, device)   # p(3) ~ 0.51, p(5) ~ 0.07: 1 passes, 2 passes?
    logits[0, 0, 5] = 1.0                                 # p(5) ~ 0.19 -> passes too
    logits[0, 1] = peaked_logits(vocab, 6, 6.0, device)   # p(6) ~ 0.98 -> node 3 passes
    logits[0, 2] = peaked_logits(vocab, 7, 6.0, device)   # p(7) ~ 0.98 -> node 4 passes
    logits[0, 3] = peaked_logits(vocab, 2, 9.0, device)   # bonus after node 3 -> 2
    logits[0, 4] = peaked_logits(vocab, 4, 9.0, device)
    out, node_lp = verify_tree_typical(candidates, parents, logits, temperature=1.0, return_node_logprob=True)
    # both depth-2 paths pass; 0-1-3 has the higher summed log-probability
    assert out.accept_len.tolist() == [3]
    assert out.accept_index.cpu().tolist() == [[0, 1, 3, -1, -1]]
    assert out.bonus.tolist() == [2]
    want_lp = ref.typical_node_logprob(candidates.cpu(), parents.cpu(), logits.cpu())
    torch.testing.assert_close(node_lp.cpu(), want_lp, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(node_lp).all()

    # a flat distribution at node 1 makes node 3 fail: the only depth-2 path is 0-2-4
    logits[0, 1] = 0.0
    out = verify_tree_typical(candidates, parents, logits, temperature=1.0)
    assert out.accept_index.cpu().tolist() == [[0, 2, 4, -1, -1]] and out.bonus.tolist() == [4]


def test_verify_tree_typical_threshold_rule(device):
    """p(x) must beat min(threshold, alpha * exp(-H)): a flat target over 4 tokens (p = 0.25,
    H ~ log 4) passes at alpha = 0.9 (0.9/4 = 0.225 < 0.25) and fails at alpha = 1.1 when the
    threshold is high, while a low threshold (0.2) always lets it pass."""
    parents = i32([[-1, 0]], device)
    candidates = i64([[0, 1]], device)
    logits = torch.zeros(1, 2, 4, device=device)
    def accepted(**kw):
        return verify_tree_typical(candidates, parents, logits, **kw).accept_len.item() == 2
    assert accepted(posterior_threshold=0.9, posterior_alpha=0.9)
    assert not accepted(posterior_threshold=0.9, posterior_alpha=1.1)
    assert accepted(posterior_threshold=0.2, posterior_alpha=1.1)
    assert not accepted(posterior_threshold=0.3, posterior_alpha=10.0)


def test_verify_tree_typical_random_vs_reference(device):
    gen = torch.Generator().manual_seed(4)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    for dtype in dtypes:
        for batch, num_nodes, vocab in [(1, 1, 5), (4, 12, 6), (5, 30, 40), (2, 64, 300)]:
            parents = random_parents(batch, num_nodes, gen)
            logits = (torch.randn(batch, num_nodes, vocab, generator=gen) * 3).to(dtype)
            # draft tokens mostly the target's top-2 at the parent so that paths pass
            top2 = logits.float().topk(2, dim=-1).indices                       # [B, T, 2]
            par = parents.clamp(min=0).long()
            pick = torch.randint(2, (batch, num_nodes, 1), generator=gen)
            candidates = top2.gather(1, par[..., None].expand(-1, -1, 2)).gather(2, pick).squeeze(-1)
            noise = torch.randint(vocab, (batch, num_nodes), generator=gen)
            candidates = torch.where(torch.rand(batch, num_nodes, generator=gen) < 0.2, noise, candidates)
            for temperature in (0.7, 1.3):
                got, got_lp = verify_tree_typical(candidates.to(device), parents.to(device),
                                                  logits.to(device), temperature=temperature,
                                                  return_node_logprob=True)
                want = ref.verify_tree_typical(candidates, parents, logits, temperature=temperature)
                assert_same_verification(got, want)
                want_lp = ref.typical_node_logprob(candidates, parents, logits, temperature=temperature)
                torch.testing.assert_close(got_lp.cpu(), want_lp, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- verify_tree_sampling

def test_verify_tree_sampling_hand(device):
    vocab = 6
    parents = i32([[-1, 0, 0, 2]], device)            # root -> 1, 2 ; 2 -> 3
    candidates = i64([[0, 2, 3, 1]], device)
    target = torch.zeros(1, 4, vocab, device=device)
    target[0, 0, 3] = 1.0                              # the target says 3 after the root
    target[0, 2, 4] = 1.0                              # and 4 after node 2
    target[0, 1, 0] = target[0, 3, 5] = 1.0
    draft = torch.full((1, 4, vocab), 1.0 / vocab, device=device)
    coins = torch.full((1, 4), 0.5, device=device)
    for rule in RULES:
        out = verify_tree_sampling(candidates, parents, draft, target, coins, draft_rule=rule)
        # node 1 (token 2) is impossible under p; node 2 (token 3) is then certain; node 3
        # (token 1) is impossible; the bonus comes from the residual at node 2, all mass on 4.
        assert out.accept_index.cpu().tolist() == [[0, 2, -1, -1]], rule
        assert out.accept_len.tolist() == [2] and out.bonus.tolist() == [4], rule


def test_verify_tree_sampling_coin_decides(device):
    """One draft token x with p(x) = 0.3, q(x) = 0.6: accepted iff coin < 0.5; the bonus after a
    rejection comes from norm(max(0, p - q)) by inverse CDF."""
    parents = i32([[-1, 0], [-1, 0]], device)
    candidates = i64([[0, 1], [0, 1]], device)
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], device=device)
    q = torch.tensor([0.1, 0.6, 0.1, 0.2], device=device)
    target = torch.stack([p, p]).expand(2, 2, 4).permute(1, 0, 2).contiguous()   # [2, 2, 4]
    draft = torch.stack([q, q]).expand(2, 2, 4).permute(1, 0, 2).contiguous()
    coins = torch.tensor([[0.9, 0.49], [0.9, 0.51]], device=device)
    out = verify_tree_sampling(candidates, parents, draft, target, coins, draft_rule="iid")
    assert out.accept_len.tolist() == [2, 1]
    # row 1: residual max(0, p - q) = [0.4, 0, 0.1, 0] / 0.5; coin 0.9 -> cdf [0.8, 0.8, 1.0] -> token 2
    assert out.bonus.tolist()[1] == 2
    # row 0: accepted leaf, bonus from the target at node 1 (= p): coin 0.9 -> token 2
    assert out.bonus.tolist()[0] == 2


@pytest.mark.parametrize("rule", RULES)
def test_verify_tree_sampling_random_vs_reference(device, rule):
    gen = torch.Generator().manual_seed(5)
    depths = []
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    for dtype in dtypes:
        for batch, num_nodes, vocab in [(1, 1, 4), (4, 9, 5), (8, 24, 8), (3, 48, 700)]:
            parents = random_parents(batch, num_nodes, gen)
            # a drafter close to the target, so that paths several nodes deep get accepted
            logits = torch.randn(batch, num_nodes, vocab, generator=gen) * 2
            target = torch.softmax(logits, -1).to(dtype)
            draft = torch.softmax(logits + torch.randn(logits.shape, generator=gen) * 0.7, -1).to(dtype)
            par = parents.clamp(min=0).long()
            q_parent = draft.float().gather(1, par[..., None].expand(-1, -1, vocab))
            if rule == "deterministic":   # drafts that look like top-k picks: mostly the draft's mode
                q_parent = q_parent ** 4
            candidates = torch.multinomial(q_parent.view(-1, vocab), 1, generator=gen).view(batch, num_nodes)
            coins = torch.rand(batch, num_nodes, generator=gen)
            got = verify_tree_sampling(candidates.to(device), parents.to(device), draft.to(device),
                                       target.to(device), coins.to(device), draft_rule=rule)
            want = ref.verify_tree_sampling(candidates, parents, draft, target, coins, rule)
            assert_same_verification(got, want)
            depths.extend(got.accept_len.tolist())
    assert max(depths) >= 3


def textbook_chain_sampling(drafts, q, p, coins):
    """Ordinary speculative sampling of one chain: drafts[i] ~ q[i], accept with min(1, p/q),
    on rejection draw from norm(max(0, p - q)); after all accepted draw from p[n]. Draws by
    inverse CDF with coins[0]; coins[i + 1] tests drafts[i]. Returns (accepted, bonus)."""
    def draw(dist):
        cdf = torch.cumsum(dist, 0)
        return int((cdf > coins[0] * dist.sum()).nonzero()[0, 0])
    for i, x in enumerate(drafts):
        if coins[i + 1] < p[i][x] / q[i][x]:
            continue
        return i, draw(torch.clamp(p[i] - q[i], min=0))
    return len(drafts), draw(p[len(drafts)])


@pytest.mark.parametrize("rule", ["iid", "without_replacement"])
def test_verify_tree_sampling_chain_is_speculative_sampling(device, rule):
    gen = torch.Generator().manual_seed(6)
    batch, n, vocab = 64, 5, 7
    p = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen) * 1.5, -1)
    drafts = torch.multinomial(q[:, :n].reshape(-1, vocab), 1, generator=gen).view(batch, n)
    candidates = torch.cat([torch.zeros(batch, 1, dtype=torch.int64), drafts], 1)
    parents = torch.arange(-1, n, dtype=torch.int32).expand(batch, -1).contiguous()
    coins = torch.rand(batch, n + 1, generator=gen)
    out = verify_tree_sampling(candidates.to(device), parents.to(device), q.to(device), p.to(device),
                               coins.to(device), draft_rule=rule)
    for b in range(batch):
        accepted, bonus = textbook_chain_sampling(drafts[b].tolist(), q[b], p[b], coins[b])
        assert int(out.accept_len[b]) == accepted + 1
        assert out.accept_index[b].cpu().tolist() == list(range(accepted + 1)) + [-1] * (n - accepted)
        assert int(out.bonus[b]) == bonus
    assert 0 < int((out.accept_len > 1).sum()) < batch      # both outcomes occur


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def chi_square_pvalue(counts, probs):
    """Upper tail of the chi-square statistic of counts against probs (df = len - 1)."""
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((len(probs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def sampled_tree_batch(rule, n, gen, draft_as=None):
    """n independent draws of a 2-level tree (root -> 1, 2, 3; 1 -> 4; 2 -> 5) over vocab 6 from
    a synthetic model: the target's next-token dist after token y is P2[y] (root: p0), the
    drafter's Q2[y] (root: q0). Siblings are drafted as `draft_as` (default: the rule)."""
    vocab = 6
    p0 = torch.tensor([0.30, 0.05, 0.20, 0.10, 0.25, 0.10])
    q0 = torch.tensor([0.10, 0.30, 0.10, 0.25, 0.05, 0.20])
    # rows sum to 1 and every entry is >= 0.05, so chi-square cells are well filled
    p2 = torch.softmax(torch.randn(vocab, vocab, generator=seeded(11)), -1) * 0.7 + 0.05
    q2 = torch.softmax(torch.randn(vocab, vocab, generator=seeded(12)), -1)
    draft_as = draft_as or rule
    if draft_as == "deterministic":
        root_children = torch.tensor([1, 3, 5]).expand(n, 3)
    else:
        root_children = torch.multinomial(q0.expand(n, vocab), 3, replacement=draft_as == "iid",
                                          generator=gen)
    cand = torch.zeros(n, 6, dtype=torch.int64)
    cand[:, 1:4] = root_children
    for child, parent in ((4, 1), (5, 2)):
        dist = q2[cand[:, parent]]
        cand[:, child] = dist.argmax(-1) if draft_as == "deterministic" else \
            torch.multinomial(dist, 1, generator=gen).squeeze(1)
    target = p2[cand]
    target[:, 0] = p0
    draft = q2[cand]
    draft[:, 0] = q0
    parents = torch.tensor([-1, 0, 0, 0, 1, 2], dtype=torch.int32).expand(n, -1).contiguous()
    return cand, parents, draft, target, p0, p2


def emitted_tokens(out, cand):
    """First and second emitted tokens (second = -1 when only the bonus was emitted)."""
    idx = out.accept_index.long().cpu()
    n = cand.shape[0]
    rows = torch.arange(n)
    length = out.accept_len.long().cpu()
    bonus = out.bonus.cpu()
    first = torch.where(length >= 2, cand[rows, idx[:, 1].clamp(min=0)], bonus)
    second = torch.where(length >= 3, cand[rows, idx[:, 2].clamp(min=0)], bonus)
    second = torch.where(length >= 2, second, torch.full_like(second, -1))
    return first, second


@pytest.mark.parametrize("rule", RULES)
def test_verify_tree_sampling_is_lossless(device, rule):
    """The first emitted token follows the target at the root, and the token after an accepted
    draft y follows the target after y (chi-square over 24k independent rows)."""
    gen = torch.Generator().manual_seed(100 + RULES.index(rule))
    n = 24000
    cand, parents, draft, target, p0, p2 = sampled_tree_batch(rule, n, gen)
    out = verify_tree_sampling(cand.to(device), parents.to(device), draft.to(device), target.to(device),
                               generator=torch.Generator(device=device).manual_seed(7), draft_rule=rule)
    first, second = emitted_tokens(out, cand)
    assert chi_square_pvalue(torch.bincount(first, minlength=6), p0) > 1e-4
    for y in range(6):
        after = second[(first == y) & (second >= 0)]
        if after.numel() >= 500:
            assert chi_square_pvalue(torch.bincount(after, minlength=6), p2[y] / p2[y].sum()) > 1e-4, y


def test_verify_tree_sampling_wrong_rule_is_detected(device):
    """The chi-square test has power: drafts made without replacement but verified as iid
    (SpecInfer's rule) give a visibly biased first token."""
    gen = torch.Generator().manual_seed(200)
    cand, parents, draft, target, p0, _ = sampled_tree_batch("iid", 24000, gen,
                                                             draft_as="without_replacement")
    out = verify_tree_sampling(cand.to(device), parents.to(device), draft.to(device), target.to(device),
                               generator=torch.Generator(device=device).manual_seed(8), draft_rule="iid")
    first, _ = emitted_tokens(out, cand)
    assert chi_square_pvalue(torch.bincount(first, minlength=6), p0) < 1e-6


def test_verify_tree_sampling_chain_is_lossless(device):
    gen = torch.Generator().manual_seed(300)
    n, vocab = 24000, 6
    p0 = torch.tensor([0.05, 0.40, 0.15, 0.10, 0.20, 0.10])
    q0 = torch.tensor([0.30, 0.20, 0.05, 0.30, 0.05, 0.10])
    p1 = torch.tensor([0.25, 0.10, 0.30, 0.05, 0.10, 0.20])
    q1 = torch.tensor([0.10, 0.10, 0.10, 0.40, 0.20, 0.10])
    cand = torch.zeros(n, 3, dtype=torch.int64)
    cand[:, 1] = torch.multinomial(q0.expand(n, vocab), 1, generator=gen).squeeze(1)
    cand[:, 2] = torch.multinomial(q1.expand(n, vocab), 1, generator=gen).squeeze(1)
    target = torch.stack([p0, p1, p1]).expand(n, 3, vocab).contiguous()
    draft = torch.stack([q0, q1, q1]).expand(n, 3, vocab).contiguous()
    parents = torch.tensor([-1, 0, 1], dtype=torch.int32).expand(n, -1).contiguous()
    out = verify_tree_sampling(cand.to(device), parents.to(device), draft.to(device), target.to(device),
                               generator=torch.Generator(device=device).manual_seed(9))
    first, second = emitted_tokens(out, cand)
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), p0) > 1e-4
    assert chi_square_pvalue(torch.bincount(second[second >= 0], minlength=vocab), p1) > 1e-4


def test_verify_tree_sampling_is_reproducible(device):
    cand, parents, draft, target, _, _ = sampled_tree_batch("iid", 256, torch.Generator().manual_seed(1))
    args = (cand.to(device), parents.to(device), draft.to(device), target.to(device))
    a = verify_tree_sampling(*args, generator=torch.Generator(device=device).manual_seed(5))
    b = verify_tree_sampling(*args, generator=torch.Generator(device=device).manual_seed(5))
    assert_same_verification(a, b)


# ----------------------------------------------------------------------------- bad input

BAD_TREES = [
    ([[0, 0, 1]], r"parents\[0\]\[0\] must be -1"),
    ([[-1, 0, 2]], r"parents\[0\]\[2\] = 2 is invalid"),
    ([[-1, 0, 5]], r"parents\[0\]\[2\] = 5 is invalid"),
    ([[-1, 0, -1]], r"parents\[0\]\[2\] = -1 is invalid"),
    ([[-1, 0, 1], [-1, -3, 0]], r"parents\[1\]\[1\] = -3 is invalid"),
    ([[-1, -2, 1]], r"parents\[0\]\[2\] = 1 names an absent node"),
]


@pytest.mark.parametrize("rows,message", BAD_TREES)
def test_bad_trees_are_rejected(device, rows, message):
    parents = i32(rows, device)
    tokens = torch.zeros(parents.shape, dtype=torch.int64, device=device)
    probs = torch.full((*parents.shape, 4), 0.25, device=device)
    with pytest.raises(RuntimeError, match=message):
        build_tree(parents)
    with pytest.raises(RuntimeError, match=message):
        verify_tree_greedy(tokens, parents, tokens)
    with pytest.raises(RuntimeError, match=message):
        verify_tree_typical(tokens, parents, probs)
    with pytest.raises(RuntimeError, match=message):
        verify_tree_sampling(tokens, parents, probs, probs)


def test_bad_arguments_are_rejected(device):
    parents = i32([HAND_PARENTS], device)
    tokens = torch.zeros(1, 8, dtype=torch.int64, device=device)
    probs = torch.full((1, 8, 5), 0.2, device=device)
    with pytest.raises(TypeError, match="parents"):
        build_tree(parents.float())
    with pytest.raises(ValueError, match="parents"):
        build_tree(parents[0])
    with pytest.raises(TypeError, match="candidates"):
        verify_tree_greedy(tokens.float(), parents, tokens)
    with pytest.raises(ValueError, match="target_tokens"):
        verify_tree_greedy(tokens, parents, tokens[:, :4])
    with pytest.raises(RuntimeError, match="target_logits"):
        verify_tree_typical(tokens, parents, probs[:, :4])
    with pytest.raises(RuntimeError, match="target_logits"):
        verify_tree_typical(tokens, parents, probs.to(torch.int32))
    with pytest.raises(ValueError, match="temperature"):
        verify_tree_typical(tokens, parents, probs, temperature=0.0)
    with pytest.raises(RuntimeError, match="out of the vocabulary"):
        verify_tree_typical(tokens + 5, parents, probs)
    with pytest.raises(RuntimeError, match="out of the vocabulary"):
        verify_tree_sampling(tokens - 1, parents, probs, probs)
    with pytest.raises(ValueError, match="draft_rule"):
        verify_tree_sampling(tokens, parents, probs, probs, draft_rule="greedy")
    with pytest.raises(ValueError, match="draft_probs"):
        verify_tree_sampling(tokens, parents, None, probs)
    with pytest.raises(RuntimeError, match="draft_probs"):
        verify_tree_sampling(tokens, parents, probs[..., :4], probs)
    with pytest.raises(RuntimeError, match="coins"):
        verify_tree_sampling(tokens, parents, probs, probs, torch.full((1, 8), 1.5, device=device))
    with pytest.raises(RuntimeError, match="coins"):
        verify_tree_sampling(tokens, parents, probs, probs, torch.zeros(1, 7, device=device))
    # the deterministic rule needs no draft distribution
    out = verify_tree_sampling(tokens, parents, None, probs, draft_rule="deterministic")
    assert out.accept_len.shape == (1,)


def test_raw_op_checks_outputs(device):
    parents = i32([HAND_PARENTS], device)
    mask = torch.empty(1, 8, 7, dtype=torch.bool, device=device)
    depth = torch.empty(1, 8, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="mask must be"):
        OPS.build_tree(mask, depth, parents)
    with pytest.raises(RuntimeError, match="depth must have dtype"):
        OPS.build_tree(torch.empty(1, 8, 8, dtype=torch.bool, device=device), depth.long(), parents)
    tokens = torch.zeros(1, 8, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="bonus"):
        OPS.verify_tree_greedy(torch.empty(1, dtype=torch.int32, device=device),
                               torch.empty(1, 8, dtype=torch.int32, device=device),
                               torch.empty(2, dtype=torch.int64, device=device), tokens, parents, tokens)


# ----------------------------------------------------------------------------- opcheck

def test_opcheck(device):
    parents = i32([HAND_PARENTS, [-1, 0, 1, -2, 1, -2, -2, -2]], device)
    batch, num_nodes, vocab = 2, 8, 6
    gen = torch.Generator().manual_seed(9)
    tokens = torch.randint(vocab, (batch, num_nodes), generator=gen).to(device)
    logits = torch.randn(batch, num_nodes, vocab, generator=gen).to(device)
    probs = torch.softmax(logits, -1)
    coins = torch.rand(batch, num_nodes, generator=gen).to(device)

    def outs():
        return (torch.empty(batch, dtype=torch.int32, device=device),
                torch.empty(batch, num_nodes, dtype=torch.int32, device=device),
                torch.empty(batch, dtype=torch.int64, device=device))

    ws = torch.empty(2 * batch * vocab, device=device) if device.type == "cuda" else None
    cases = [
        (OPS.build_tree.default, (torch.empty(batch, num_nodes, num_nodes, dtype=torch.bool, device=device),
                                  torch.empty(batch, num_nodes, dtype=torch.int32, device=device), parents)),
        (OPS.verify_tree_greedy.default, (*outs(), tokens, parents, tokens)),
        (OPS.verify_tree_typical.default, (*outs(), torch.empty(batch, num_nodes, device=device), tokens,
                                           parents, logits, 0.09, 0.3, 0.8)),
        (OPS.verify_tree_sampling.default, (*outs(), tokens, parents, probs, probs, coins, "iid", ws)),
        (OPS.verify_tree_sampling.default,
         (*outs(), tokens, parents, None, probs, coins, "deterministic", ws)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_wrappers_compile(device):
    parents = i32([HAND_PARENTS], device)
    tokens = torch.randint(3, (1, 8), device=device)

    @torch.compile(fullgraph=True, backend="eager")
    def step(candidates, target):
        mask, depth = build_tree(parents)
        out = verify_tree_greedy(candidates, parents, target)
        return mask, depth, out.accept_len, out.accept_index, out.bonus

    got = step(tokens, tokens)
    want_mask, want_depth = ref.build_tree(parents.cpu())
    assert torch.equal(got[0].cpu(), want_mask) and torch.equal(got[1].cpu(), want_depth)
    assert_same_verification(got[2:], ref.verify_tree_greedy(tokens.cpu(), parents.cpu(), tokens.cpu()))


def test_check_tree_parents_host_matches_cpu_messages():
    for rows, message in BAD_TREES:
        with pytest.raises(RuntimeError, match=message):
            tree_ops.check_tree_parents(torch.tensor(rows, dtype=torch.int32))
    tree_ops.check_tree_parents(torch.tensor([HAND_PARENTS], dtype=torch.int32))
