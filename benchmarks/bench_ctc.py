"""Thin entry point: `python benchmarks/bench_ctc.py [options]` runs `leapdec.bench.ctc`, the same
as `leapdec bench ctc [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.ctc import main

if __name__ == "__main__":
    sys.exit(main())
