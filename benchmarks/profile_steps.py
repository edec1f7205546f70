"""Thin entry point: `python benchmarks/profile_steps.py [options]` runs `leapdec.bench.steps`
(where a decoding step's time goes, per method, batch 1; `--help` lists the options)."""

import sys

from leapdec.bench.steps import main

if __name__ == "__main__":
    sys.exit(main())
