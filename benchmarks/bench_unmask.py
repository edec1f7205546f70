"""Thin entry point: `python benchmarks/bench_unmask.py [options]` runs `leapdec.bench.unmask`, the
same as `leapdec bench unmask [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.unmask import main

if __name__ == "__main__":
    sys.exit(main())
