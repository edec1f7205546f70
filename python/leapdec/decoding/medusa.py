"""Method "medusa": Medusa heads draft a static token tree, one base forward verifies it
(FasterDecoding/Medusa), here for ragged batches.

Per step and per live row: the root is the row's next token (already emitted, not yet in the
cache); the heads read the hidden state of the last verified position and propose the tokens
after the root (head i's top-k fill depth i + 1 of the tree). Every live row appends its own
tree to its sequence and one ``forward_paged`` runs all of them (tree-attention mask from
``build_tree``, positions ``prefix_len + depth``). Verification picks the accepted path per row
(greedy: lossless, identical to greedy AR; ``typical``: Medusa's typical acceptance;
``sampling``: lossless tree speculative sampling with the drafts treated as deterministic
top-k choices), ``PagedKVCache.compact`` keeps the path's K/V contiguous and frees the rest,
the path's last hidden state feeds the heads next step, and the bonus token becomes the new
root. A row's tree is cut to the depth it can still use (``max_new_tokens``), so no row decodes
past its limit; a stop token inside an accepted path ends the row there.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections import Counter
from pathlib import Path

import torch

from leapdec import zoo
from leapdec.decoding.base import (GenerationOutput, Stats, check_sampling, make_generator,
                                   register_method, sample_next, stop_token_set, warp_logits)
from leapdec.models.heads import CONFIG_FILE, WEIGHTS_FILE, MedusaHeads
from leapdec.models.transformer import StepInput
from leapdec.ops import build_tree, verify_tree_greedy, verify_tree_sampling, verify_tree_typical
from leapdec.trees import MC_SIM_7B_63, StaticTree, greedy_tree, tree_from_choices

ACCEPTANCE = ("greedy", "typical", "sampling")
DEFAULT_TREE_NODES = 32          # draft nodes of the default tree without an accuracy table
MAX_AUTO_NODES = 64              # largest tree (draft nodes per row) the automatic sizing considers
# Cost of one more tree token per row, relative to the fixed cost of a model step (automatic
# tree sizing): on a CPU compute grows with every token; a GPU step is flat for small models.
NODE_COST = {"cpu": 0.04, "cuda": 0.004}
_HINT = (": pass heads= (a MedusaHeads or a folder saved by it), or train heads with "
         "`python -m leapdec.train medusa --base MODEL`")

_HEADS_CACHE: dict = {}
_HEADS_LOCK = threading.Lock()
_AUTO_TREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # heads -> (key, _AutoTrees)


# --------------------------------------------------------------------------- heads and trees

def load_heads(model, heads=None) -> MedusaHeads:
    """The Medusa heads for ``model``: ``heads`` itself when it is a ``MedusaHeads``, else the
    folder ``heads`` or the model's ``medusa/`` companion, on the model's device and dtype."""
    if isinstance(heads, MedusaHeads):
        heads.check_base(model)
        return heads
    if heads is not None and not isinstance(heads, (str, Path)):
        raise TypeError(f"heads must be a MedusaHeads, a folder path or None, got {type(heads).__name__}")
    folder = zoo.companion_dir(model, "medusa", heads, _HINT)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"heads: no {WEIGHTS_FILE} in {folder}{_HINT}")
    config = folder / CONFIG_FILE
    stamp = config.stat().st_mtime_ns if config.is_file() else None
    key = (str(weights.resolve()), weights.stat().st_mtime_ns, stamp, str(model.device), model.dtype)
    with _HEADS_LOCK:
        loaded = _HEADS_CACHE.get(key)
        if loaded is None:
            loaded = MedusaHeads.load(folder, device=model.device, dtype=model.dtype)
            if len(_HEADS_CACHE) >= 8:
                _HEADS_CACHE.pop(next(iter(_HEADS_CACHE)))
            _HEADS_CACHE[key] = loaded
    loaded.check_base(model)
    _warn_if_other_base(model, loaded)
    return loaded


_SHA_CACHE: dict = {}


def _warn_if_other_base(model, heads: MedusaHeads) -> None:
    """Warn when the heads record the SHA-256 of another base checkpoint than the model's
    (decoding stays exact, but the heads' drafts will rarely be accepted)."""
    want = heads.meta.get("base_model_sha256")
    base = getattr(model, "checkpoint_dir", None)
    if not want or base is None or not (Path(base) / "model.safetensors").is_file():
        return
    path = Path(base) / "model.safetensors"
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    if _SHA_CACHE[key] != want:
        warnings.warn(f"heads: these Medusa heads were trained for another checkpoint than {path} "
                      f"(SHA-256 differs); decoding stays exact but few drafts will be accepted: "
                      f"retrain them with `python -m leapdec.train medusa --base {base}`", stacklevel=3)


def ranked_paths(heads: MedusaHeads) -> list[tuple[tuple[int, ...], float]] | None:
    """Draft-tree paths best first, each with the probability that a step accepts it: the
    ``tree_paths`` the training recipe measured on held-out data (the heads' joint top-k ranks
    of the true continuation, as Medusa's tree search simulates), else derived from the
    ``head_accuracy [H, K]`` table assuming independent heads, else None. Every prefix of the
    list is a tree (a path's value never exceeds its parent's; ties put parents first)."""
    measured = heads.meta.get("tree_paths")
    if measured:
        paths = [(tuple(int(r) for r in p), float(v)) for p, v in measured]
    elif heads.meta.get("head_accuracy") is not None:
        acc = torch.as_tensor(heads.meta["head_accuracy"], dtype=torch.float64)
        full = greedy_tree(acc, MAX_AUTO_NODES)
        paths = [(c, float(acc[torch.arange(len(c)), torch.tensor(c)].prod())) for c in full.choices]
    else:
        return None
    paths = [(p, v) for p, v in paths if len(p) <= heads.num_heads]
    return sorted(paths, key=lambda pv: (-pv[1], len(pv[0]), pv[0]))


def expected_accept_lengths(paths) -> list[float]:
    """``E[k]`` for k = 0..len(paths): expected tokens per step (accepted drafts + bonus) of the
    tree of the k best ``ranked_paths``: 1 + the sum of their acceptance probabilities."""
    expected = [1.0]
    for _, v in paths:
        expected.append(expected[-1] + v)
    return expected


def default_tree(heads: MedusaHeads, num_draft: int = DEFAULT_TREE_NODES) -> StaticTree:
    """``num_draft`` draft nodes: the best paths of :func:`ranked_paths` when the companion
    config measured them, else the first paths of Medusa's ``mc_sim_7b_63`` the heads can fill."""
    paths = ranked_paths(heads)
    if paths is not None and len(paths) >= num_draft:
        return tree_from_choices([p for p, _ in paths[:num_draft]])
    if heads.meta.get("head_accuracy") is not None:
        return greedy_tree(heads.meta["head_accuracy"], num_draft)
    usable = [c for c in MC_SIM_7B_63 if len(c) <= heads.num_heads]
    return tree_from_choices(usable[:num_draft])


def resolve_tree(tree, heads: MedusaHeads) -> StaticTree | None:
    """``tree`` option -> a fixed ``StaticTree``, or None for automatic sizing.

    None: the companion's recorded ``tree`` if any, else automatic sizing when the heads carry
    measured ``tree_paths`` or a ``head_accuracy`` table, else :func:`default_tree`. ``"auto"``:
    automatic sizing. An int: that many draft nodes (:func:`default_tree`). A list of Medusa
    choice paths, or a ``StaticTree``. A tree may not be deeper than there are heads."""
    if tree is None:
        choices = heads.meta.get("tree")
        if choices:
            tree = tree_from_choices(choices)
        elif ranked_paths(heads) is not None:
            return None
        else:
            tree = default_tree(heads)
    elif isinstance(tree, str):
        if tree != "auto":
            raise ValueError(f"tree must be 'auto', an int, a list of choice paths or a StaticTree, got {tree!r}")
        if ranked_paths(heads) is None:
            raise ValueError("tree='auto' needs heads whose config measured tree_paths or a head_accuracy table")
        return None
    elif isinstance(tree, bool):
        raise TypeError("tree must be None, an int, a list of choice paths or a StaticTree, got a bool")
    elif isinstance(tree, int):
        if tree < 0:
            raise ValueError(f"tree must be >= 0 draft nodes, got {tree}")
        tree = default_tree(heads, tree)
    elif isinstance(tree, (list, tuple)):
        tree = tree_from_choices(tree)
    elif not isinstance(tree, StaticTree):
        raise TypeError(f"tree must be None, an int, a list of choice paths or a StaticTree, "
                        f"got {type(tree).__name__}")
    if tree.num_nodes > 1 and tree.max_depth > heads.num_heads:
        raise ValueError(f"tree is {tree.max_depth} levels deep but there are only "
                         f"{heads.num_heads} Medusa heads")
    if tree.topk > heads.vocab_size:
        raise ValueError(f"tree needs top-{tree.topk} proposals, more than the vocabulary ({heads.vocab_size})")
    if bool((tree.depth[1:] < tree.depth[:-1]).any()):
        raise ValueError("tree nodes must be ordered by depth (build it with leapdec.trees.tree_from_choices)")
    return tree


class _StepTree:
    """A static tree with what a decoding step needs, precomputed on the model's device."""

    def __init__(self, tree: StaticTree, device):
        self.tree = tree
        self.num_nodes = tree.num_nodes
        self.max_depth = tree.max_depth
        self.parents = tree.parents.to(device)
        self.depth = tree.depth.tolist()
        # nodes_upto[d]: nodes of depth <= d, a prefix of the node order
        self.nodes_upto = [sum(1 for x in self.depth if x <= d) for d in range(self.max_depth + 1)]
        self.mask = build_tree(self.parents[None])[0][0]                      # [T, T] ancestors
        self.k_top = max(tree.topk, 1)


class _AutoTrees:
    """Automatic tree sizing: for n live rows, the tree of the k best :func:`ranked_paths`
    with k maximising ``E(k) / (1 + node_cost * n * (k + 1))``: expected tokens per step over
    the step's cost relative to its fixed cost (every row runs k drafts plus its root)."""

    def __init__(self, paths):
        self.paths = paths[:MAX_AUTO_NODES]
        self.expected = expected_accept_lengths(self.paths)
        self.trees: dict = {}
        self.choice: dict = {}

    def size_for(self, rows: int, node_cost: float) -> int:
        key = (rows, node_cost)
        if key not in self.choice:
            score = [e / (1.0 + node_cost * rows * (k + 1)) for k, e in enumerate(self.expected)]
            self.choice[key] = max(range(len(score)), key=lambda k: (score[k], -k))
        return self.choice[key]

    def tree(self, k: int, device) -> _StepTree:
        key = (k, str(device))
        if key not in self.trees:
            self.trees[key] = _StepTree(tree_from_choices([p for p, _ in self.paths[:k]]), device)
        return self.trees[key]


def _auto_trees(heads: MedusaHeads) -> _AutoTrees:
    key = repr((heads.meta.get("tree_paths"), heads.meta.get("head_accuracy"), heads.num_heads))
    cached = _AUTO_TREES.get(heads)
    if cached is None or cached[0] != key:
        cached = (key, _AutoTrees(ranked_paths(heads)))
        _AUTO_TREES[heads] = cached
    return cached[1]


def _check_options(temperature, top_k, top_p, acceptance, posterior_threshold, posterior_alpha):
    check_sampling(temperature, top_k, top_p)
    if acceptance is None:
        acceptance = "greedy" if temperature == 0 else "sampling"
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {acceptance!r}")
    if acceptance == "greedy" and temperature != 0:
        raise ValueError("acceptance='greedy' decodes at temperature 0; use acceptance='sampling' "
                         "or 'typical' with temperature > 0")
    if acceptance in ("typical", "sampling") and temperature == 0:
        raise ValueError(f"acceptance={acceptance!r} needs temperature > 0 (temperature 0 is greedy)")
    if acceptance == "typical":
        if top_k is not None or top_p is not None:
            raise ValueError("top_k / top_p apply to acceptance='sampling', not 'typical'")
        if not 0 < posterior_threshold <= 1:
            raise ValueError(f"posterior_threshold must be in (0, 1], got {posterior_threshold}")
        if not posterior_alpha > 0:
            raise ValueError(f"posterior_alpha must be > 0, got {posterior_alpha}")
    return acceptance


# --------------------------------------------------------------------------- the method

@register_method("medusa")
def medusa(model, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_tokens=None, stream=None, heads=None, tree=None, acceptance: str | None = None,
           posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
           node_cost: float | None = None, page_size: int = 16) -> GenerationOutput:
    """Medusa decoding. ``heads``: a ``MedusaHeads`` or its folder (default: the model's
    ``medusa/`` companion). ``tree``: the static draft tree (see :func:`resolve_tree`); by
    default, heads with a measured accuracy table size the tree each step for the number of
    live rows (``node_cost``: the cost of one more tree token per row relative to a step's
    fixed cost; default by device, :data:`NODE_COST`). ``acceptance``: ``"greedy"`` (default at
    temperature 0; output identical to greedy AR), ``"typical"`` (Medusa's typical acceptance
    with ``posterior_threshold`` / ``posterior_alpha`` at ``temperature`` > 0: drafts pass
    the entropy-scaled test, the root and bonus tokens are the base model's argmax, as in
    Medusa's original ``evaluate_posterior``) or ``"sampling"`` (default at temperature > 0;
    lossless, honours ``top_k`` / ``top_p``, reproducible with ``seed``).

    Stats add ``accepted_lengths`` (per row, the tokens each tree step gained: accepted drafts
    plus the bonus), ``mean_accepted_length``, ``accept_length_histogram``, ``tree_steps``,
    ``tree`` ("auto" or the fixed tree's node count) and ``mean_tree_nodes`` (nodes a row ran
    per step, root included).
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    acceptance = _check_options(temperature, top_k, top_p, acceptance, posterior_threshold,
                                posterior_alpha)
    if not model.config.causal:
        raise ValueError("method 'medusa' needs a causal model; this one is a masked diffusion LM")
    if not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    device = model.device
    if node_cost is None:
        node_cost = NODE_COST.get(device.type, NODE_COST["cuda"])
    elif isinstance(node_cost, bool) or not isinstance(node_cost, (int, float)) or node_cost < 0:
        raise ValueError(f"node_cost must be a number >= 0, got {node_cost!r}")
    heads = load_heads(model, heads)
    fixed = resolve_tree(tree, heads)
    if fixed is None:
        auto = _auto_trees(heads)
        pick = lambda rows: auto.tree(auto.size_for(rows, float(node_cost)), device)  # noqa: E731
        max_nodes = MAX_AUTO_NODES + 1
    else:
        step_tree = _StepTree(fixed, device)
        pick = lambda rows: step_tree  # noqa: E731
        max_nodes = fixed.num_nodes
    stops = stop_token_set(model, stop_tokens)
    stats = Stats()
    outputs: list[list[int]] = [[] for _ in prompts]
    accepted: list[list[int]] = [[] for _ in prompts]
    node_count = [0, 0]                                    # tree nodes run, row-steps
    extra = dict(acceptance=acceptance, tree="auto" if fixed is None else fixed.num_nodes)

    def finish():
        return GenerationOutput(outputs, stats.finish(
            outputs, **_accept_stats(accepted), **extra,
            mean_tree_nodes=node_count[0] / node_count[1] if node_count[1] else 0.0))

    if max_new_tokens == 0:
        return finish()

    gen = make_generator(seed, device)
    ps = page_size
    need = sum(-(-(len(p) + max_new_tokens + max_nodes) // ps) + 1 for p in prompts)
    cache = model.new_cache(num_pages=need, page_size=ps)
    seqs = [cache.new_sequence() for _ in prompts]
    with torch.no_grad():
        # ---- prefill: every prompt in one forward; the root token and hidden state per row
        step = StepInput.extend(cache, seqs, prompts, logits="last")
        logits, hidden = model.forward_paged(step, cache, return_hidden=True)
        if acceptance == "sampling":
            first = sample_next(logits, temperature, top_k, top_p, gen).tolist()
        else:
            first = logits.argmax(dim=-1).tolist()
        stats.call(len(prompts), len(prompts))
        live, roots = [], []
        for i, t in enumerate(first):
            if t in stops:
                continue
            outputs[i].append(t)
            if len(outputs[i]) < max_new_tokens:
                live.append(i)
                roots.append(t)
        state = hidden.index_select(0, step.logits_indices)[live] if live else None   # [n, h]
        if stream is not None:
            stream([list(o) for o in outputs])

        # ---- tree steps: draft, one forward over every live row's tree, verify, compact
        while live:
            n = len(live)
            t = pick(n)
            num_nodes = t.num_nodes
            # a row with r tokens left runs only the levels it can use (depth <= r - 1)
            sizes = [t.nodes_upto[min(t.max_depth, max_new_tokens - len(outputs[i]) - 1)] for i in live]
            node_count[0] += sum(sizes)
            node_count[1] += n
            root_t = torch.tensor(roots, dtype=torch.long, device=device)
            if num_nodes > 1:
                candidates = t.tree.fill_candidates(root_t, heads.topk(state, t.k_top))   # [n, T]
            else:
                candidates = root_t[:, None]
            width = torch.arange(num_nodes, device=device)
            size_t = torch.tensor(sizes, device=device)
            parents = t.parents.expand(n, -1).clone()
            parents[width[None, :] >= size_t[:, None]] = -2                          # cut trees
            cand_rows = candidates.tolist()
            starts = [cache.seq_len(seqs[i]) for i in live]
            step = StepInput.extend(
                cache, [seqs[i] for i in live], [row[:s] for row, s in zip(cand_rows, sizes)],
                positions=[[st + d for d in t.depth[:s]] for st, s in zip(starts, sizes)],
                custom_mask=torch.cat([t.mask[:s, :s].reshape(-1) for s in sizes]))
            logits, hidden = model.forward_paged(step, cache, return_hidden=True)
            offsets = [0]
            for s in sizes:
                offsets.append(offsets[-1] + s)
            offs_t = torch.tensor(offsets[:-1], device=device)
            gather = offs_t[:, None] + torch.minimum(width[None, :], size_t[:, None] - 1)  # [n, T]

            if acceptance == "greedy":
                result = verify_tree_greedy(candidates, parents, logits.argmax(dim=-1)[gather])
            elif acceptance == "typical":
                result = verify_tree_typical(candidates, parents, logits[gather], posterior_threshold,
                                             posterior_alpha, temperature)
            else:
                probs = warp_logits(logits[gather], temperature, top_k, top_p).softmax(dim=-1)
                result = verify_tree_sampling(candidates, parents, None, probs,
                                              draft_rule="deterministic", generator=gen)
            accept_len = result.accept_len.tolist()
            accept_index = result.accept_index.tolist()
            bonus = result.bonus.tolist()

            new = [[] for _ in prompts] if stream is not None else None
            keep, last_rows, produced = [], [], 0
            for j, i in enumerate(live):
                path = accept_index[j][:accept_len[j]]
                accepted[i].append(accept_len[j])
                cache.compact(seqs[i], starts[j], [starts[j] + c for c in path])
                gained = [cand_rows[j][c] for c in path[1:]] + [bonus[j]]
                room = max_new_tokens - len(outputs[i])
                stop_at = next((k for k, tok in enumerate(gained) if tok in stops), None)
                if stop_at is not None and stop_at < room:
                    produced += stop_at + 1
                    kept, done = gained[:stop_at], True
                else:
                    kept = gained[:room]
                    produced += len(kept)
                    done = len(kept) == room
                outputs[i] += kept
                if new is not None:
                    new[i] = kept
                if not done:
                    keep.append(j)
                    last_rows.append(offsets[j] + path[-1])
            stats.call(n, produced)
            if stream is not None:
                stream(new)
            if keep:
                state = hidden.index_select(0, torch.tensor(last_rows, device=device))
                roots = [bonus[j] for j in keep]
            live = [live[j] for j in keep]
    for s in seqs:
        cache.free(s)
    return finish()


def _accept_stats(accepted: list[list[int]]) -> dict:
    flat = [a for row in accepted for a in row]
    hist = Counter(flat)
    return {
        "accepted_lengths": accepted,
        "mean_accepted_length": sum(flat) / len(flat) if flat else 0.0,
        "accept_length_histogram": {int(k): hist[k] for k in sorted(hist)},
        "tree_steps": len(flat),
    }
