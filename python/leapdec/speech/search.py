"""Hybrid CTC/attention beam search (ESPnet's joint decoding), batched over utterances.

Every live hypothesis of every utterance is one row: each step runs one attention-decoder step
over all rows and one ``ctc_prefix_score`` call over all rows x pre-beam candidates. A
candidate's score is ``(1 - ctc_weight) * attention log-prob + ctc_weight * (psi(h + c) -
psi(h)) + penalty`` added to the hypothesis' score (psi: the CTC prefix log-probability), as in
ESPnet's ``BatchBeamSearch`` with ``CTCPrefixScorer`` and ``LengthBonus``:

- pre-beam: the ``int(pre_beam_ratio * beam)`` best tokens by the attention score (plus the
  length bonus) per hypothesis are the only candidates the CTC scorer sees (all tokens when
  that is the whole vocabulary, or when ``ctc_weight == 1`` and there is no decoder);
- beam: per utterance, the ``beam`` best (hypothesis, candidate) pairs survive; those ending in
  eos move to the utterance's ended list (so fewer than ``beam`` may run on); blank is never a
  candidate (ESPnet gives it the CTC score log-zero, which only differs when the beam is wider
  than the tokens that are possible at all);
- length: an utterance decodes at most ``min(frames, max_len)`` steps (ESPnet's maxlenratio 0);
  at the last step eos is appended to every running hypothesis (score unchanged);
- end detection (ESPnet's ``end_detect``): an utterance stops once, for each of the last three
  lengths, the best hypothesis that ended with that length scores more than 10 below the best
  ended one; or when no hypothesis runs.

The result per utterance is its ended hypotheses sorted by score (no length normalisation).
``ctc_weight = 0`` is attention beam search, ``ctc_weight = 1`` CTC prefix beam search (no
decoder needed). The decoder is any object with ``decoder_step(state, tokens [N]) ->
(log_probs [N, V], state)`` and ``reorder(state, rows) -> state`` (rows: the source row of each
surviving hypothesis, a row may repeat), whose initial state has one row per utterance (e.g.
``AVSRModel.init_decoder_state``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from leapdec.ops import ctc_initial_state, ctc_prefix_score

END_DETECT_M = 3                      # ESPnet end_detect: the last M lengths ...
END_DETECT_D = math.log(math.exp(-10))  # ... each more than 10 below the best ended hypothesis


@dataclass
class Hypothesis:
    tokens: list[int]     # without sos; an ended hypothesis ends with eos
    score: float


@dataclass
class SearchResult:
    nbest: list[Hypothesis]   # ended hypotheses, best first
    steps: int                # decoding steps this utterance took
    eos: int

    @property
    def tokens(self) -> list[int]:
        """The best hypothesis without its eos."""
        if not self.nbest:
            return []
        toks = self.nbest[0].tokens
        return toks[:-1] if toks and toks[-1] == self.eos else toks


class OpCTCScorer:
    """CTC prefix scores by the ``ctc_prefix_score`` op (same interface as
    ``espnet_scorer.ESPnetCTCPrefixScorer``). The returned tensors live in one reused buffer:
    they are valid until the next call."""

    def __init__(self, log_probs, frame_lens, blank: int, eos: int):
        self.log_probs = log_probs.contiguous()
        self.frame_lens = torch.as_tensor(frame_lens, device=log_probs.device).to(torch.int32)
        self.blank, self.eos = blank, eos
        self._buffer = torch.empty(0, dtype=torch.float32, device=log_probs.device)

    def initial_state(self, hyp_utt):
        return ctc_initial_state(self.log_probs, self.frame_lens, hyp_utt, self.blank)

    def __call__(self, r_prev, output_length: int, last_token, hyp_utt, cand):
        n, c = cand.shape
        T = self.log_probs.shape[1]
        need = T * 2 * n * c + n * c
        if self._buffer.numel() < need:
            self._buffer = torch.empty(need, dtype=torch.float32, device=self.log_probs.device)
        out = (self._buffer[: T * 2 * n * c].view(T, 2, n, c), self._buffer[T * 2 * n * c: need].view(n, c))
        prefix_len = torch.full((n,), output_length, dtype=torch.int32, device=cand.device)
        return ctc_prefix_score(self.log_probs, self.frame_lens, r_prev, prefix_len, last_token, hyp_utt,
                                cand, self.blank, self.eos, out=out)


def make_scorer(kind: str, log_probs, frame_lens, blank: int, eos: int):
    """``"op"`` (the compiled op) or ``"espnet"`` (the pure-PyTorch ESPnet-style scorer)."""
    if kind == "op":
        return OpCTCScorer(log_probs, frame_lens, blank, eos)
    if kind == "espnet":
        from leapdec.speech.espnet_scorer import ESPnetCTCPrefixScorer
        return ESPnetCTCPrefixScorer(log_probs, frame_lens, blank, eos)
    raise ValueError(f"scorer must be 'op' or 'espnet', got {kind!r}")


def end_detect(ended: list[Hypothesis], step: int) -> bool:
    """ESPnet's end detection, lengths counted with sos and eos as ESPnet's yseq does."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    count = 0
    for m in range(END_DETECT_M):
        same = [h.score for h in ended if len(h.tokens) + 1 == step - m]
        if same and max(same) - best < END_DETECT_D:
            count += 1
    return count == END_DETECT_M


def top_per_utterance(total: torch.Tensor, utt: list[int], beam: int):
    """The ``beam`` best (row, column) pairs of ``total [N, C]`` per utterance (rows grouped by
    utterance, in order; -inf entries never taken), best first: ``(rows, cols, scores)`` lists,
    from one top-k over the utterances' rows padded to the same count."""
    n_cand = total.shape[1]
    firsts, group, within = [], [], []
    for i, u in enumerate(utt):
        if i == 0 or u != utt[i - 1]:
            firsts.append(i)
        group.append(len(firsts) - 1)
        within.append(i - firsts[-1])
    most = max(within) + 1
    padded = torch.full((len(firsts), most, n_cand), -math.inf, dtype=total.dtype, device=total.device)
    padded[torch.tensor(group, device=total.device), torch.tensor(within, device=total.device)] = total
    top = padded.view(len(firsts), -1).topk(min(beam, most * n_cand), dim=1)
    rows, cols, scores = [], [], []
    for g, (vals, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        for v, j in zip(vals, idx):
            if v == -math.inf:
                break
            rows.append(firsts[g] + j // n_cand)
            cols.append(j % n_cand)
            scores.append(v)
    return rows, cols, scores


def beam_search(frame_lens, ctc_log_probs=None, decoder=None, decoder_state=None, *, sos: int, eos: int,
                blank: int = 0, beam: int = 10, ctc_weight: float = 0.3, penalty: float = 0.0,
                pre_beam_ratio: float = 1.5, max_len: int | None = None, nbest: int = 1,
                end_detection: bool = True, scorer: str = "op", stats: dict | None = None) -> list[SearchResult]:
    """Joint CTC/attention beam search over B utterances (see the module docstring).

    ``frame_lens [B]``: encoder frames per utterance (the length limit); ``ctc_log_probs [B, T, V]``
    (needed when ``ctc_weight > 0``); ``decoder`` / ``decoder_state`` (needed when
    ``ctc_weight < 1``). ``scorer``: ``"op"`` or ``"espnet"`` (the pure-PyTorch baseline).
    Returns one :class:`SearchResult` per utterance with its ``nbest`` best ended hypotheses;
    ``stats`` (a dict) receives ``steps`` and the seconds spent in ``decoder_s`` / ``ctc_s``."""
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    use_ctc, use_att = ctc_weight > 0.0, ctc_weight < 1.0
    if use_ctc and ctc_log_probs is None:
        raise ValueError("ctc_weight > 0 needs ctc_log_probs")
    if use_att and decoder is None:
        raise ValueError("ctc_weight < 1 needs a decoder (and its initial decoder_state)")
    lens = [int(n) for n in torch.as_tensor(frame_lens).reshape(-1).tolist()]
    B = len(lens)
    if any(n < 1 for n in lens):
        raise ValueError(f"frame_lens must be >= 1, got {lens}")
    device = ctc_log_probs.device if ctc_log_probs is not None else torch.device("cpu")
    if ctc_log_probs is not None:
        if ctc_log_probs.dim() != 3 or ctc_log_probs.shape[0] != B:
            raise ValueError(f"ctc_log_probs must be [B={B}, T, V], got {tuple(ctc_log_probs.shape)}")
        if max(lens) > ctc_log_probs.shape[1]:
            raise ValueError(f"frame_lens exceed ctc_log_probs' {ctc_log_probs.shape[1]} frames")
    maxlen = [min(n, max_len) if max_len else n for n in lens]
    stats = stats if stats is not None else {}
    stats.setdefault("decoder_s", 0.0)
    stats.setdefault("ctc_s", 0.0)

    # live rows: tokens (no sos), utterance, score; CTC state r [T, 2, N] and psi [N]
    toks: list[list[int]] = [[] for _ in range(B)]
    utt = list(range(B))
    score = torch.zeros(B, dtype=torch.float32, device=device)
    if use_ctc:
        ctc = make_scorer(scorer, ctc_log_probs, lens, blank, eos)
        r = ctc.initial_state(torch.arange(B, dtype=torch.int32, device=device))
        psi_prev = torch.zeros(B, dtype=torch.float32, device=device)
    ended: list[list[Hypothesis]] = [[] for _ in range(B)]
    steps = [0] * B
    state = decoder_state
    step = 0
    while utt:
        n_rows = len(utt)
        last = [t[-1] if t else sos for t in toks]
        weighted = None
        if use_att:
            t0 = time.perf_counter()
            att, state = decoder.decoder_step(state, torch.tensor(last, device=device))
            stats["decoder_s"] += time.perf_counter() - t0
            weighted = (1.0 - ctc_weight) * att.float().to(device) + penalty
            vocab = weighted.shape[1]
        else:
            vocab = ctc_log_probs.shape[2]
        if use_ctc:
            pre_beam = int(pre_beam_ratio * beam)
            if use_att and pre_beam < vocab:
                cand = weighted.topk(pre_beam, dim=1).indices
            else:
                cand = torch.arange(vocab, device=device).expand(n_rows, vocab)
            cand = cand.to(torch.int32).contiguous()
            last_ctc = torch.tensor([t[-1] if t else -1 for t in toks], dtype=torch.int32, device=device)
            hyp_utt = torch.tensor(utt, dtype=torch.int32, device=device)
            t0 = time.perf_counter()
            r_all, psi = ctc(r, step, last_ctc, hyp_utt, cand)
            stats["ctc_s"] += time.perf_counter() - t0
            ctc_part = ctc_weight * (psi - psi_prev[:, None])
            cand_score = ctc_part + (weighted.gather(1, cand.long()) if use_att else penalty)
        else:
            cand = weighted.topk(min(beam, vocab), dim=1).indices.to(torch.int32)
            cand_score = weighted.gather(1, cand.long())
        total = (cand_score + score[:, None]).masked_fill(cand == blank, -math.inf)  # blank is no output
        n_cand = cand.shape[1]


        new_rows, new_cols, new_scores = top_per_utterance(total, utt, beam)
        cand_list = cand.tolist()
        keep_src, keep_cols, next_toks, next_utt, next_scores = [], [], [], [], []
        for src, col, sc in zip(new_rows, new_cols, new_scores):
            u = utt[src]
            t = toks[src] + [cand_list[src][col]]
            if step == maxlen[u] - 1 and t[-1] != eos:
                t = t + [eos]  # ESPnet: eos appended at the last step, score unchanged
            if t[-1] == eos:
                ended[u].append(Hypothesis(t, sc))
            else:
                keep_src.append(src)
                keep_cols.append(col)
                next_toks.append(t)
                next_utt.append(u)
                next_scores.append(sc)
        # utterances that stop here
        finished = set()
        still_running = set(next_utt)
        for u in dict.fromkeys(utt):
            steps[u] = step + 1
            if u not in still_running or step >= maxlen[u] - 1 or (end_detection and end_detect(ended[u], step)):
                finished.add(u)
        sel = [k for k, u in enumerate(next_utt) if u not in finished]
        keep_src = [keep_src[k] for k in sel]
        keep_cols = [keep_cols[k] for k in sel]
        toks = [next_toks[k] for k in sel]
        utt = [next_utt[k] for k in sel]
        score = torch.tensor([next_scores[k] for k in sel], dtype=torch.float32, device=device)
        if use_ctc:
            src_t = torch.tensor(keep_src, dtype=torch.long, device=device)
            col_t = torch.tensor(keep_cols, dtype=torch.long, device=device)
            r = r_all.reshape(r_all.shape[0], 2, -1)[:, :, src_t * n_cand + col_t].contiguous()
            psi_prev = psi[src_t, col_t]
        if use_att:
            state = decoder.reorder(state, keep_src)
        step += 1
    stats["steps"] = step
    results = []
    for u in range(B):
        best = sorted(ended[u], key=lambda h: h.score, reverse=True)[:nbest]
        results.append(SearchResult(best, steps[u], eos))
    return results


def ctc_greedy(ctc_log_probs: torch.Tensor, frame_lens, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: the argmax label per frame, repeats merged, blanks dropped."""
    best = ctc_log_probs.argmax(-1).tolist()
    out = []
    for row, n in zip(best, torch.as_tensor(frame_lens).reshape(-1).tolist()):
        ids, prev = [], blank
        for t in row[: int(n)]:
            if t != prev and t != blank:
                ids.append(t)
            prev = t
        out.append(ids)
    return out
