"""Thin entry point: `python benchmarks/bench_linear.py [options]` runs `leapdec.bench.linear`, the same
as `leapdec bench linear [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.linear import main

if __name__ == "__main__":
    sys.exit(main())
