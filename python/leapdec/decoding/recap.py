"""Method "recap": LLaDA decoding of a masked diffusion LM with ReCAP's context-feature reuse
(liebenxj/ReCAP, the text counterpart of ``leapdec.images.sampling``'s ReCAP sampler).

The blocks, transfer counts, commit rules and seeds are LLaDA's (``decoding.llada``); only the
model call of each step changes. Within each block, step ``t`` is

* a **full step** when ``t < pre_full`` or ``(t - pre_full) % (local_steps + 1) == 0`` (so step 0
  of every block is one): the whole sequence (prompt and answer) runs, every layer's K/V of all
  positions is written into the paged cache, and the block's positions still masked form the
  step's **group**;
* else a **local step**: only the group's positions run, as queries (mask ``"none"``) against
  the cache, whose other positions keep the K/V of the last full step; the group's fresh K/V
  overwrite their own slots first, so the queries see each other's new features. Positions the
  group committed since the full step carry their new tokens (that is how the rest of the group
  sees them); the unmask rule then chooses among the group's positions still masked.

``local_steps=0`` makes every step a full step: exactly ``method="llada"`` (``cache="none"``).
A local step costs ``n`` query rows (attention ``n x N`` and ``n`` MLP / LM-head rows) instead
of ``N``. With the context unchanged since the full step its logits equal the full step's
(tested); otherwise the cached context features are stale, ReCAP's approximation.

Against Fast-dLLM's dual cache (``llada`` with ``cache="dual"``): the dual cache refreshes once
per block and then runs the whole block every step (its committed positions too) over the cached
prefix and suffix; ReCAP refreshes on its schedule within the block (``pre_full`` full steps, then
one every ``local_steps + 1``) and between refreshes reuses the K/V of every position outside the
group, the block's positions committed before the last full step included, evaluating the group
only.
"""

from __future__ import annotations

import torch

from leapdec.decoding.base import GenerationOutput, register_method, stop_token_set
from leapdec.decoding.llada import DiffusionDecoder, DiffusionSettings
from leapdec.models.transformer import StepInput


def is_full_step(step: int, pre_full: int, local_steps: int) -> bool:
    """ReCAP's schedule: ``pre_full`` full steps first, then one full step before every
    ``local_steps`` local steps."""
    return step < pre_full or (step - pre_full) % (local_steps + 1) == 0


def check_schedule(pre_full, local_steps) -> None:
    """A clear error naming ``pre_full`` or ``local_steps`` unless both are ints >= 0."""
    for name, v in (("pre_full", pre_full), ("local_steps", local_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")


class RecapDecoder(DiffusionDecoder):
    """``DiffusionDecoder`` whose step calls follow ReCAP's schedule (see the module doc)."""

    def __init__(self, model, prompts, settings: DiffusionSettings, stops, stream=None, *,
                 pre_full: int, local_steps: int):
        if model.default_mask_mode != "none":
            raise ValueError("recap needs a bidirectional masked diffusion LM (mask 'none'); this "
                             "model attends causally")
        check_schedule(pre_full, local_steps)
        super().__init__(model, prompts, settings, stops, stream, static_steps=False)
        self.pre_full, self.local_steps = pre_full, local_steps
        self.group: dict[int, torch.Tensor] = {}     # row -> answer positions of its group
        self.full_steps = self.local_count = 0
        self.positions_evaluated = 0

    def window_logits(self, rows, lo, hi, wend, refresh: bool, step_index: int):
        if is_full_step(step_index, self.pre_full, self.local_steps):
            masked = self.masked[torch.tensor(rows, device=self.masked.device), lo:hi]
            for r, m in zip(rows, masked):
                self.group[r] = m.nonzero()[:, 0] + lo
            self.full_steps += 1
            self.positions_evaluated += sum(len(self.prompts[r]) + self.s.gen_length for r in rows)
            return super().window_logits(rows, lo, hi, wend, True, step_index)
        self.local_count += 1
        return self.local_logits(rows, lo, hi, wend)

    def local_logits(self, rows, lo, hi, wend):
        """A local step: each row's group (answer positions in ``[lo, hi)``) as queries against
        the cache; logits ``[R, wend - lo, V]``, zero outside the groups (those positions are
        all committed, so the commit rule never reads them)."""
        dev, G = self.answer.device, self.s.gen_length
        ids, pos, slots, qo_lens, kv_lens = [], [], [], [], []
        for r in rows:
            P, group = len(self.prompts[r]), self.group[r]
            ids.append(self.answer[r, group])
            pos.append(group + P)
            block_slots = self.cache.writable_slots(self.seqs[r], P + lo, P + hi)
            slots.append(block_slots[(group - lo).to(block_slots.device)])
            qo_lens.append(group.numel())
            kv_lens.append(P + G)
        self.positions_evaluated += sum(qo_lens)
        plan = self._plan([self.seqs[r] for r in rows], kv_lens, qo_lens)
        step = StepInput(torch.cat(ids), torch.cat(pos), torch.cat(slots), plan, mask_mode="none")
        logits = self.model.forward_paged(step, self.cache)
        window = logits.new_zeros(len(rows), wend - lo, logits.shape[-1])
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=dev),
                                         torch.tensor(qo_lens, device=dev))
        window[row_of, torch.cat([self.group[r] for r in rows]) - lo] = logits
        return window

    def finish_stats(self) -> dict:
        stats = super().finish_stats()
        stats.update(cache="recap", full_steps=self.full_steps, local_steps=self.local_count,
                     positions_evaluated=self.positions_evaluated, pre_full=self.pre_full,
                     local_steps_per_full=self.local_steps)
        return stats


@register_method("recap", model_kind="masked", base_model="stdlib-mdm", recipe="lm")
def recap(model, prompts: list[list[int]], *, max_new_tokens: int = 128, gen_length: int | None = None,
          block_length: int | None = None, steps: int | None = None, pre_full: int | None = None,
          local_steps: int = 3, policy: str = "topk", threshold: float | None = None, factor: float = 1.0,
          temperature: float = 0.0, seed: int | None = None, early_exit: bool = True, stop_tokens=None,
          stream=None, page_size: int = 16) -> GenerationOutput:
    """LLaDA decoding with ReCAP's context-feature reuse (full and local steps).

    ``gen_length``, ``block_length``, ``steps``, ``policy`` (``"topk"``: LLaDA's low-confidence
    remasking; ``"threshold"`` / ``"factor"``: Fast-dLLM's rules), ``threshold``, ``factor``,
    ``temperature``, ``seed``, ``early_exit`` as ``llada``. ReCAP's schedule, within each block:
    ``pre_full`` full steps first (default a quarter of the block's steps), then one full step
    before every ``local_steps`` local steps (default 3; 0: all full, the same output as
    ``llada``). Stats add ``full_steps``, ``local_steps`` (counts of calls),
    ``positions_evaluated`` (query rows summed over rows and calls), ``pre_full`` and
    ``local_steps_per_full``.
    """
    settings = DiffusionSettings(model, max_new_tokens, gen_length, block_length, steps, policy,
                                 threshold, factor, temperature=temperature, seed=seed,
                                 early_exit=early_exit, page_size=page_size)
    if pre_full is None:
        pre_full = settings.steps_per_block // 4
    return RecapDecoder(model, prompts, settings, stop_token_set(model, stop_tokens), stream,
                        pre_full=pre_full, local_steps=local_steps).run()
