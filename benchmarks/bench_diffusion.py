"""Thin entry point: `python benchmarks/bench_diffusion.py [options]` runs `leapdec.bench.diffusion`, the
same as `leapdec bench diffusion [options]` from an installed wheel (`--help` lists the options)."""

import sys

from leapdec.bench.diffusion import main

if __name__ == "__main__":
    sys.exit(main())
