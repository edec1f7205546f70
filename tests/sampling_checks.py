"""Distribution checks shared by the lossless sampling tests of speculative methods."""

import torch


def assert_second_token_follows_target(target, prompt: list[int], tokens: list[list[int]]) -> None:
    """Chi-square of the second new token of many independent rows (the first token a verify
    step emits), among the rows whose first token is the most common one, against the target's
    exact conditional distribution; fails beyond ~p < 0.001."""
    vocab = target.config.vocab_size
    firsts = torch.tensor([t[0] for t in tokens])
    first = int(firsts.mode().values)
    seconds = torch.tensor([t[1] for t, f in zip(tokens, firsts.tolist()) if f == first])
    with torch.no_grad():
        p = target.logits(torch.tensor([prompt + [first]]))[0, -1].float().softmax(-1)
    observed = torch.bincount(seconds, minlength=vocab).double()
    expected = p.double() * len(seconds)
    keep = expected >= 5
    chi2 = float((((observed - expected) ** 2) / expected)[keep].sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 4 * (2 * dof) ** 0.5, (chi2, dof)
