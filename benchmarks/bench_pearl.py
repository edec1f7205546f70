"""Thin entry point: `python benchmarks/bench_pearl.py [options]` runs `leapdec.bench.pearl`, the same
as `leapdec bench pearl [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.pearl import main

if __name__ == "__main__":
    sys.exit(main())
