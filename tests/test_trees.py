"""Draft tree construction: static (Medusa choice lists, greedy trees, chains) and dynamic (EAGLE-2)."""

import itertools

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import build_tree, verify_tree_greedy
from leapdec.ops.tree import check_tree_parents
from leapdec.trees import (MC_SIM_7B_63, DynamicTree, chain_tree, greedy_tree, grow_dynamic_tree,
                           medusa_tree, pad_parents, tree_from_choices)


# ----------------------------------------------------------------------------- static trees

def test_mc_sim_7b_63_tree():
    tree = tree_from_choices(MC_SIM_7B_63)
    assert len(MC_SIM_7B_63) == 63 and tree.num_nodes == 64
    assert tree.max_depth == 4 and tree.topk == 10
    check_tree_parents(tree.batch_parents(2))
    # Medusa's order: by (length, values)
    assert list(tree.choices) == sorted(MC_SIM_7B_63, key=lambda c: (len(c), c))
    assert tree.choices[:3] == ((0,), (1,), (2,))
    # counts per depth: 10 children of the root, then 28, 23, 2
    assert torch.bincount(tree.depth).tolist() == [1, 10, 28, 23, 2]
    index = {c: i + 1 for i, c in enumerate(tree.choices)}
    for c, i in index.items():
        assert int(tree.parents[i]) == (index[c[:-1]] if len(c) > 1 else 0)
        assert int(tree.head[i]) == len(c) - 1 and int(tree.rank[i]) == c[-1]
    assert int(tree.parents[index[(0, 0, 0, 1)]]) == index[(0, 0, 0)]


def test_medusa_tree_prefixes_are_trees():
    for n in (0, 8, 16, 32, 63):
        tree = medusa_tree(n)
        assert tree.num_nodes == n + 1
        check_tree_parents(tree.batch_parents(1))
        assert set(tree.choices) == set(MC_SIM_7B_63[:n])
    with pytest.raises(ValueError, match="num_draft"):
        medusa_tree(64)


def test_fill_candidates_matches_medusa_tree_indices():
    """Medusa gathers candidates from [base, topk(head 0), topk(head 1), ...] (TOPK = 10) at
    ``tree_indices[node] = last_choice + TOPK * depth_idx + 1``."""
    tree = tree_from_choices(MC_SIM_7B_63)
    gen = torch.Generator().manual_seed(0)
    batch, heads, topk = 3, 5, 10
    head_topk = torch.randint(1000, (batch, heads, topk), generator=gen)
    root = torch.randint(1000, (batch,), generator=gen)
    cand = tree.fill_candidates(root, head_topk)
    flat = torch.cat([root[:, None], head_topk.flatten(1)], 1)
    tree_indices = [0] + [c[-1] + topk * (len(c) - 1) + 1 for c in tree.choices]
    assert torch.equal(cand, flat[:, tree_indices])
    with pytest.raises(ValueError, match="head_topk"):
        tree.fill_candidates(root, head_topk[:, :3])


def test_fill_level_from_parent_topk():
    tree = tree_from_choices([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    cand = torch.zeros(1, tree.num_nodes, dtype=torch.int64)
    cand[0, 0] = 7
    cand = tree.fill_level(cand, 1, torch.tensor([[[10, 11]]]))              # root's top-2
    assert cand[0, 1:3].tolist() == [10, 11]
    cand = tree.fill_level(cand, 2, torch.tensor([[[20, 21], [30, 31]]]))    # top-2 at nodes 1, 2
    assert cand[0, 3:6].tolist() == [20, 21, 30]
    cand = tree.fill_level(cand, 3, torch.tensor([[[40], [50], [60]]]))      # top-1 at nodes 3, 4, 5
    assert cand[0].tolist() == [7, 10, 11, 20, 21, 30, 40]
    with pytest.raises(ValueError, match="parent_topk"):
        tree.fill_level(cand, 2, torch.tensor([[[20, 21]]]))


def test_leaf_paths_and_chain():
    tree = tree_from_choices([(0,), (1,), (0, 0), (0, 1), (1, 0)])
    assert tree.leaf_paths() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]
    chain = chain_tree(4)
    assert chain.parents.tolist() == [-1, 0, 1, 2, 3] and chain.leaf_paths() == [[0, 1, 2, 3, 4]]
    assert chain_tree(0).num_nodes == 1


@pytest.mark.parametrize("choices,message", [
    ([(0,), (0,)], "duplicate"),
    ([(0,), (1, 0)], "no parent"),
    ([(0,), ()], "empty"),
    ([(-1,)], "negative"),
])
def test_bad_choices(choices, message):
    with pytest.raises(ValueError, match=message):
        tree_from_choices(choices)


def brute_force_best(accuracy, num_draft):
    """Best ancestor-closed set of num_draft paths by exhaustive search."""
    heads, k = len(accuracy), len(accuracy[0])
    universe = [p for d in range(1, heads + 1) for p in itertools.product(range(k), repeat=d)]
    best = 0.0
    for subset in itertools.combinations(universe, num_draft):
        s = set(subset)
        if all(len(p) == 1 or p[:-1] in s for p in subset):
            best = max(best, tree_from_choices(subset).expected_accept_length(accuracy))
    return best


def test_greedy_tree_is_optimal_on_small_tables():
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        acc = torch.sort(torch.rand(2, 3, generator=gen) * 0.8, dim=1, descending=True).values
        for n in (1, 3, 5):
            tree = greedy_tree(acc, n)
            assert tree.num_nodes == n + 1
            assert tree.expected_accept_length(acc) == pytest.approx(brute_force_best(acc.tolist(), n))


def test_greedy_tree_hand():
    acc = [[0.6, 0.1], [0.5, 0.1]]
    # values: (0,) .6, (0,0) .3, (1,) .1, (0,1) .06, (1,0) .05
    assert greedy_tree(acc, 3).choices == ((0,), (1,), (0, 0))
    assert greedy_tree(acc, 3).expected_accept_length(acc) == pytest.approx(2.0)
    assert greedy_tree(acc, 5).choices == ((0,), (1,), (0, 0), (0, 1), (1, 0))
    assert greedy_tree([[0.9], [0.8], [0.7]], 10).choices == ((0,), (0, 0), (0, 0, 0))  # all there is
    with pytest.raises(ValueError, match="accuracy"):
        greedy_tree([[1.5]], 1)


def test_pad_parents_ragged_batch():
    parents = pad_parents([chain_tree(3), medusa_tree(8), torch.tensor([-1])])
    assert parents.shape == (3, 9)
    assert parents[0].tolist() == [-1, 0, 1, 2, -2, -2, -2, -2, -2]
    assert parents[2].tolist() == [-1] + [-2] * 8
    check_tree_parents(parents)
    mask, depth = build_tree(parents)
    assert depth[0].tolist() == [0, 1, 2, 3, -1, -1, -1, -1, -1]
    assert torch.equal(mask, ref.build_tree(parents)[0])
    with pytest.raises(ValueError, match="num_nodes"):
        pad_parents([medusa_tree(8)], num_nodes=4)


def test_static_tree_with_perfect_heads_accepts_the_deepest_path():
    """End to end with the ops: a toy target whose next token is a fixed permutation of the
    current one, and Medusa heads whose rank-0 token is always right: greedy verification of
    the 63-node tree accepts the rank-0 path to depth 4 and the bonus is the 5th next token."""
    vocab, batch, heads, topk = 50, 4, 5, 10
    gen = torch.Generator().manual_seed(2)
    step = torch.randperm(vocab, generator=gen)                 # target: next(t) = step[t]
    root = torch.randint(vocab, (batch,), generator=gen)
    truth = [root]
    for _ in range(heads + 1):
        truth.append(step[truth[-1]])
    head_topk = torch.stack([torch.randperm(vocab, generator=gen)[:topk] for _ in range(batch * heads)])
    head_topk = head_topk.view(batch, heads, topk)
    for h in range(heads):                                       # rank 0 right, other ranks wrong
        wrong = head_topk[:, h] == truth[h + 1][:, None]
        head_topk[:, h][wrong] = (truth[h + 1][:, None].expand(-1, topk)[wrong] + 1) % vocab
        head_topk[:, h, 0] = truth[h + 1]
    tree = tree_from_choices(MC_SIM_7B_63)
    cand = tree.fill_candidates(root, head_topk)
    out = verify_tree_greedy(cand, tree.batch_parents(batch), step[cand])
    assert out.accept_len.tolist() == [5] * batch
    deepest = [0] + [tree.choices.index((0,) * d) + 1 for d in range(1, 5)]
    assert out.accept_index[:, :5].tolist() == [deepest] * batch
    assert torch.equal(out.bonus, truth[5])


# ----------------------------------------------------------------------------- dynamic trees

def test_dynamic_tree_hand():
    """top_k = 2 over vocab 4; the drafter's log-probs depend on the input token only."""
    logp = torch.log(torch.tensor([
        [0.1, 0.6, 0.2, 0.1],    # after token 0
        [0.05, 0.05, 0.5, 0.4],  # after token 1
        [0.7, 0.1, 0.1, 0.1],    # after token 2
        [0.25, 0.25, 0.3, 0.2],  # after token 3
    ]))
    tree = DynamicTree(torch.tensor([0]), top_k=2)
    tree.expand(logp[tree.frontier_tokens])       # root (0) -> 1 (.6), 2 (.2)
    assert tree.tokens[0].tolist() == [0, 1, 2] and tree.frontier.tolist() == [[1, 2]]
    tree.expand(logp[tree.frontier_tokens])       # 1 -> 2 (.30), 3 (.24); 2 -> 0 (.14), 1|2|3 (.02)
    assert tree.tokens[0, 3:5].tolist() == [2, 3] and tree.tokens[0, 5].item() == 0
    assert tree.parents[0].tolist() == [-1, 0, 0, 1, 1, 2, 2]
    assert tree.frontier.tolist() == [[3, 4]]     # the two best new nodes: scores .30, .24
    assert tree.frontier_depth.tolist() == [[2, 2]]
    sel = tree.select(4)                          # best 4: .6 (1), .3 (3), .24 (4), .2 (2)
    assert sel.nodes.tolist() == [[0, 1, 2, 3, 4]]
    assert sel.parents.tolist() == [[-1, 0, 0, 1, 1]]
    assert sel.tokens.tolist() == [[0, 1, 2, 2, 3]]
    torch.testing.assert_close(sel.scores.exp(), torch.tensor([[1.0, 0.6, 0.2, 0.3, 0.24]]))
    sel = tree.select(100)                        # everything
    assert sel.parents.shape == (1, 7)


def eagle2_brute_force(root, table, levels, top_k, num_draft):
    """One request, plain Python: nodes (token, parent, score), EAGLE-2 expansion and selection."""
    nodes = [(root, -1, 0.0)]
    frontier = [0]
    for _ in range(levels):
        new = []
        for f in frontier:
            lp = table[nodes[f][0]]
            for tok in sorted(range(len(lp)), key=lambda t: -lp[t])[:top_k]:
                new.append((len(nodes) + len(new), (tok, f, nodes[f][2] + lp[tok])))
        nodes.extend(n for _, n in new)
        best = sorted(new, key=lambda item: -item[1][2])[:top_k]
        frontier = sorted(i for i, _ in best)
    keep = [0] + sorted(sorted(range(1, len(nodes)), key=lambda i: -nodes[i][2])[:num_draft])
    where = {old: new for new, old in enumerate(keep)}
    return [-1] + [where[nodes[i][1]] for i in keep[1:]], [nodes[i][0] for i in keep]


def test_dynamic_tree_matches_brute_force():
    gen = torch.Generator().manual_seed(3)
    vocab, batch = 12, 3
    table = torch.log_softmax(torch.randn(vocab, vocab, generator=gen) * 2, -1)
    roots = torch.randint(vocab, (batch,), generator=gen)
    for levels, top_k, num_draft in [(1, 3, 2), (3, 3, 10), (4, 4, 25), (5, 2, 100)]:
        sel = grow_dynamic_tree(roots, lambda t: table[t.frontier_tokens], levels, top_k, num_draft)
        check_tree_parents(sel.parents)
        for b in range(batch):
            parents, tokens = eagle2_brute_force(int(roots[b]), table.tolist(), levels, top_k, num_draft)
            assert sel.parents[b].tolist() == parents
            assert sel.tokens[b].tolist() == tokens
        # children never outscore their parents, and the kept set is the best by score
        parent_scores = sel.scores.gather(1, sel.parents.clamp(min=0).long())
        assert bool((sel.scores[:, 1:] <= parent_scores[:, 1:]).all())


def test_dynamic_tree_feeds_the_ops():
    gen = torch.Generator().manual_seed(4)
    vocab = 20
    table = torch.log_softmax(torch.randn(vocab, vocab, generator=gen) * 3, -1)   # a confident drafter
    sel = grow_dynamic_tree(torch.tensor([1, 2]), lambda t: table[t.frontier_tokens], 6, 10, 60)
    assert sel.parents.shape == (2, 61)
    mask, depth = build_tree(sel.parents)
    assert int(depth.max()) <= 6 and torch.equal(mask, ref.build_tree(sel.parents)[0])
    # the drafter's greedy path survives the pruning: a target that agrees with the
    # drafter's argmax accepts it to depth 6
    target = table.argmax(-1)[sel.tokens]
    out = verify_tree_greedy(sel.tokens, sel.parents, target)
    assert out.accept_len.tolist() == [7, 7]


def test_dynamic_tree_bad_input():
    tree = DynamicTree(torch.tensor([0, 1]), top_k=2)
    with pytest.raises(ValueError, match="logprobs must be"):
        tree.expand(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="log-probabilities"):
        tree.expand(torch.ones(2, 1, 5))
    with pytest.raises(ValueError, match="top_k"):
        DynamicTree(torch.tensor([0]), top_k=0)
