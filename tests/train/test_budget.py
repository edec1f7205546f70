"""The recipes' shared training budget and learning-rate schedule."""

import math

import pytest

from leapdec.train.budget import Budget, cosine_lr


def test_cosine_lr_warmup_then_cosine_to_the_floor():
    assert cosine_lr(1.0, 4, 0.1, 0, 0.0) == pytest.approx(0.25)
    assert cosine_lr(1.0, 4, 0.1, 3, 0.0) == pytest.approx(1.0)
    assert cosine_lr(1.0, 4, 0.1, 10, 0.0) == pytest.approx(1.0)
    assert cosine_lr(1.0, 4, 0.1, 10, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_lr(1.0, 4, 0.1, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(1.0, 4, 0.1, 10, 3.0) == pytest.approx(0.1)       # clamped past the budget
    assert math.isclose(cosine_lr(2.0, 0, 0.0, 0, 0.25), 2.0 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_step_budget_progress_and_end():
    budget = Budget(steps=4, seconds=None, desc="t", progress=True)
    fracs = []
    step = 0
    while (frac := budget.progress(step)) is not None:
        fracs.append(frac)
        step += 1
        budget.tick()
    assert step == 4 and fracs == [0.0, 0.25, 0.5, 0.75]
    assert budget.bar.n == 4 and budget.close() >= 0.0


def test_seconds_budget_ends_on_the_clock():
    budget = Budget(steps=None, seconds=1e-9, desc="t", progress=False)
    assert budget.progress(0) is None
    budget = Budget(steps=10, seconds=3600.0, desc="t", progress=False)
    assert 0.5 <= budget.progress(5) < 0.51                             # the larger share counts
