"""unmask_and_filter microbenchmark: the fused op against the PyTorch composition a user would
write for the same LLaDA low-confidence step (softmax, max, where, topk, scatter, where) and
against the logits-read floor (B*L*V*elem_size bytes / measured read bandwidth).

Median timings (CUDA events on GPU, perf_counter on CPU); every timed call first restores the
same tokens / masked state, in both columns. Prints a table; --json writes the rows.

    python benchmarks/bench_unmask.py --quick                  # CPU, small shapes
    python benchmarks/bench_unmask.py --device cuda            # B 1..8, L 32..256, V 32k and 126k
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from leapdec.ops import unmask_and_filter


def read_bandwidth(device, nbytes) -> float:
    """Measured read bandwidth in bytes/s: a max-reduction over nbytes (one read, tiny write)."""
    x = torch.randn(nbytes // 4, dtype=torch.float32, device=device)
    return nbytes / median_seconds(lambda: torch.amax(x), device, iters=10)


def median_seconds(fn, device, iters=20, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def bench_shape(batch, seq_len, vocab, dtype, device, k=2, iters=20):
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
    op_s = median_seconds(fused, device, iters=iters)
    torch_s = median_seconds(composed, device, iters=iters)
    return dict(op_s=op_s, torch_s=torch_s, agree=agree,
                logits_bytes=batch * seq_len * vocab * logits.element_size())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small CPU-sized shapes")
    ap.add_argument("--json", help="write the result rows to this file")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
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
    print(f"unmask_and_filter (topk, k=2) on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{dtype}, read bandwidth {bw / 1e9:.0f} GB/s")
    print(head)
    for b, l, v in shapes:
        r = bench_shape(b, l, v, dtype, device, iters=args.iters)
        floor = r["logits_bytes"] / bw
        row = dict(batch=b, seq_len=l, vocab=v, dtype=str(dtype), floor_us=floor * 1e6, fused_us=r["op_s"] * 1e6,
                   torch_us=r["torch_s"] * 1e6, speedup=r["torch_s"] / r["op_s"], fused_over_floor=r["op_s"] / floor,
                   agree=r["agree"], device=str(device))
        rows.append(row)
        print(f"{b:>3} {l:>4} {v:>7}  {row['floor_us']:>9.1f} {row['fused_us']:>9.1f} {row['torch_us']:>9.1f} "
              f"{row['speedup']:>7.2f}x {row['fused_over_floor']:>10.2f}x {row['agree']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(read_bandwidth_gbs=bw / 1e9, rows=rows), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
