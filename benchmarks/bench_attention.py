"""Thin entry point: `python benchmarks/bench_attention.py [options]` runs `leapdec.bench.attention`, the
same as `leapdec bench attention [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.attention import main

if __name__ == "__main__":
    sys.exit(main())
