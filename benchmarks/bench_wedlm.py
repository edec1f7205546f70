"""Thin entry point: `python benchmarks/bench_wedlm.py [options]` runs `leapdec.bench.wedlm`, the
same as `leapdec bench wedlm [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.wedlm import main

if __name__ == "__main__":
    sys.exit(main())
