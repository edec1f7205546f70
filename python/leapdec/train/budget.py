"""The training budget shared by the recipes: stop after ``steps`` optimizer steps or
``seconds`` of training, whichever comes first, with a progress bar in the unit of the budget,
and the warmup + cosine learning-rate schedule that follows the same budget."""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm


def cosine_lr(lr: float, warmup: int, min_lr_ratio: float, step: int, progress: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``lr * min_lr_ratio`` as
    ``progress`` (the spent share of the budget) goes from 0 to 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


class Budget:
    """``progress(step)`` before each step (``None`` once the budget is spent), ``tick()`` after
    it, ``close()`` at the end (returns the training seconds). ``seconds`` reads the clock."""

    def __init__(self, steps: int | None, seconds: float | None, desc: str, progress: bool = True):
        self.steps, self.budget_s = steps, seconds
        self.bar = tqdm(total=steps if seconds is None else round(seconds), disable=not progress,
                        unit="step" if seconds is None else "s", desc=desc)
        self.start = time.perf_counter()
        self._last = 0.0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float | None:
        """The spent share of the budget before ``step``, or ``None`` when it is spent."""
        elapsed = self.seconds
        if (self.steps is not None and step >= self.steps) or \
                (self.budget_s is not None and elapsed >= self.budget_s):
            return None
        return max(step / self.steps if self.steps else 0.0,
                   elapsed / self.budget_s if self.budget_s else 0.0)

    def tick(self) -> None:
        """One step done: advance the bar (by a step, or by the seconds it took)."""
        if self.budget_s is None:
            self.bar.update(1)
        else:
            now = min(self.seconds, self.budget_s)
            self.bar.update(round(now) - round(self._last))
            self._last = now

    def close(self) -> float:
        self.bar.close()
        return self.seconds


def check_budget(steps, seconds, threads) -> None:
    """Check a recipe's budget options (positive ``steps`` int, positive ``seconds``, positive
    ``threads``) and apply ``threads`` (``torch.set_num_threads``); None leaves each unset."""
    import torch

    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def add_budget_arguments(parser) -> None:
    """The command-line options every budgeted recipe takes: ``--steps``, ``--seconds``,
    ``--device``, ``--seed``, ``--threads``, ``--no-progress``."""
    import torch

    parser.add_argument("--steps", type=int, help="optimizer steps (budget)")
    parser.add_argument("--seconds", type=float, help="wall-clock training budget")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def budget_command_args(steps, seconds, device, seed, threads) -> list[str]:
    """The budget options of a recipe's reproducing command line (the inverse of
    :func:`add_budget_arguments`): ``--steps`` / ``--seconds`` when given, ``--device``, ``--seed``,
    ``--threads`` when given."""
    args = []
    if steps is not None:
        args += ["--steps", str(steps)]
    if seconds is not None:
        args += ["--seconds", f"{seconds:g}"]
    args += ["--device", str(device), "--seed", str(seed)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return args
