"""Method "falcon": a semi-autoregressive drafter grows a custom decoding tree of k-token blocks,
one base forward verifies it (Bestpay-inc/Falcon), for ragged batches.

Per row the base's cache holds tokens ``t_0 .. t_{n-1}``; the root ``t_n`` (the last emitted
token) is not yet in it. The drafter (``leapdec.models.drafter``) reads ``(f_j, t_{j+1})``,
the base's final-norm hidden state at j and the next token, and its output at j predicts
``f_{j+k}``. One step:

1. **Context call.** The drafter's cache gets the positions it has not seen yet, and the last
   block of k positions is always recomputed together (the cache is rolled back to
   ``min(committed, n - k)``), with a block-causal mask whose blocks end at ``n - 1``
   (``mask_mode="custom"``). Its last k outputs give the first block: the distributions of
   ``t_{n+1} .. t_{n+k}``. The K/V of drafted blocks are never kept: each step recomputes the
   drafter's K/V of the accepted tokens from the base's real features.
2. **Tree.** Under each frontier node the block's first token branches into its top-k
   (``root_top_k`` under the root, ``branch_top_k`` below) and the other k - 1 tokens of the
   block follow as the drafter's top-1 (a block is one drafter forward, so its tail does not
   depend on the branch). The best ``frontier`` block ends by cumulative draft log-probability
   form the next frontier; a **tree call** runs the drafter on their blocks (inputs: the parent
   block's predicted features and the block's tokens) to get the next block. A tree call
   recomputes the blocks of the earlier levels too, with a block-tree mask (a block sees
   itself and its ancestor blocks, never a sibling), since the paged cache's prefix is visible
   to every query. After ``depth`` levels the best ``num_draft`` nodes are kept
   (``leapdec.trees.DynamicTree.select``).
3. **Verify.** One base forward over every row's tree (``build_tree`` ancestor mask, positions
   ``n + depth``), then ``verify_tree_greedy`` (temperature 0: output identical to greedy AR)
   or ``verify_tree_sampling`` with deterministic drafts (lossless, seeded). The accepted path
   is moved into place with ``PagedKVCache.compact``; its hidden states are the features the
   next context call reads, and the bonus token is the new root.

Rows whose context is shorter than k, or with one token of room left, take the step with an
empty tree (plain decoding), so every row ends exactly at ``max_new_tokens`` or its stop token.
"""

from __future__ import annotations

import torch

from leapdec.engine.companions import load_companion
from leapdec.engine.runner import Session
from leapdec.engine.sampling import check_sampling
from leapdec.engine.spec import register_method
from leapdec.engine.speculative import Proposal, speculative_generate
from leapdec.models.drafter import WEIGHTS_FILE, FalconDrafter, block_causal_mask
from leapdec.models.transformer import StepInput
from leapdec.trees import ABSENT_PARENT, DynamicTree

# Tree defaults sized for the small zoo models (Falcon's released 7B setting: k = 2, root top-20,
# a deeper tree): two blocks (two drafter calls per step), 4 first tokens under the root.
DEFAULT_TREE = dict(root_top_k=4, branch_top_k=2, frontier=2, depth=2, num_draft=10)
# On a CPU a step's cost grows with every drafter call and tree token (compute-bound): one block
# level (one drafter call per step) and 4 drafts decode faster there (benchmarks/RESULTS.md).
DEFAULT_TREE_CPU = dict(DEFAULT_TREE, depth=1, num_draft=4)
_HINT = (": pass drafter= (a FalconDrafter or a folder saved by it), or train one with "
         "`python -m leapdec.train falcon --base MODEL`")



def load_drafter(model, drafter=None) -> FalconDrafter:
    """The Falcon drafter for ``model``: ``drafter`` itself when it is a ``FalconDrafter``, else
    the folder ``drafter`` or the model's ``falcon/`` companion, on the model's device and dtype."""
    return load_companion(model, "falcon", drafter, loaded_type=FalconDrafter, filename=WEIGHTS_FILE,
                          hint=_HINT, argument="drafter", check=lambda d: d.check_base(model),
                          load=lambda folder: FalconDrafter.load(folder, device=model.device, dtype=model.dtype))


class BlockTree(DynamicTree):
    """A ``DynamicTree`` grown one k-token block per drafter call (Falcon's decoding tree).

    ``frontier_width`` block ends are kept per level; nodes are created level by level, so node
    ids (and :meth:`select`'s output) are ordered by depth."""

    def __init__(self, root_tokens: torch.Tensor, frontier_width: int):
        super().__init__(root_tokens, top_k=frontier_width)

    def expand_block(self, logprobs: torch.Tensor, branch: int,
                     token_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hang a block under every frontier node from ``logprobs [B, F, k, V]`` (the drafter's
        log-softmax for the block's k tokens at each frontier node): the first token's top
        ``branch`` children, each followed by the top-1 chain of the other k - 1 tokens. The best
        ``frontier_width`` block ends become the frontier. ``token_ids [V]``: the token id of each
        position of ``logprobs``' last dimension (a reduced draft vocabulary). Returns ``source [B, F']`` (the
        frontier slot each new block hangs under) and ``block_tokens [B, F', k]``."""
        batch, width = self.frontier.shape
        if logprobs.dim() != 4 or logprobs.shape[:2] != (batch, width):
            raise ValueError(f"logprobs must be [B={batch}, F={width}, k, V], got {tuple(logprobs.shape)}")
        k, vocab = logprobs.shape[2], logprobs.shape[3]
        if not isinstance(branch, int) or branch < 1:
            raise ValueError(f"branch must be a positive int, got {branch!r}")
        branch = min(branch, vocab)
        device = self.tokens.device
        lp0, tok0 = logprobs[:, :, 0].float().topk(branch, dim=-1)                # [B, F, K]
        tail_lp, tail_tok = logprobs[:, :, 1:].float().max(dim=-1)                  # [B, F, k-1]
        if bool((lp0[..., 0] > 1e-4).any() or (tail_lp > 1e-4).any()):
            raise ValueError("logprobs must be log-probabilities (<= 0), e.g. the drafter's log_softmax")
        lp0, tail_lp = lp0.clamp(max=0.0), tail_lp.clamp(max=0.0)
        if token_ids is not None:
            tok0, tail_tok = token_ids[tok0], token_ids[tail_tok]
        level = width * branch
        first = self.num_nodes

        def per_branch(x):                                                          # [B, F] -> [B, F*K]
            return x[..., None].expand(-1, -1, branch).flatten(1)

        scores = self.scores.gather(1, self.frontier)[..., None] + lp0               # [B, F, K]
        depth = self.depth.gather(1, self.frontier)
        tokens, parents = [tok0.flatten(1)], [per_branch(self.frontier)]
        all_scores, depths = [scores.flatten(1)], [per_branch(depth + 1)]
        for j in range(1, k):
            prev = first + (j - 1) * level + torch.arange(level, device=device)
            tokens.append(per_branch(tail_tok[:, :, j - 1]))
            parents.append(prev.expand(batch, -1))
            scores = scores + tail_lp[:, :, j - 1, None]
            all_scores.append(scores.flatten(1))
            depths.append(per_branch(depth + 1 + j))
        self.tokens = torch.cat([self.tokens] + tokens, 1)
        self.parents = torch.cat([self.parents] + parents, 1)
        self.scores = torch.cat([self.scores] + all_scores, 1)
        self.depth = torch.cat([self.depth] + depths, 1)
        keep = min(self.top_k, level)
        order = torch.sort(-scores.flatten(1), dim=1, stable=True).indices[:, :keep].sort(dim=1).values
        self.frontier = first + (k - 1) * level + order
        block_nodes = first + torch.arange(k, device=device)[None, None, :] * level + order[..., None]
        return order // branch, self.tokens.gather(1, block_nodes.flatten(1)).view(batch, keep, k)


def _check_options(temperature, top_k, top_p, page_size, tree):
    check_sampling(temperature, top_k, top_p)
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size <= 0:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    for name, value in tree.items():
        low = 0 if name == "num_draft" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class FalconTreeDrafter:
    """Falcon as a ``Drafter``: per step a context call over the features the drafter has not
    consumed, then ``depth`` block levels of the tree, keeping ``num_draft`` nodes."""

    needs_hidden = True

    def __init__(self, model, drafter: FalconDrafter, opts: dict, page_size: int):
        self.model, self.drafter, self.opts, self.page_size = model, drafter, opts, page_size
        self.k = drafter.block_size
        # every proposal has num_draft + 1 nodes (rows too short to draft: the root and absent
        # nodes), so the verify step has a fixed shape (a CUDA graph on CUDA)
        self.max_nodes = self.fixed_nodes = opts["num_draft"] + 1
        self.calls = 0
        self.session = None

    def start(self, ctx, rows, hidden, offsets):
        k, ps = self.k, self.page_size
        o = self.opts
        draft_slots = o["depth"] * o["frontier"] * k + k
        need = sum(-(-(len(r.prompt) + r.max_new_tokens + draft_slots) // ps) + 1 for r in rows)
        self.session = Session(self.drafter, need, ps,
                               make_cache=lambda n, size: self.drafter.new_cache(n, size)).__enter__()
        self.dseqs = [self.session.new_sequence() for _ in rows]
        self.feats = [hidden[off:off + len(r.prompt)] for r, off in zip(rows, offsets)]
        self.feat_lo = [0] * len(rows)
        self.committed = [0] * len(rows)

    def close(self):
        if self.session is not None:
            self.session.__exit__(None, None, None)
            self.session = None

    def propose(self, ctx, live) -> Proposal:
        k, o, device = self.k, self.opts, self.model.device
        n = {r.index: len(r.prompt) + len(r.out) - 1 for r in live}     # base cache length = root position
        drafting = [r for r in live if o["num_draft"] > 0 and n[r.index] >= k and r.room >= 2]
        b = len(live)
        num_nodes = o["num_draft"] + 1
        candidates = torch.zeros(b, num_nodes, dtype=torch.long, device=device)
        parents = torch.full((b, num_nodes), ABSENT_PARENT, dtype=torch.int32, device=device)
        depth = torch.zeros(b, num_nodes, dtype=torch.long, device=device)
        candidates[:, 0] = torch.tensor([r.out[-1] for r in live], device=device)
        parents[:, 0] = -1
        if drafting:
            # ---- 1. context call: the drafter consumes the new features (last block recomputed)
            dcache = self.session.cache
            chunks = [max(0, min(self.committed[r.index], n[r.index] - k)) for r in live]
            out, ends = drafter_context(
                self.drafter, dcache, [self.dseqs[r.index] for r in live], chunks,
                [r.tokens[s + 1:n[r.index] + 1] for r, s in zip(live, chunks)],
                [self.feats[r.index][s - self.feat_lo[r.index]:n[r.index] - self.feat_lo[r.index]]
                 for r, s in zip(live, chunks)], self.model.embed_tokens)
            self.calls += 1
            end_of = {r.index: e for r, e in zip(live, ends)}
            ctx_out = torch.stack([out[end_of[r.index] - k:end_of[r.index]] for r in drafting])   # [Bd, k, h]
            for r in live:
                i = r.index
                self.committed[i] = n[i]
                keep_from = max(0, n[i] - k)
                self.feats[i] = self.feats[i][keep_from - self.feat_lo[i]:]
                self.feat_lo[i] = keep_from
            # ---- 2. grow the block tree of every drafting row
            counters = {"drafter_calls": 0}
            sel, sel_depth = _draft_tree(self.drafter, dcache, [self.dseqs[r.index] for r in drafting],
                                         [self.committed[r.index] for r in drafting],
                                         [r.out[-1] for r in drafting], ctx_out, self.model.embed_tokens,
                                         self.model.lm_head, o, max(r.room for r in drafting), counters)
            self.calls += counters["drafter_calls"]
            pos = {r.index: j for j, r in enumerate(live)}
            rows_d = torch.tensor([pos[r.index] for r in drafting], device=device)
            width_d = sel.parents.shape[1]
            candidates[rows_d, :width_d] = sel.tokens
            parents[rows_d, :width_d] = sel.parents.to(torch.int32)
            depth[rows_d, :width_d] = sel_depth
        return Proposal(candidates, parents, depth)

    def accepted(self, ctx, live, verified):
        device = self.model.device
        for j, r in enumerate(live):
            if r.done:
                continue
            rows_h = torch.tensor([verified.offsets[j] + c for c in verified.paths[j]], device=device)
            self.feats[r.index] = torch.cat([self.feats[r.index], verified.hidden.index_select(0, rows_h)])

    def stats(self) -> dict:
        return {"drafter_calls": self.calls, "block_size": self.k, **self.opts}


@register_method("falcon", companion="falcon", recipe="falcon", lossless=True)
def falcon(model, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_tokens=None, stop_strings=None, tokenizer=None, stream=None, drafter=None,
           root_top_k: int | None = None, branch_top_k: int | None = None, frontier: int | None = None,
           depth: int | None = None, num_draft: int | None = None, page_size: int = 16,
           static_steps: bool | None = None):
    """Falcon decoding. ``drafter``: a ``FalconDrafter`` or its folder (default: the model's
    ``falcon/`` companion). Tree: ``root_top_k`` first tokens under the root, ``branch_top_k``
    under deeper block ends, ``frontier`` block ends expanded per level, ``depth`` levels of
    k-token blocks (drafter calls per step), ``num_draft`` draft nodes kept (defaults: the
    drafter's recorded tree, else :data:`DEFAULT_TREE`, on a CPU :data:`DEFAULT_TREE_CPU`).
    Temperature 0 verifies greedily
    (identical to greedy AR); temperature > 0 uses lossless tree speculative sampling
    (``top_k`` / ``top_p`` warp the target, reproducible with ``seed``). ``static_steps``: the
    verify step as a fixed-shape step (a CUDA graph on CUDA; default on CUDA).

    Stats add ``drafter_calls``, ``accepted_lengths`` (per row, the tokens each step gained:
    accepted drafts plus the bonus), ``mean_accepted_length``, ``accept_length_histogram``,
    ``tree_steps`` and the tree settings.
    """
    given = dict(root_top_k=root_top_k, branch_top_k=branch_top_k, frontier=frontier, depth=depth,
                 num_draft=num_draft)
    if not model.config.causal:
        raise ValueError("method 'falcon' needs a causal model; this one is a masked diffusion LM")
    drafter = load_drafter(model, drafter)
    recorded = drafter.meta.get("tree") or {}
    defaults = DEFAULT_TREE_CPU if model.device.type == "cpu" else DEFAULT_TREE
    tree_opts = {name: given[name] if given[name] is not None else recorded.get(name, defaults[name])
                 for name in DEFAULT_TREE}
    _check_options(temperature, top_k, top_p, page_size, tree_opts)
    acceptance = "sampling" if temperature > 0 else "greedy"
    tree_drafter = FalconTreeDrafter(model, drafter, tree_opts, page_size)
    try:
        return speculative_generate(
            model, prompts, tree_drafter, method="falcon", max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens,
            stop_strings=stop_strings, tokenizer=tokenizer, stream=stream, acceptance=acceptance,
            page_size=page_size, static_steps=static_steps)
    finally:
        tree_drafter.close()


def drafter_context(drafter, dcache, dseqs, starts, next_tokens, features, embed):
    """Roll each drafter sequence back to ``starts[i]`` and run its positions ``starts[i] ..``:
    ``next_tokens[i]`` (``t_{j+1}``) with ``features[i] [L_i, h]`` (``f_j``), under a
    block-causal mask whose blocks end at each chunk's last position. Returns the drafter's
    outputs ``[sum L_i, h]`` and the end offset of each row's rows in them."""
    k = drafter.block_size
    masks = []
    for s, start, toks in zip(dseqs, starts, next_tokens):
        dcache.truncate(s, start)
        masks.append(block_causal_mask(len(toks), k, (-len(toks)) % k, drafter.device).reshape(-1))
    step = StepInput.extend(dcache, dseqs, next_tokens, custom_mask=torch.cat(masks))
    out = drafter.forward_paged(torch.cat(features), step, dcache, embed)
    return out, step.plan.qo_indptr[1:].tolist()


def _draft_tree(drafter, dcache, dseqs, committed, roots, ctx_out, embed, lm_head, opts, max_room, counters):
    """Grow the block trees of ``Bd`` rows from the context call's last-block outputs
    ``ctx_out [Bd, k, h]``; returns the kept nodes (``DraftSelection``) and their depths."""
    k = drafter.block_size
    device = ctx_out.device
    bd = ctx_out.shape[0]
    tree = BlockTree(torch.tensor(roots, device=device), opts["frontier"])

    def logprobs(features):                                            # [Bd, F, k, h] -> [Bd, F, k, V']
        return torch.log_softmax(drafter.draft_logits(features, lm_head).float(), dim=-1)

    ids = drafter.vocab_ids                                            # a reduced draft vocabulary, or None
    source, block_tokens = tree.expand_block(logprobs(ctx_out[:, None]), opts["root_top_k"], ids)
    fw = source.shape[1]
    in_feats = [ctx_out[:, None].expand(-1, fw, -1, -1)]             # per level [Bd, F, k, h]
    level_tokens = [block_tokens]                                      # per level [Bd, F, k]
    ancestors = torch.eye(fw, dtype=torch.bool, device=device).expand(bd, -1, -1)   # [Bd, G, G] blocks
    # levels beyond what any row can still accept would only be pruned
    levels = min(opts["depth"], -(-(max_room - 1) // k))
    rows = torch.arange(bd, device=device)[:, None]
    for _ in range(1, levels):
        g = ancestors.shape[1]
        for s, c in zip(dseqs, committed):
            dcache.truncate(s, c)
        per_level = [t.shape[1] for t in level_tokens]
        flat_tokens = torch.cat([t.flatten(1) for t in level_tokens], 1).tolist()        # [Bd, G*k]
        rel = torch.cat([torch.arange(k) + lv * k for lv, f in enumerate(per_level) for _ in range(f)]).tolist()
        mask = ancestors.repeat_interleave(k, 1).repeat_interleave(k, 2)                  # [Bd, Gk, Gk]
        step = StepInput.extend(dcache, dseqs, flat_tokens, positions=[[c + r for r in rel] for c in committed],
                                custom_mask=mask.reshape(-1))
        x = torch.cat([f.flatten(1, 2) for f in in_feats], 1).reshape(-1, ctx_out.shape[-1])
        out = drafter.forward_paged(x, step, dcache, embed).view(bd, g, k, -1)
        counters["drafter_calls"] += 1
        newest = out[:, g - per_level[-1]:]                                               # [Bd, F, k, h]
        source, block_tokens = tree.expand_block(logprobs(newest), opts["branch_top_k"], ids)
        fw = source.shape[1]
        in_feats.append(newest[rows, source])
        level_tokens.append(block_tokens)
        parent_rows = ancestors[rows, g - per_level[-1] + source]                        # [Bd, F', G]
        grown = torch.zeros(bd, g + fw, g + fw, dtype=torch.bool, device=device)
        grown[:, :g, :g] = ancestors
        grown[:, g:, :g] = parent_rows
        grown[:, g:, g:] = torch.eye(fw, dtype=torch.bool, device=device)
        ancestors = grown
    selection = tree.select(opts["num_draft"])
    return selection, tree.depth.gather(1, selection.nodes)
