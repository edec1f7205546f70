"""End-to-end decoding benchmark: every method on the zoo models (or a given checkpoint).

Reports tokens per model call, model calls, tokens/s as median [min-max] over --repeats timed
runs (each after a warm-up decode), speedup over our AR engine (medians) and over
`transformers.generate` on the same checkpoint, and agreement with greedy AR. Writes decode.md,
decode.json and decode.png to --out. `--floor` adds the AR engine on a random 1B-parameter Llama
shape against the weight-streaming floor (bytes of weights / measured copy bandwidth per token).

    leapdec bench decode --quick                 # CPU, small
    leapdec bench decode --device cuda --floor   # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import leapdec
from leapdec.bench.common import Spread, add_output_arguments, writable_dir, write_outputs
from leapdec.evaluate import compare_methods, save_results


def copy_bandwidth(device, nbytes=256 * 2**20) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 10
    for _ in range(n):
        y.copy_(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * nbytes * n / (time.perf_counter() - t0)


def transformers_generate(path, prompts, max_new_tokens, device, dtype):
    """Greedy `transformers.generate` on the same checkpoint, one prompt at a time (its eager default)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    with torch.no_grad():  # warm-up
        ids = torch.tensor([prompts[0]], device=device)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                       pad_token_id=model.config.eos_token_id)
    outs, t0 = [], time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=model.config.eos_token_id,
                                 pad_token_id=model.config.eos_token_id)
            outs.append(gen[0, len(p):].tolist())
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    eos = model.config.eos_token_id
    outs = [o[: o.index(eos)] if eos in o else o for o in outs]
    return outs, wall


def floor_benchmark(device, quick):
    """Our AR engine at batch 1 on a random Llama shape vs the weight-streaming floor."""
    from leapdec.models.config import ModelConfig
    from leapdec.models.transformer import Transformer

    if quick:
        shape = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=4096)
    else:  # TinyLlama-1.1B shape
        shape = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000)
    cfg = ModelConfig(model_type="llama", head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                      max_position_embeddings=4096, **shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Transformer(cfg).to(device=device, dtype=dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device) / 2  # bytes/s streamed (read side)
    floor_tps = bw / weight_bytes
    n_new = 32 if quick else 256
    prompt = [list(range(1, 33))]
    leapdec.generate(model, prompt, method="ar", max_new_tokens=8)
    t0 = time.perf_counter()
    out = leapdec.generate(model, prompt, method="ar", max_new_tokens=n_new, stop_tokens=[])
    if device.type == "cuda":
        torch.cuda.synchronize()
    tps = len(out.tokens[0]) / (time.perf_counter() - t0)
    return dict(params=sum(p.numel() for p in model.parameters()), weight_bytes=weight_bytes,
                read_bandwidth_GBps=bw / 1e9, floor_tok_s=floor_tps, ar_tok_s=tps,
                fraction_of_floor=tps / floor_tps)


def repeated_comparison(prompts, methods, max_new_tokens, device, repeats, skipped):
    """``compare_methods`` (one warm-up decode, one timed run per method) ``repeats`` times on the
    same loaded models: the first run's results with tokens/s and speedup at the median, and
    each method's tokens/s spread."""
    models, runs = {}, []
    for i in range(max(1, repeats)):
        runs.append(compare_methods(prompts, methods, max_new_tokens, device=device, models=models,
                                    skipped=skipped if i == 0 else [], progress=i == 0))
    spreads = {r.method: Spread.of([run[k].tokens_per_s for run in runs])
               for k, r in enumerate(runs[0])}
    ar_tps = spreads["ar"].median
    results = [dataclasses.replace(r, tokens_per_s=spreads[r.method].median,
                                   wall_s=r.new_tokens / spreads[r.method].median if spreads[r.method].median else r.wall_s,
                                   speedup_vs_ar=spreads[r.method].median / ar_tps if ar_tps else 1.0)
               for r in runs[0]]
    return results, spreads


def markdown_table(results, spreads) -> str:
    head = ("| method | model | new tokens | model calls | tokens/call | tokens/s median [min-max] | speedup vs AR "
            "| match AR | identical to greedy AR |\n|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r.method} | {r.model} | {r.new_tokens} | {r.model_calls} | {r.tokens_per_call:.2f} | "
        f"{spreads[r.method].cell()} | {r.speedup_vs_ar:.2f}x | {100 * r.match_ar:.0f}% | "
        f"{'yes' if r.identical_to_ar else 'no'} |\n" for r in results)


def acceptance_table(results) -> str:
    """Speculative methods: mean accepted length (tokens gained per verify step, the bonus token
    included) and the acceptance-length histogram."""
    spec = [r for r in results if r.accept_length_histogram]
    if not spec:
        return ""
    return ("\n| method | mean accepted length | acceptance-length histogram (tokens gained: steps) |\n"
            "|---|---|---|\n" + "".join(
                f"| {r.method} | {r.mean_accepted_length:.2f} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(r.accept_length_histogram.items()))} |\n"
                for r in spec))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="leapdec bench decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated, from {', '.join(leapdec.methods())} (default: all)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (128 with --model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="few prompts, short outputs (CPU)")
    ap.add_argument("--floor", action="store_true", help="AR engine vs the weight-streaming floor")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--gpu-check", action="store_true", help="the short run of benchmarks/gpu_check.sh")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU timings)")
    ap.add_argument("--model", default="stdlib-ar",
                    help="a GGUF zoo chat model (smollm2-135m-instruct): its AR-side methods against our AR "
                         "engine on held-out chat requests (leapdec.bench.decode_chat)")
    ap.add_argument("--batches", default="1,8", help="--model: batch sizes (default: %(default)s)")
    ap.add_argument("--weight-dtype", choices=["float32", "bfloat16"], default=None,
                    help="--model: keep the linear weights in this dtype, packed and fused for the CPU "
                         "decode op (load_model(weight_dtype=...)); default: as loaded")
    add_output_arguments(ap, default_repeats=3)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)          # before any work: a bad --out fails now, not at the end
    if args.model != "stdlib-ar":
        return _chat_model_main(args, out)
    if args.max_new_tokens is None:
        args.max_new_tokens = 64
    if args.quick:
        args.prompts, args.max_new_tokens = 3, 32
        args.repeats = min(args.repeats, 2)
    if args.gpu_check:
        args.floor = True
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from leapdec.train.corpus import eval_prompts
    from leapdec.zoo import resolve

    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(args.prompts)]
    methods = args.methods.split(",") if args.methods else leapdec.methods()
    skipped = []
    results, spreads = repeated_comparison(prompts, methods, args.max_new_tokens, args.device, args.repeats,
                                           skipped)
    table = (f"{len(prompts)} held-out prompts, {args.max_new_tokens} new tokens, {args.device}, "
             f"tokens/s median [min-max] of {args.repeats} runs after a warm-up decode\n\n"
             + markdown_table(results, spreads) + acceptance_table(results))
    report = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "repeats": args.repeats, "results": [dataclasses.asdict(r) for r in results],
              "tokens_per_s_spread": {m: s.as_dict() for m, s in spreads.items()}, "skipped": skipped}

    if not args.no_transformers:
        ar = next(r for r in results if r.method == "ar")
        hf_out, hf_wall = transformers_generate(resolve("stdlib-ar"), prompts, args.max_new_tokens, device,
                                                torch.float32 if device.type == "cpu" else torch.bfloat16)
        hf_tps = sum(len(o) for o in hf_out) / hf_wall
        model = leapdec.load_model("stdlib-ar", device=args.device)
        ours = leapdec.generate(model, prompts, method="ar", max_new_tokens=args.max_new_tokens)
        same = ours.tokens == hf_out
        table += (f"\n`transformers.generate` (eager, batch 1, same checkpoint): {hf_tps:.1f} tok/s; our AR engine "
                  f"{ar.tokens_per_s:.1f} tok/s ({ar.tokens_per_s / hf_tps:.2f}x); identical tokens: {same}\n")
        report["transformers"] = dict(tokens_per_s=hf_tps, identical=same, ar_speedup=ar.tokens_per_s / hf_tps)

    if args.floor:
        fl = floor_benchmark(device, args.quick)
        report["floor"] = fl
        table += (f"\nAR engine, batch 1, random Llama shape ({fl['params'] / 1e6:.0f}M params): "
                  f"{fl['ar_tok_s']:.1f} tok/s against a weight-streaming floor of {fl['floor_tok_s']:.0f} tok/s "
                  f"({100 * fl['fraction_of_floor']:.1f}% of floor, read bandwidth {fl['read_bandwidth_GBps']:.0f} GB/s)\n")

    if skipped:
        table += "\nskipped: " + "; ".join(skipped) + "\n"
    print(table)
    paths = write_outputs(out, "decode", table, report)
    save_results(results, png_path=str(out / "decode.png"))
    print("wrote " + ", ".join(map(str, paths + [out / "decode.png"])))
    return 0


def _chat_model_main(args, out) -> int:
    """``--model NAME``: leapdec.bench.decode_chat's interleaved rows, written as decode_<name>.md/json."""
    from leapdec import zoo
    from leapdec.bench import decode_chat

    if args.model not in zoo.GGUF_MODELS:
        raise SystemExit(f"--model: {args.model!r} is not a GGUF zoo chat model ({', '.join(zoo.GGUF_MODELS)})")
    methods = args.methods.split(",") if args.methods else ["ar", "medusa", "falcon"]
    if "ar" not in methods:
        methods = ["ar"] + methods
    batches = [int(b) for b in args.batches.split(",")]
    new_tokens = 32 if args.quick else (args.max_new_tokens or 128)
    # batch 1: the first half of --prompts, each alone; batch B: the first B prompts in one call
    report = decode_chat.run_rows(args.model, methods, batches, 2 if args.quick else max(1, args.prompts // 2),
                                  new_tokens, args.repeats, args.threads or 1,
                                  weight_dtype=args.weight_dtype)
    table = decode_chat.markdown(report)
    print(table)
    paths = write_outputs(out, f"decode_{args.model}", table, report)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
