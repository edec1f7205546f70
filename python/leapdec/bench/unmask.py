"""unmask_and_filter microbenchmark: the fused op against the PyTorch composition a user would
write for the same LLaDA low-confidence step (softmax, max, where, topk, scatter, where) and
against the logits-read floor (B*L*V*elem_size bytes / measured read bandwidth).

Timings after warm-up over repeated calls, reported as median [min-max] (CUDA events on GPU,
perf_counter on CPU); every timed call first restores the same tokens / masked state, in both
columns. Prints the table and writes unmask.md, unmask.json and unmask.png to --out (--json also
writes the JSON to a file of its own).

    leapdec bench unmask --quick                  # CPU, small shapes
    leapdec bench unmask --device cuda            # B 1..8, L 32..256, V 32k and 126k
"""

from __future__ import annotations

import argparse
import json

import torch

from leapdec.bench.common import add_output_arguments, pyplot, time_calls, writable_dir, writable_file, write_outputs
from leapdec.ops import unmask_and_filter


def read_bandwidth(device, nbytes) -> float:
    """Measured read bandwidth in bytes/s: a max-reduction over nbytes (one read, tiny write)."""
    x = torch.randn(nbytes // 4, dtype=torch.float32, device=device)
    return nbytes / time_calls(lambda: torch.amax(x), device, warmup=3, repeats=10).median


def torch_composition(logits, tokens, masked, block_start, block_end, k):
    """LLaDA's low-confidence step written with PyTorch ops (scalar window and k)."""
    p = torch.softmax(logits.float(), dim=-1)
    conf, x0 = p.max(dim=-1)
    pos = torch.arange(logits.shape[1], device=logits.device)
    active = masked & (pos >= block_start) & (pos < block_end)
    conf = torch.where(active, conf, torch.full_like(conf, -float("inf")))
    idx = torch.topk(conf, k, dim=-1).indices
    transfer = torch.zeros_like(masked).scatter_(1, idx, True) & active
    tokens.copy_(torch.where(transfer, x0, tokens))
    masked &= ~transfer


def bench_shape(batch, seq_len, vocab, dtype, device, k=2, iters=20, warmup=3):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, seq_len, vocab, generator=gen) * 3).to(dtype).to(device)
    masked0 = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    tokens0 = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    tokens, masked = tokens0.clone(), masked0.clone()

    def reset():
        tokens.copy_(tokens0)
        masked.copy_(masked0)

    def fused():
        reset()
        unmask_and_filter(logits, tokens, masked, "topk", k=k, block_start=0, block_end=seq_len)

    def composed():
        reset()
        torch_composition(logits, tokens, masked, 0, seq_len, k)

    # the two agree on this input (distinct confidences): check once before timing
    fused()
    t_fused, m_fused = tokens.clone(), masked.clone()
    composed()
    agree = torch.equal(t_fused, tokens) and torch.equal(m_fused, masked)
    op_s = time_calls(fused, device, warmup=warmup, repeats=iters)
    torch_s = time_calls(composed, device, warmup=warmup, repeats=iters)
    return dict(op_s=op_s, torch_s=torch_s, agree=agree,
                logits_bytes=batch * seq_len * vocab * logits.element_size())


def plot(rows, device_name):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    labels = [f"B{r['batch']} L{r['seq_len']} V{r['vocab'] // 1000}k" for r in rows]
    for k, (key, label) in enumerate((("fused", "unmask_and_filter"), ("torch", "PyTorch composition"))):
        med = [r["spread_us"][key]["median"] for r in rows]
        lo = [m - r["spread_us"][key]["min"] for m, r in zip(med, rows)]
        hi = [r["spread_us"][key]["max"] - m for m, r in zip(med, rows)]
        ax.bar([i + (k - 0.5) * 0.4 for i in range(len(rows))], med, 0.4, yerr=[lo, hi], capsize=2, label=label)
    ax.plot(range(len(rows)), [r["floor_us"] for r in rows], "k_", markersize=20, label="logits-read floor")
    ax.set_xticks(range(len(rows)), labels, rotation=20)
    ax.set_ylabel("time per call (us), median, min-max bars")
    ax.set_yscale("log")
    ax.set_title(f"unmask_and_filter (topk, k=2) on {device_name}")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench unmask", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    ap.add_argument("--quick", action="store_true", help="small CPU-sized shapes")
    ap.add_argument("--json", help="also write the JSON report to this file")
    ap.add_argument("--iters", type=int, default=None, help="same as --repeats (kept for old command lines)")
    add_output_arguments(ap, default_repeats=20, default_warmup=3)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)          # before any work: a bad --out fails now, not at the end
    if args.json:
        writable_file(args.json)
    repeats = args.iters or args.repeats
    device = torch.device(args.device)
    if args.quick:
        shapes = [(1, 32, 4096), (2, 64, 4096), (4, 32, 8192)]
        dtype = torch.float32
    else:
        shapes = [(b, l, v) for v in (32000, 126464) for b in (1, 8) for l in (32, 256)]
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bw = read_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 27))
    rows = []
    head = f"{'B':>3} {'L':>4} {'V':>7}  {'floor us':>9} {'fused us':>9} {'torch us':>9} {'speedup':>8} {'fused/floor':>11} agree"
    device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    title = (f"unmask_and_filter (topk, k=2) on {device} ({device_name}), {dtype}, read bandwidth {bw / 1e9:.0f} GB/s; "
             f"times in us, median [min-max] of {repeats} calls after {args.warmup} warm-up")
    print(title)
    print(head)
    md = [title, "", "| B | L | V | floor us | fused us | torch us | speedup | fused/floor | agree |",
          "|---|---|---|---|---|---|---|---|---|"]
    for b, l, v in shapes:
        r = bench_shape(b, l, v, dtype, device, iters=repeats, warmup=args.warmup)
        op, ref = r["op_s"].scaled(1e6), r["torch_s"].scaled(1e6)
        floor = r["logits_bytes"] / bw
        row = dict(batch=b, seq_len=l, vocab=v, dtype=str(dtype), floor_us=floor * 1e6, fused_us=op.median,
                   torch_us=ref.median, speedup=ref.median / op.median, fused_over_floor=op.median / (floor * 1e6),
                   agree=r["agree"], device=str(device),
                   spread_us={"fused": op.as_dict(), "torch": ref.as_dict()})
        rows.append(row)
        print(f"{b:>3} {l:>4} {v:>7}  {row['floor_us']:>9.1f} {row['fused_us']:>9.1f} {row['torch_us']:>9.1f} "
              f"{row['speedup']:>7.2f}x {row['fused_over_floor']:>10.2f}x {row['agree']}  "
              f"(fused {op.cell()}, torch {ref.cell()})")
        md.append(f"| {b} | {l} | {v} | {row['floor_us']:.1f} | {op.cell()} | {ref.cell()} | {row['speedup']:.2f}x | "
                  f"{row['fused_over_floor']:.2f}x | {row['agree']} |")
    report = dict(benchmark="unmask", device=str(device), device_name=device_name, torch=torch.__version__,
                  warmup=args.warmup, repeats=repeats, read_bandwidth_gbs=bw / 1e9, rows=rows)
    paths = write_outputs(out, "unmask", "\n".join(md), report, plot(rows, device_name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        paths.append(args.json)
    print("wrote " + ", ".join(map(str, paths)))
    return 0 if all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
