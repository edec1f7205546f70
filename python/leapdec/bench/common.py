"""What every benchmark shares: the output folder (checked writable before any work), timing with
warm-up and repeats reported as a spread (median, min, max, quartiles), and writing the table,
JSON and plot."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from leapdec.paths import writable_dir, writable_file  # noqa: F401  (re-exported for the benchmarks)


@dataclass(frozen=True)
class Spread:
    """Summary of repeated measurements (same unit as the samples)."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples) -> "Spread":
        xs = sorted(float(x) for x in samples)
        if not xs:
            raise ValueError("no samples to summarise")
        if len(xs) == 1:
            q1 = q3 = xs[0]
        else:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs))

    def scaled(self, factor: float) -> "Spread":
        return Spread(self.median * factor, self.min * factor, self.max * factor, self.q1 * factor,
                      self.q3 * factor, self.n)

    def inverse(self, numerator: float) -> "Spread":
        """The spread of ``numerator / x`` (e.g. tokens/s from seconds): min and max swap."""
        inv = lambda x: numerator / x if x > 0 else 0.0  # noqa: E731
        return Spread(inv(self.median), inv(self.max), inv(self.min), inv(self.q3), inv(self.q1), self.n)

    def as_dict(self) -> dict:
        return asdict(self)

    def cell(self, fmt: str = ".1f") -> str:
        """``median [min-max]`` for a table cell."""
        if self.n == 1:
            return format(self.median, fmt)
        return f"{format(self.median, fmt)} [{format(self.min, fmt)}-{format(self.max, fmt)}]"


def add_output_arguments(ap: argparse.ArgumentParser, default_repeats: int, default_warmup: int = 1) -> None:
    """``--out``, ``--warmup`` and ``--repeats``, the same in every benchmark."""
    ap.add_argument("--out", default="bench_out",
                    help="folder for the table (.md), the JSON and the plot (.png) (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=default_warmup,
                    help="untimed runs before timing (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=default_repeats,
                    help="timed runs; the spread (median, min-max, quartiles) is over these (default: %(default)s)")


def time_calls(fn, device, warmup: int = 1, repeats: int = 5, min_seconds: float = 0.0,
               max_repeats: int = 200) -> Spread:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed ones
    (more, up to ``max_repeats``, until ``min_seconds`` have passed). CUDA: CUDA events around
    each call; elsewhere ``time.perf_counter``."""
    import torch

    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    samples = []
    deadline = time.perf_counter() + min_seconds
    while len(samples) < max(1, repeats) or (time.perf_counter() < deadline and len(samples) < max_repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return Spread.of(samples)


def time_runs(fn, device, warmup: int = 1, repeats: int = 3):
    """Wall seconds of whole runs (``fn()`` returns the run's result): returns (first timed
    result, Spread of the run times). Synchronises CUDA after each run."""
    import torch

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    for _ in range(max(0, warmup)):
        fn()
    sync()
    first, samples = None, []
    for i in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        sync()
        samples.append(time.perf_counter() - t0)
        if i == 0:
            first = result
    return first, Spread.of(samples)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_outputs(out: Path, name: str, table: str, report: dict, figure=None) -> list[Path]:
    """Write ``<name>.md`` (the table), ``<name>.json`` (the report) and ``<name>.png`` (the
    figure, then closed) into ``out``; returns the paths."""
    out = Path(out)
    paths = [out / f"{name}.md", out / f"{name}.json"]
    paths[0].write_text(table.rstrip("\n") + "\n")
    paths[1].write_text(json.dumps(report, indent=1, default=str) + "\n")
    if figure is not None:
        paths.append(out / f"{name}.png")
        figure.savefig(paths[-1], dpi=120)
        pyplot().close(figure)
    return paths
