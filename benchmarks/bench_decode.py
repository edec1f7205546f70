"""Thin entry point: `python benchmarks/bench_decode.py [options]` runs `leapdec.bench.decode`, the
same as `leapdec bench decode [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.decode import main

if __name__ == "__main__":
    sys.exit(main())
