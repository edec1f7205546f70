"""``python -m leapdec.bench <name> [options]``: run one benchmark (see ``leapdec.bench``)."""

import sys

from leapdec.bench import BENCHMARKS, run


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        lines = [f"  {n:<10} {d}" for n, d in BENCHMARKS.items()]
        print("usage: python -m leapdec.bench NAME [options]   (NAME --help for its options)\n\n"
              + "\n".join(lines), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
