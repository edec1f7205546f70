"""``python -m leapdec.train RECIPE [options]`` (also ``leapdec train RECIPE ...``): run one
training recipe. Each recipe is a module of this package with a ``main(argv)``; ``RECIPE --help``
lists its options.
"""

from __future__ import annotations

import importlib
import sys

# recipe name -> module holding its main(argv)
RECIPES = {
    "avsr": "leapdec.train.avsr",
    "drafter": "leapdec.train.drafter",
    "falcon": "leapdec.train.falcon",
    "lm": "leapdec.train.lm",
    "maskgit": "leapdec.train.maskgit",
    "medusa": "leapdec.train.medusa",
    "tokenizer": "leapdec.train.tokenizer",
    "learn2pd": "leapdec.train.learn2pd",
    "rediff": "leapdec.train.rediff",
    "wedlm": "leapdec.train.wedlm",
    "deer": "leapdec.train.deer",
}


def _usage() -> str:
    import leapdec.decoding  # noqa: F401  (registers the methods' specs)
    from leapdec.engine.spec import specs

    serves: dict[str, list[str]] = {}
    for spec in specs():
        if spec.recipe:
            serves.setdefault(spec.recipe, []).append(spec.name)
    lines = [f"  {name:10s} {'for ' + ', '.join(serves[name]) if name in serves else ''}" for name in sorted(RECIPES)]
    return ("usage: python -m leapdec.train RECIPE [options]   (RECIPE --help for its options)\n"
            "recipes (and the methods whose model or companion they make):\n" + "\n".join(lines))


def run_recipe(name: str, argv: list[str] | None = None) -> int:
    """Run recipe ``name`` with command-line arguments ``argv``; returns the exit status."""
    if name not in RECIPES:
        raise ValueError(f"name: unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    status = importlib.import_module(RECIPES[name]).main(list(argv or []))
    return status or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in RECIPES:
        print(f"unknown recipe {argv[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    return run_recipe(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
