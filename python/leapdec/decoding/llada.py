"""Method "llada": masked-diffusion decoding (LLaDA) with Fast-dLLM's parallel commit rules and
KV caches, on the paged cache. ``learn2pd`` and ``rediff`` run on the same engine.

Each prompt is followed by ``gen_length`` ``<|mask|>`` positions, decoded in semi-autoregressive
blocks of ``block_length``: every model call predicts the masked positions and
``unmask_and_filter`` commits some of the current block's (``topk``: LLaDA's per-step transfer
count, most confident first; ``threshold`` / ``factor``: Fast-dLLM's rules), until the block is
full; committed tokens stay. With ``temperature > 0`` the predicted tokens are Gumbel-max samples.

KV cache (``cache=``): ``"none"`` runs the whole sequence every call (the reference);
``"prefix"`` runs everything once at each block start and then only the block and what follows
it, over the prefix K/V of that first call; ``"dual"`` also keeps the K/V after the block and
runs only the block, overwriting its slots in place. For a bidirectional model both caches are
approximations (the cached K/V would change with the block's tokens), refreshed once per block;
under causal attention the prefix cache is exact.

Rows are independent: each is its own cache sequence with its own prompt length (no padding), its
own transfer counts and step count, so a row decodes the same in any batch. The answer is cut at
the first stop token; a row stops (``early_exit``) as soon as that cut is decoded and can no
longer change, since later steps only fill positions after it.
"""

from __future__ import annotations

import torch

from leapdec.decoding.base import GenerationOutput, Stats, register_method, stop_token_set
from leapdec.engine.runner import Session, StaticSteps
from leapdec.kv_cache import AttentionPlan
from leapdec.models.transformer import StepInput
from leapdec.ops.diffusion import unmask_and_filter

CACHE_MODES = ("none", "prefix", "dual")
RULES = ("topk", "threshold", "factor")
DEFAULT_BLOCK = 32
# End-of-Text Prediction truncates at a masked position predicting EOS with at least this
# confidence (Learn2PD's code uses 0, any prediction: on stdlib-mdm that cut 5 of 8 held-out
# answers short, while 0.9 kept 7-8 of 8 identical; a committed EOS always truncates)
EOT_THRESHOLD = 0.9


def transfer_counts(mask_count: int, steps: int) -> list[int]:
    """LLaDA's tokens to commit at each of ``steps`` steps for ``mask_count`` masked positions:
    ``mask_count // steps`` each, the remainder one more at the earliest steps."""
    base, extra = divmod(mask_count, steps)
    return [base + (i < extra) for i in range(steps)]


def _flag(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):       # `key=1` from the command line
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


class DiffusionSettings:
    """Validated options of one diffusion decode (see ``llada``'s docstring)."""

    def __init__(self, model, max_new_tokens: int, gen_length=None, block_length=None, steps=None,
                 policy: str = "topk", threshold=None, factor: float = 1.0, filter_weights=None,
                 accept_threshold: float = 0.96, temperature: float = 0.0, seed=None,
                 eotp=False, eot_threshold: float = EOT_THRESHOLD, revise=False, revise_start: int = 1,
                 revise_topk: float = 1.0, cache: str = "none", early_exit=True, page_size: int = 16,
                 eos_id=None, pad_id=None):
        cfg = model.config
        if cfg.mask_token_id is None:
            raise ValueError("diffusion decoding needs a masked diffusion LM: the model's config has no "
                             "mask_token_id (load a model such as 'stdlib-mdm')")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if gen_length is None:
            gen_length = max_new_tokens if max_new_tokens > 0 else block_length or DEFAULT_BLOCK
        if not isinstance(gen_length, int) or gen_length <= 0:
            raise ValueError(f"gen_length must be a positive int, got {gen_length!r}")
        if block_length is None:
            block_length = DEFAULT_BLOCK if gen_length % DEFAULT_BLOCK == 0 else gen_length
        if not isinstance(block_length, int) or block_length <= 0 or gen_length % block_length:
            raise ValueError(f"block_length must be a positive int dividing gen_length ({gen_length}), "
                             f"got {block_length!r}")
        blocks = gen_length // block_length
        steps = gen_length if steps is None else steps
        if not isinstance(steps, int) or steps <= 0 or steps % blocks:
            raise ValueError(f"steps must be a positive multiple of the number of blocks ({blocks} = "
                             f"gen_length / block_length), got {steps!r}")
        if policy not in RULES + ("learned",):
            raise ValueError(f"policy must be one of {RULES}, got {policy!r}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if not (seed is None or isinstance(seed, int) or
                (isinstance(seed, (list, tuple)) and all(isinstance(x, int) for x in seed))):
            raise TypeError(f"seed must be None, an int or a list of ints (one per row), got {seed!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if not (isinstance(factor, (int, float)) and factor > 0):
            raise ValueError(f"factor must be a number > 0, got {factor!r}")
        if not 0.0 <= revise_topk <= 1.0:
            raise ValueError(f"revise_topk must be in [0, 1], got {revise_topk!r}")
        if not isinstance(revise_start, int) or revise_start < 0:
            raise ValueError(f"revise_start must be an int >= 0 (a step within the block), got {revise_start!r}")
        if not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.eotp = _flag(eotp, "eotp")
        if eos_id is None:
            stops = cfg.stop_token_ids
            eos_id = stops[0] if stops else -1
        if self.eotp and eos_id < 0:
            raise ValueError("eotp=True needs an end-of-text token: the model config has no eos_token_id "
                             "(pass eos_id=)")
        self.mask_id = cfg.mask_token_id
        self.eos_id = int(eos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)   # EoTP's padding; never revised
        self.max_new_tokens = max_new_tokens
        self.gen_length, self.block_length, self.steps = gen_length, block_length, steps
        self.num_blocks, self.steps_per_block = blocks, steps // blocks
        self.policy, self.threshold, self.factor = policy, threshold, float(factor)
        self.filter_weights, self.accept_threshold = filter_weights, float(accept_threshold)
        self.temperature, self.seed = float(temperature), 0 if seed is None else seed
        self.eot_threshold = float(eot_threshold)
        self.revise, self.revise_start, self.revise_topk = _flag(revise, "revise"), revise_start, float(revise_topk)
        self.cache, self.early_exit, self.page_size = cache, _flag(early_exit, "early_exit"), page_size

    def row_seed(self, row: int) -> int:
        """The noise seed of row ``row``: ``seed + row`` for an int seed, else ``seed[row]``."""
        return self.seed + row if isinstance(self.seed, int) else self.seed[row]

    def describe(self) -> dict:
        return {"gen_length": self.gen_length, "block_length": self.block_length, "steps": self.steps,
                "steps_per_block": self.steps_per_block, "policy": self.policy, "cache": self.cache,
                "eotp": self.eotp, "revise": self.revise}


class DiffusionDecoder:
    """The decode loop shared by llada, learn2pd and rediff. ``commit`` is the one decision per
    step; a ``commit_rule`` given to the constructor replaces it (Learn2PD's oracle decode)."""

    def __init__(self, model, prompts: list[list[int]], settings: DiffusionSettings, stops: set[int],
                 stream=None, commit_rule=None, static_steps: bool | None = None):
        self.model, self.prompts, self.s, self.stops, self.stream = model, prompts, settings, stops, stream
        # commit_rule(decoder, rows, tokens, masked, logits, block_end, quota, step_index) replaces
        # ``commit`` (e.g. Learn2PD's oracle decode in the recipe); None: the settings' policy
        self.commit_rule = commit_rule
        # the cached block steps (prefix / dual cache, after the refresh) have one shape per block:
        # fixed-shape steps, CUDA graphs on CUDA (default there)
        self.static_steps = model.device.type == "cuda" if static_steps is None else bool(static_steps)
        self._static: dict = {}
        dev = model.device
        B, G = len(prompts), settings.gen_length
        if not isinstance(settings.seed, int) and len(settings.seed) != B:
            raise ValueError(f"seed: a list of seeds needs one per row ({B}), got {len(settings.seed)}")
        self.prompt_t = [torch.tensor(p, dtype=torch.long, device=dev) for p in prompts]
        self.answer = torch.full((B, G), settings.mask_id, dtype=torch.long, device=dev)
        self.masked = torch.ones(B, G, dtype=torch.bool, device=dev)
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.settled = [0] * B            # answer positions already final (and streamed)
        self.stopped = [False] * B        # a stop token was settled
        self.live = list(range(B))
        self.row_steps = [0] * B          # model calls each row took part in (seeds the noise)
        self.stats = Stats()
        self.decoded = 0                  # positions committed by the policy
        self.revisions = 0
        self.eot_rows: set[int] = set()
        self.mask_mode = model.default_mask_mode

    # ------------------------------------------------------------------ model calls
    def _plan(self, seqs, kv_lens, qo_lens) -> AttentionPlan:
        ps, dev = self.cache.page_size, self.cache.device
        kv_indptr, kv_indices, last, qo_indptr = [0], [], [], [0]
        for seq, kv, q in zip(seqs, kv_lens, qo_lens):
            pages = self.cache.pages(seq)[: -(-kv // ps)]
            kv_indices += pages
            kv_indptr.append(len(kv_indices))
            last.append(kv - (len(pages) - 1) * ps)
            qo_indptr.append(qo_indptr[-1] + q)

        def t(x):
            return torch.tensor(x, dtype=torch.int32, device=dev)

        return AttentionPlan(t(qo_indptr), t(kv_indptr), t(kv_indices), t(last), max(qo_lens), max(kv_lens))

    def forward(self, rows, q_start, q_end, lo, hi):
        """One model call: row r runs its sequence positions ``[q_start[i], q_end[i])`` (their K/V
        overwrite the cache in place) and returns logits ``[R, hi - lo, V]`` of answer
        positions ``[lo, hi)``."""
        ids, pos, slots, want = [], [], [], []
        kv_lens, qo_lens, off = [], [], 0
        dev = self.model.device
        for r, qs, qe in zip(rows, q_start, q_end):
            P = len(self.prompts[r])
            seq_ids = torch.cat([self.prompt_t[r], self.answer[r]]) if qs < P else self.answer[r]
            base = 0 if qs < P else P
            ids.append(seq_ids[qs - base:qe - base])
            pos.append(torch.arange(qs, qe, device=dev))
            slots.append(self.cache.writable_slots(self.seqs[r], qs, qe))
            want.append(torch.arange(off + P + lo - qs, off + P + hi - qs, device=dev))
            off += qe - qs
            qo_lens.append(qe - qs)
            # causal attention: the queries must be the last positions the plan shows
            kv_lens.append(qe if self.mask_mode == "causal" else P + self.s.gen_length)
        step = StepInput(torch.cat(ids), torch.cat(pos), torch.cat(slots),
                         self._plan([self.seqs[r] for r in rows], kv_lens, qo_lens),
                         mask_mode=self.mask_mode, logits_indices=torch.cat(want))
        logits = self.model.forward_paged(step, self.cache)
        return logits.view(len(rows), hi - lo, -1)

    def _forward_static(self, rows, q_start, q_end, lo, hi):
        """``forward`` for a cached block step as a fixed-shape step: every row runs the same
        ``q`` answer positions (the block onward, or the block alone with the dual cache)."""
        q = q_end[0] - q_start[0]
        steps = self._static.get(q)
        if steps is None:
            steps = self._static[q] = StaticSteps(self.session, "llada", q, mask_mode=self.mask_mode)
        tokens, positions, kv_lens, pages = [], [], [], []
        G = self.s.gen_length
        for r, qs in zip(rows, q_start):
            P = len(self.prompts[r])
            tokens += self.answer[r, qs - P:qs - P + q].tolist()
            positions += range(qs, qs + q)
            kv_lens.append(qs + q if self.mask_mode == "causal" else P + G)
            pages.append(self.cache.pages(self.seqs[r]))
        step = steps.get(len(rows), max(map(len, pages)))
        logits = step.run(tokens, positions, q_start, pages, kv_lens=kv_lens)
        lead = lo - (q_start[0] - len(self.prompts[rows[0]]))       # 0: the step starts at the block
        return logits.view(len(rows), q, -1)[:, lead:lead + hi - lo]

    # ------------------------------------------------------------------ one step
    def commit(self, rows, tokens, masked, logits, block_end: int, quota, step_index: int):
        """Commit masked positions of the window ``tokens, masked [R, W]`` (answer positions
        from the block start; the block is ``[0, block_end)``) from ``logits [R, W, V]``,
        updating both in place. ``quota``: each row's LLaDA transfer count this step;
        ``step_index``: the step within the block. Returns the op's ``UnmaskResult``."""
        s = self.s
        dev = tokens.device
        seeds = torch.tensor([(s.row_seed(r) * 1_000_003 + self.row_steps[r]) % (1 << 62) for r in rows],
                             dtype=torch.int64, device=dev)
        return unmask_and_filter(
            logits, tokens, masked, s.policy,
            k=None if s.policy in ("threshold", "factor") else torch.tensor(quota, device=dev),
            block_start=0, block_end=block_end, threshold=s.threshold, factor=s.factor,
            filter_weights=s.filter_weights, accept_threshold=s.accept_threshold,
            temperature=s.temperature, seed=seeds, eos_id=s.eos_id, pad_id=s.pad_id, eotp=s.eotp,
            eot_threshold=s.eot_threshold, revise=s.revise and step_index >= s.revise_start,
            revise_topk=s.revise_topk)

    def window_logits(self, rows, lo, hi, wend, refresh: bool, step_index: int):
        """One model call of a step of block ``[lo, hi)``: logits ``[R, wend - lo, V]`` of the
        window's answer positions, by the settings' cache (a full forward at a refresh)."""
        s, G = self.s, self.s.gen_length
        if s.cache == "none" or refresh:
            q_start = [0] * len(rows)
            q_end = [len(self.prompts[r]) + G for r in rows]
        else:
            q_start = [len(self.prompts[r]) + lo for r in rows]
            q_end = [len(self.prompts[r]) + (hi if s.cache == "dual" else G) for r in rows]
        if self.static_steps and not (s.cache == "none" or refresh):
            return self._forward_static(rows, q_start, q_end, lo, wend)
        return self.forward(rows, q_start, q_end, lo, wend)

    def _step(self, rows, lo, hi, refresh: bool, quotas, step_index: int):
        s, G = self.s, self.s.gen_length
        wend = hi if (s.cache == "dual" or not s.eotp) else G
        logits = self.window_logits(rows, lo, hi, wend, refresh, step_index)
        self.window = (lo, wend)          # answer positions of the step's window (for commit)
        idx = torch.tensor(rows, device=self.answer.device)
        tokens = self.answer[idx, lo:wend].clone()
        masked = self.masked[idx, lo:wend].clone()
        entry_masked, entry_tokens = masked.clone(), tokens.clone()
        quota = [quotas[r][step_index] if step_index < len(quotas[r]) else hi - lo for r in rows]
        if self.commit_rule is not None:
            result = self.commit_rule(self, rows, tokens, masked, logits, hi - lo, quota, step_index)
        else:
            result = self.commit(rows, tokens, masked, logits, hi - lo, quota, step_index)
        self.answer[idx, lo:wend] = tokens
        self.masked[idx, lo:wend] = masked
        committed = result.committed.tolist()
        self.decoded += sum(committed)
        self.revisions += int((~entry_masked & (tokens != entry_tokens)).sum())
        if s.eotp:
            for r, e in zip(rows, result.eot_pos.tolist()):
                if e >= 0:
                    self.eot_rows.add(r)
        for r in rows:
            self.row_steps[r] += 1
        self.stats.call(len(rows), sum(committed))

    # ------------------------------------------------------------------ output
    def _settle(self, rows, lo, hi) -> list[list[int]]:
        """Extend each row's final prefix; stop a row whose stop token (or max_new_tokens, or
        the whole answer) is settled. Returns the tokens each row newly settled."""
        s = self.s
        new = [[] for _ in self.prompts]
        masked = self.masked[torch.tensor(rows, device=self.masked.device)].cpu()
        answer = self.answer[torch.tensor(rows, device=self.answer.device)].cpu()
        limit_out = min(s.gen_length, s.max_new_tokens)
        for i, r in enumerate(rows):
            m = masked[i]
            first = int(m.nonzero()[0, 0]) if bool(m.any()) else s.gen_length
            if s.revise and bool(m[lo:hi].any()):
                first = min(first, lo)           # the current block may still be revised
            end = min(first, limit_out)
            if end > self.settled[r] and not self.stopped[r]:
                for t in answer[i, self.settled[r]:end].tolist():
                    if t in self.stops:
                        self.stopped[r] = True
                        break
                    self.outputs[r].append(t)
                    new[r].append(t)
                self.settled[r] = end
            finished = not bool(m.any())
            if s.early_exit and (self.stopped[r] or self.settled[r] >= limit_out):
                finished = True
            if finished:
                self.live.remove(r)
        return new

    def run(self) -> GenerationOutput:
        s = self.s
        if s.max_new_tokens == 0:
            return GenerationOutput(self.outputs, self.stats.finish(self.outputs, **s.describe()))
        ps = s.page_size
        need = sum(-(-(len(p) + s.gen_length) // ps) for p in self.prompts)
        with Session(self.model, need, ps) as session, torch.no_grad():
            self.session = session
            self.cache = session.cache
            self.seqs = [session.new_sequence() for _ in self.prompts]
            self.cache.append(self.seqs, [len(p) + s.gen_length for p in self.prompts])
            self._decode()
        return GenerationOutput(self.outputs, self.finish_stats())

    def _decode(self) -> None:
        s = self.s
        bl = s.block_length
        for blk in range(s.num_blocks):
            lo, hi = blk * bl, (blk + 1) * bl
            if not self.live:
                break
            counts = self.masked[:, lo:hi].sum(1).tolist()
            quotas = {r: transfer_counts(counts[r], s.steps_per_block) for r in self.live}
            step_index = 0
            while True:
                block_masked = self.masked[:, lo:hi].any(1).tolist()
                rows = [r for r in self.live if block_masked[r]]
                if not rows:
                    break
                # every row with masks in the block takes part in each of its steps, so
                # the rows share the step index (and the cache refresh at step 0)
                self._step(rows, lo, hi, step_index == 0, quotas, step_index)
                step_index += 1
                new = self._settle(rows, lo, hi)
                if self.stream is not None:
                    self.stream(new)
            # rows that skipped the block (nothing masked in it) may still finish here
            if self.live:
                new = self._settle(list(self.live), hi, hi)
                if self.stream is not None and any(new):
                    self.stream(new)

    def finish_stats(self) -> dict:
        return self.stats.finish(self.outputs, row_calls=self.stats.row_calls, decoded_positions=self.decoded,
                                 revisions=self.revisions, eot_rows=len(self.eot_rows), **self.s.describe())


@register_method("llada", model_kind="masked", base_model="stdlib-mdm", recipe="lm")
def llada(model, prompts: list[list[int]], *, max_new_tokens: int = 128, gen_length: int | None = None,
          block_length: int | None = None, steps: int | None = None, policy: str = "topk",
          threshold: float | None = None, factor: float = 1.0, temperature: float = 0.0,
          seed: int | None = None, cache: str = "none", eotp: bool = False,
          eot_threshold: float = EOT_THRESHOLD,
          early_exit: bool = True, stop_tokens=None, stream=None, page_size: int = 16,
          static_steps: bool | None = None) -> GenerationOutput:
    """LLaDA decoding of a masked diffusion LM.

    ``gen_length`` masked positions (default ``max_new_tokens``) in blocks of ``block_length``
    (default 32 when it divides gen_length, else gen_length); ``steps`` model calls in all
    (default gen_length: one token per call), split evenly over the blocks. ``policy``:
    ``"topk"`` (LLaDA low-confidence remasking: commit each step's transfer count, most
    confident first), ``"threshold"`` (Fast-dLLM: every position with confidence >=
    ``threshold``, default 0.9, at least one) or ``"factor"`` (Fast-dLLM's factor rule). The
    threshold rules take as many calls as they need. ``temperature > 0``: Gumbel-max sampling of
    the predicted tokens, seeded by ``seed`` (an int: row b uses ``seed + b``; or one int per
    row, which makes a row's sample independent of the batch it is in).
    ``cache``: "none", "prefix" or "dual" (see the module docstring). ``eotp``: End-of-Text
    Prediction (pad everything after a committed EOS, or after a masked position predicting
    EOS with confidence >= ``eot_threshold``, default 0.9). ``early_exit``: stop a row
    once its output is final. ``static_steps`` (default: on CUDA): the cached block steps run as
    fixed-shape steps (CUDA graphs on CUDA). Stats add the settings and ``decoded_positions``.
    """
    settings = DiffusionSettings(model, max_new_tokens, gen_length, block_length, steps, policy,
                                 threshold, factor, temperature=temperature, seed=seed, eotp=eotp,
                                 eot_threshold=eot_threshold, cache=cache, early_exit=early_exit,
                                 page_size=page_size)
    return DiffusionDecoder(model, prompts, settings, stop_token_set(model, stop_tokens), stream,
                            static_steps=static_steps).run()
