"""Character error rate: Levenshtein distance over characters, summed over utterances and
divided by the total reference length."""

from __future__ import annotations


def edit_distance(ref: str, hyp: str) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two strings."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def char_error_rate(refs, hyps) -> float:
    """Corpus CER of hypotheses ``hyps`` against references ``refs`` (lists of equal length)."""
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"refs ({len(refs)}) and hyps ({len(hyps)}) must have the same length")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("refs: the references are empty, so a CER is undefined")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total
