"""`leapdec demo | generate | bench | train` — the command-line front of the package."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")


def _demo(args) -> int:
    import torch

    import leapdec
    from leapdec.evaluate import METHOD_BASE_MODEL, compare_methods, markdown_table, save_results
    from leapdec.train.corpus import eval_prompts
    from leapdec.zoo import available

    torch.manual_seed(0)
    zoo = set(available())
    wanted = args.methods.split(",") if args.methods else leapdec.methods()
    methods, skipped = [], []
    for m in wanted:
        base = METHOD_BASE_MODEL.get(m, "stdlib-ar")
        if base not in zoo:
            skipped.append(f"{m} (no zoo model {base})")
        else:
            methods.append(m)
    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(args.prompts, seed=args.seed)]
    print(f"leapdec {leapdec.__version__} demo: {len(prompts)} held-out prompts from the stdlib corpus, "
          f"{args.max_new_tokens} new tokens each, device {args.device}")
    t0 = time.perf_counter()
    results = compare_methods(prompts, methods, args.max_new_tokens, device=args.device, skipped=skipped)
    print(markdown_table(results))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    save_results(results, json_path=args.json, png_path=args.png)
    print(f"plot: {args.png}   ({time.perf_counter() - t0:.1f} s)")
    return 0



def _generate(args) -> int:
    import leapdec

    model = leapdec.load_model(args.model, device=args.device)
    tok = leapdec.load_tokenizer(args.model)
    ids = tok.encode(args.prompt).ids
    options = {}
    for kv in args.option or []:
        k, _, v = kv.partition("=")
        try:
            options[k] = int(v)
        except ValueError:
            try:
                options[k] = float(v)
            except ValueError:
                options[k] = v
    out = leapdec.generate(model, [ids], method=args.method, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, **options)
    sys.stdout.write(args.prompt + tok.decode(out.tokens[0]) + "\n")
    stats = {k: v for k, v in out.stats.items() if isinstance(v, (int, float))}
    print("--", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()),
          file=sys.stderr)
    return 0


def _bench(args) -> int:
    scripts = {"attention": "bench_attention.py", "decode": "bench_decode.py", "unmask": "bench_unmask.py",
               "diffusion": "bench_diffusion.py", "wedlm": "bench_wedlm.py"}
    names = list(scripts) if args.what == "all" else [args.what]
    for name in names:
        path = os.path.normpath(os.path.join(BENCH_DIR, scripts[name]))
        if not os.path.exists(path):
            print(f"{path} not found: `leapdec bench` runs the scripts of a source checkout", file=sys.stderr)
            return 1
        sys.argv = [path] + (["--quick"] if args.quick else [])
        runpy.run_path(path, run_name="__main__")
    return 0


def _train(args) -> int:
    from leapdec.train.__main__ import main as train_main

    return train_main(args.rest) or 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="leapdec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="decode held-out prompts with every method and compare")
    p.add_argument("--methods", help="comma-separated methods (default: all available)")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default="leapdec-demo.png")
    p.add_argument("--json", default=None)
    p.set_defaults(fn=_demo)

    p = sub.add_parser("generate", help="continue a prompt with one method")
    p.add_argument("prompt")
    p.add_argument("--method", default="ar")
    p.add_argument("--model", default="stdlib-ar", help="zoo name or Hugging Face checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--option", action="append", help="method option KEY=VALUE (repeatable)")
    p.set_defaults(fn=_generate)

    p = sub.add_parser("bench", help="run the op and decoding benchmarks")
    p.add_argument("what", nargs="?", default="all", choices=["all", "attention", "decode", "unmask", "diffusion", "wedlm"])
    p.add_argument("--quick", action="store_true", help="small shapes (CPU)")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("train", help="run a training recipe (see `leapdec train -- --help`)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_train)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
