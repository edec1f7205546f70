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
import warnings
import weakref
from pathlib import Path

import torch

from leapdec.engine.companions import load_companion
from leapdec.engine.spec import register_method
from leapdec.engine.speculative import ACCEPTANCE, Proposal, resolve_acceptance, speculative_generate
from leapdec.models.heads import WEIGHTS_FILE, MedusaHeads
from leapdec.ops import build_tree
from leapdec.trees import MC_SIM_7B_63, StaticTree, greedy_tree, tree_from_choices

DEFAULT_TREE_NODES = 32          # draft nodes of the default tree without an accuracy table
MAX_AUTO_NODES = 64              # largest tree (draft nodes per row) the automatic sizing considers
# Cost of one more tree token per row, relative to the fixed cost of a model step (automatic
# tree sizing): on a CPU compute grows with every token; a GPU step is flat for small models.
NODE_COST = {"cpu": 0.04, "cuda": 0.004}
# On a CPU the cost depends on the model: a one-token step streams the weights, each extra token
# adds 2 FLOPs per weight of compute (cpu_node_cost). Rates measured on a 2-core AVX2 VM:
CPU_FLOPS_PER_THREAD = 35e9      # the linear op with several rows
CPU_READ_BYTES_PER_S = 20e9      # streaming weights from DRAM (and L3)
CPU_STEP_OVERHEAD_S = 1e-3       # Python, norms, attention, sampling of one step
_HINT = (": pass heads= (a MedusaHeads or a folder saved by it), or train heads with "
         "`python -m leapdec.train medusa --base MODEL`")

_AUTO_TREES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # heads -> (key, _AutoTrees)


# --------------------------------------------------------------------------- heads and trees

def cpu_node_cost(model) -> float:
    """One more tree token's cost relative to a one-token step of ``model`` on CPU: its compute
    (2 FLOPs per linear weight) over the step's time (weight bytes streamed plus a fixed
    overhead). ~0.09 for the 2.4M-parameter zoo models, ~0.14 / 0.25 for a 135M model with
    float32 / bfloat16 weights (measured: 0.13 / 0.22 per extra token at 2-4 tokens)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops = 2.0 * sum(w.numel() for w in weights)
    step_s = sum(w.numel() * w.element_size() for w in weights) / CPU_READ_BYTES_PER_S + CPU_STEP_OVERHEAD_S
    return flops / (CPU_FLOPS_PER_THREAD * max(torch.get_num_threads(), 1)) / step_s


def load_heads(model, heads=None) -> MedusaHeads:
    """The Medusa heads for ``model``: ``heads`` itself when it is a ``MedusaHeads``, else the
    folder ``heads`` or the model's ``medusa/`` companion, on the model's device and dtype."""
    if isinstance(heads, MedusaHeads):
        heads.check_base(model)
        return heads.attach(model)
    loaded = load_companion(model, "medusa", heads, loaded_type=MedusaHeads, filename=WEIGHTS_FILE,
                            hint=_HINT, argument="heads", check=lambda h: h.attach(model).check_base(model),
                            load=lambda folder: MedusaHeads.load(folder, device=model.device, dtype=model.dtype))
    if not isinstance(heads, MedusaHeads):
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
        self.depth_t = tree.depth.to(device=device, dtype=torch.long)
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


# --------------------------------------------------------------------------- the drafter

class MedusaDrafter:
    """Medusa as a ``Drafter``: the heads read the target's hidden state of each row's last
    verified position and fill the static tree under the row's last token."""

    needs_hidden = True

    def __init__(self, heads: MedusaHeads, fixed: StaticTree | None, node_cost: float, device):
        self.heads, self.node_cost, self.device = heads, node_cost, device
        if fixed is None:
            self.auto = _auto_trees(heads)
            self.max_nodes = MAX_AUTO_NODES + 1
            self.fixed_nodes = None
        else:
            self.auto = None
            self.tree = _StepTree(fixed, device)
            self.max_nodes = self.fixed_nodes = fixed.num_nodes
        self.state: torch.Tensor | None = None     # [B, h] hidden state per row
        self.nodes_run = [0, 0]                     # tree nodes proposed, row-steps

    def _tree(self, rows: int) -> _StepTree:
        if self.auto is None:
            return self.tree
        return self.auto.tree(self.auto.size_for(rows, self.node_cost), self.device)

    def start(self, ctx, rows, hidden, offsets):
        last = torch.tensor([o + len(r.prompt) - 1 for r, o in zip(rows, offsets)], device=hidden.device)
        self.state = hidden.index_select(0, last)

    def propose(self, ctx, live) -> Proposal:
        n = len(live)
        t = self._tree(n)
        idx = torch.tensor([r.index for r in live], device=self.device)
        roots = torch.tensor([r.out[-1] for r in live], dtype=torch.long, device=self.device)
        if t.num_nodes > 1:
            candidates = t.tree.fill_candidates(roots, self.heads.topk(self.state.index_select(0, idx), t.k_top))
        else:
            candidates = roots[:, None]
        self.nodes_run[0] += n * t.num_nodes
        self.nodes_run[1] += n
        return Proposal(candidates, t.parents.expand(n, -1), t.depth_t.expand(n, -1),
                        mask=t.mask.expand(n, -1, -1), sizes=[t.num_nodes] * n)

    def accepted(self, ctx, live, verified):
        rows = [off + path[-1] for off, path in zip(verified.offsets, verified.paths)]
        idx = torch.tensor([r.index for r in live], device=self.device)
        self.state.index_copy_(0, idx, verified.hidden.index_select(0, torch.tensor(rows, device=self.device)))

    def stats(self) -> dict:
        return {"mean_tree_nodes": self.nodes_run[0] / self.nodes_run[1] if self.nodes_run[1] else 0.0}


@register_method("medusa", companion="medusa", recipe="medusa", lossless=True)
def medusa(model, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_tokens=None, stop_strings=None, tokenizer=None, stream=None, heads=None, tree=None,
           acceptance: str | None = None, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
           node_cost: float | None = None, page_size: int = 16, static_steps: bool | None = None):
    """Medusa decoding (FasterDecoding/Medusa) for ragged batches. ``heads``: a ``MedusaHeads`` or
    its folder (default: the model's ``medusa/`` companion). ``tree``: the static draft tree
    (see :func:`resolve_tree`); by default, heads with a measured accuracy table size the tree
    each step for the number of live rows (``node_cost``: the cost of one more tree token per
    row relative to a step's fixed cost; default on CPU :func:`cpu_node_cost` of the model, on
    CUDA :data:`NODE_COST`). ``acceptance``:
    ``"greedy"`` (default at temperature 0; output identical to greedy AR), ``"typical"``
    (Medusa's typical acceptance with ``posterior_threshold`` / ``posterior_alpha``) or
    ``"sampling"`` (default at temperature > 0; lossless, ``top_k`` / ``top_p``, ``seed``).
    ``static_steps``: fixed-shape verify steps (CUDA graphs on CUDA; default on CUDA with a
    fixed tree).

    Stats add ``accepted_lengths`` (per row, the tokens each step gained: accepted drafts plus
    the bonus), ``mean_accepted_length``, ``accept_length_histogram``, ``tree_steps``, ``tree``
    ("auto" or the fixed tree's node count) and ``mean_tree_nodes`` (nodes per row-step).
    """
    acceptance = resolve_acceptance(acceptance, temperature, top_k, top_p, posterior_threshold,
                                    posterior_alpha)
    device = model.device
    if node_cost is None:
        node_cost = cpu_node_cost(model) if device.type == "cpu" else NODE_COST.get(device.type, NODE_COST["cuda"])
    elif isinstance(node_cost, bool) or not isinstance(node_cost, (int, float)) or node_cost < 0:
        raise ValueError(f"node_cost must be a number >= 0, got {node_cost!r}")
    heads = load_heads(model, heads)
    fixed = resolve_tree(tree, heads)
    drafter = MedusaDrafter(heads, fixed, float(node_cost), device)
    return speculative_generate(
        model, prompts, drafter, method="medusa", max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens,
        stop_strings=stop_strings, tokenizer=tokenizer, stream=stream, acceptance=acceptance,
        posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha, page_size=page_size,
        static_steps=static_steps, extra_stats={"tree": "auto" if fixed is None else fixed.num_nodes})
