"""The CTC prefix scorer written the way ESPnet's ``CTCPrefixScoreTH`` does it: plain PyTorch,
vectorised over hypotheses x candidates, one ``stack`` + ``logsumexp`` per frame. It is the
baseline the ``ctc_prefix_score`` op is benchmarked against (``leapdec bench ctc``) and a second,
independent implementation the search tests compare with.

Same recursion and conventions as ESPnet (finite log-zero -1e10, frames past an utterance's end
padded with log-zero labels and a free blank, ``x`` stored as ``[2, T, B, V]``, candidates picked
with ``index_select``, the eos candidate scored with the end probability, blank excluded). Where
ESPnet loops in Python over hypotheses (the repeated-label fix-up, scattering scores back,
eos), this version uses one indexing op each, which only makes the baseline faster; it also
takes ragged hypothesis counts per utterance (``hyp_utt``) and returns the prefix scores ``psi``
themselves (a search subtracts the previous step's) and the forward variables of every
candidate, like the op.
"""

from __future__ import annotations

import torch

LOG_ZERO = -10000000000.0


class ESPnetCTCPrefixScorer:
    """CTC prefix scores of ``log_probs [B, T, V]`` (frames ``< frame_lens[b]`` valid)."""

    def __init__(self, log_probs: torch.Tensor, frame_lens, blank: int, eos: int):
        x = log_probs.detach().float().clone()
        self.batch, self.input_length, self.odim = x.shape
        self.blank, self.eos = blank, eos
        self.device = x.device
        lens = torch.as_tensor(frame_lens, device=self.device).long()
        for i, n in enumerate(lens.tolist()):  # pad the rest of each utterance, as ESPnet does
            if n < self.input_length:
                x[i, n:, :] = LOG_ZERO
                x[i, n:, blank] = 0
        xn = x.transpose(0, 1)                                           # (T, B, O)
        xb = xn[:, :, blank].unsqueeze(2).expand(-1, -1, self.odim)
        self.x = torch.stack([xn, xb])                                   # (2, T, B, O)
        self.end_frames = lens - 1

    def initial_state(self, hyp_utt: torch.Tensor) -> torch.Tensor:
        """``r [T, 2, N]`` of the empty prefix (sos) for hypotheses of utterances ``hyp_utt``."""
        utt = hyp_utt.to(self.device).long()
        r = torch.full((self.input_length, 2, utt.numel()), LOG_ZERO, device=self.device)
        r[:, 1] = torch.cumsum(self.x[0, :, :, self.blank], 0)[:, utt]
        return r

    def __call__(self, r_prev, output_length: int, last_token, hyp_utt, cand):
        """Extend hypotheses (all ``output_length`` tokens long; ``last_token [N]``, ignored for
        the empty prefix) by ``cand [N, C]``: ``(r [T, 2, N, C], psi [N, C])``."""
        utt = hyp_utt.to(self.device).long()
        scoring_ids = cand.to(self.device).long()
        n_bh, snum = scoring_ids.shape
        # select input dimensions for scoring
        scoring_idx = (scoring_ids + (utt * self.odim).unsqueeze(1)).view(-1)
        x_ = torch.index_select(self.x.view(2, -1, self.batch * self.odim), 2, scoring_idx).view(
            2, -1, n_bh, snum)
        # new CTC forward probs are prepared as a (T x 2 x BW x S) tensor
        r = torch.full((self.input_length, 2, n_bh, snum), LOG_ZERO, device=self.device)
        if output_length == 0:
            r[0, 0] = x_[0, 0]
        r_sum = torch.logsumexp(r_prev, 1)                               # (T, BW)
        log_phi = r_sum.unsqueeze(2).repeat(1, 1, snum)
        if output_length > 0:  # a repeated label needs a blank in between
            rep = scoring_ids == last_token.to(self.device).long().unsqueeze(1)
            log_phi = torch.where(rep.unsqueeze(0), r_prev[:, 1].unsqueeze(2), log_phi)
        start = max(output_length, 1)
        end = self.input_length
        # compute forward probabilities log(r_t^n(h)) and log(r_t^b(h))
        for t in range(start, end):
            rp = r[t - 1]
            rr = torch.stack([rp[0], log_phi[t - 1], rp[0], rp[1]]).view(2, 2, n_bh, snum)
            r[t] = torch.logsumexp(rr, 1) + x_[:, t]
        # compute log prefix probabilities log(psi)
        log_phi_x = torch.cat((log_phi[0].unsqueeze(0), log_phi[:-1]), dim=0) + x_[0]
        log_psi = torch.logsumexp(torch.cat((log_phi_x[start:end], r[start - 1, 0].unsqueeze(0)), dim=0), dim=0)
        end_score = r_sum[self.end_frames[utt], torch.arange(n_bh, device=self.device)]
        log_psi = torch.where(scoring_ids == self.eos, end_score.unsqueeze(1), log_psi)
        # exclude blank probs
        log_psi = log_psi.masked_fill(scoring_ids == self.blank, LOG_ZERO)
        return r, log_psi
