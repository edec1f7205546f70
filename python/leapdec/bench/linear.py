"""``leapdec.ops.linear`` (few rows, weights streamed once, 16-bit weights widened in registers)
against ``F.linear`` on every linear layer of one decode step of a Llama shape (default:
SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9/3 heads of 64, vocabulary 49152, the LM head
included), for 1..16 rows (a decode step, a verify step of a chain or tree, a batch). Times
are per step (all layers), with the weight-streaming floor (weight bytes / measured read
bandwidth). torch runs the weights in their own dtype (bfloat16 activations with bfloat16
weights), which is what a user of torch alone would run.

    leapdec bench linear [--threads 2] [--rows 1,2,4,8,16] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from leapdec.bench.common import add_output_arguments, pyplot, time_calls, writable_dir, write_outputs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def layer_shapes(layers, hidden, intermediate, heads, kv_heads, head_dim, vocab):
    """(out, in) of every linear layer of one step: q, k, v, o, gate, up, down per layer, then the head."""
    per = [(heads * head_dim, hidden), (kv_heads * head_dim, hidden), (kv_heads * head_dim, hidden),
           (hidden, heads * head_dim), (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    return per * layers + [(vocab, hidden)]


def read_bandwidth(nbytes: int = 1 << 29) -> float:
    """Bytes/s of summing a large float32 tensor (what a weight-streaming step can reach)."""
    big = torch.ones(nbytes // 4)
    spread = time_calls(lambda: big.sum(), "cpu", warmup=1, repeats=5)
    return nbytes / spread.min


def main(argv=None) -> int:
    from leapdec.ops import linear, pack_linear_weight

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="weight dtypes (float32, bfloat16, float16)")
    ap.add_argument("--shape", default="30,576,1536,9,3,64,49152",
                    help="layers,hidden,intermediate,heads,kv_heads,head_dim,vocab (default: SmolLM2-135M)")
    ap.add_argument("--quick", action="store_true", help="a 4-layer shape, rows 1 and 4")
    add_output_arguments(ap, default_repeats=7)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)
    torch.set_num_threads(args.threads)
    shape = [int(v) for v in args.shape.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    if args.quick:
        shape[0], rows = 4, [1, 4]
    shapes = layer_shapes(*shape)
    bandwidth = read_bandwidth(1 << 26 if args.quick else 1 << 29)
    report_rows, md = [], [
        f"Linear layers of one step, shape {args.shape} (layers, hidden, MLP, heads, KV heads, head dim, "
        f"vocab), {args.threads} thread(s), CPU, ms per step median [min-max] of {args.repeats}; floor = weight "
        f"bytes / {bandwidth / 1e9:.1f} GB/s read.", "",
        "| weights | rows | leapdec.ops.linear ms | packed weights ms | F.linear ms (torch, same dtype) | "
        "speedup (packed) | floor ms | % of floor (packed) |", "|---|---|---|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        weights = [torch.randn(o, i, generator=gen).to(dtype) for o, i in shapes]
        packed = [pack_linear_weight(w) for w in weights]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        floor = nbytes / bandwidth
        for m in rows:
            xs = {i: torch.randn(m, i, generator=gen) for i in {i for _, i in shapes}}
            xt = {i: x.to(dtype) for i, x in xs.items()}

            def ours():
                for w in weights:
                    linear(xs[w.shape[1]], w)

            def ours_packed():
                for w, p in zip(weights, packed):
                    linear(xs[w.shape[1]], p, out_features=w.shape[0])

            def theirs():
                for w in weights:
                    F.linear(xt[w.shape[1]], w)

            a = time_calls(ours, "cpu", warmup=args.warmup, repeats=args.repeats)
            p = time_calls(ours_packed, "cpu", warmup=args.warmup, repeats=args.repeats)
            b = time_calls(theirs, "cpu", warmup=args.warmup, repeats=args.repeats)
            row = dict(weights=name, rows=m, leapdec_ms=a.scaled(1e3).as_dict(), packed_ms=p.scaled(1e3).as_dict(),
                       torch_ms=b.scaled(1e3).as_dict(), speedup=b.median / p.median, floor_ms=1e3 * floor,
                       pct_of_floor=100 * floor / p.median)
            report_rows.append(row)
            md.append(f"| {name} | {m} | {a.scaled(1e3).cell()} | {p.scaled(1e3).cell()} | {b.scaled(1e3).cell()} | "
                      f"{row['speedup']:.2f}x | {1e3 * floor:.1f} | {row['pct_of_floor']:.0f}% |")
            print(md[-1], flush=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in args.dtypes.split(","):
        sel = [r for r in report_rows if r["weights"] == name]
        ax.plot([r["rows"] for r in sel], [r["leapdec_ms"]["median"] for r in sel], "o-", label=f"leapdec {name}")
        ax.plot([r["rows"] for r in sel], [r["packed_ms"]["median"] for r in sel], "^-", label=f"leapdec {name} packed")
        ax.plot([r["rows"] for r in sel], [r["torch_ms"]["median"] for r in sel], "s--", label=f"F.linear {name}")
        ax.axhline(sel[0]["floor_ms"], ls=":", color="gray")
    ax.set_xlabel("rows (tokens in the step)")
    ax.set_ylabel("ms per step (all linear layers)")
    ax.set_title("one step's linear layers; dotted: weight-streaming floors")
    ax.legend()
    fig.tight_layout()
    report = dict(benchmark="linear", threads=args.threads, shape=shape, read_GBps=bandwidth / 1e9,
                  torch=torch.__version__, rows=report_rows)
    paths = write_outputs(out, "linear", "\n".join(md), report, fig)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
