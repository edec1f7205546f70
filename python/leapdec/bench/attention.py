"""Paged attention microbenchmark: ``leapdec.ops.paged_attention`` against what a user would
write instead, on the same work.

Baselines: PyTorch SDPA over contiguous K/V with a dense bool mask (the tree mask; none for
decode), and FlexAttention with a block mask (GPU only; skipped where it is unavailable).
Shapes (fp16 on GPU, float32 on CPU): decode (B=32, L=4096, one query), the same with GQA
(32 query heads / 8 KV heads), and Medusa-style tree verification (B=1 and 8, L=2048 cached
positions plus 64 tree queries with an ancestor mask, also with GQA). L is the cached context:
a decode query is the last of its L positions; tree queries are appended after the L.

Each row reports the time after warm-up over repeated calls as median [min-max] (CUDA:
triton.testing.do_bench with an L2 flush, or CUDA events; CPU: time.perf_counter), the speedup
over SDPA (medians), the memory-traffic floor (bytes moved once: K/V of every request + q + out,
over the device copy bandwidth measured in the same run), and the max abs error against SDPA.
Writes attention.md, attention.json and attention.png to --out.

    leapdec bench attention                           # full shapes on the GPU (small on CPU)
    leapdec bench attention --quick                   # small shapes, < 30 s on 2 CPU cores
    python -m leapdec.bench attention --gpu-check --json out.json   # gpu_check.sh's run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from leapdec.bench.common import Spread, add_output_arguments, pyplot, time_calls, writable_dir, writable_file, write_outputs
from leapdec.ops import paged_attention, set_index_checks


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    context: int      # L: cached positions
    queries: int      # queries per request (1 = decode, else tree nodes appended after L)
    h_q: int
    h_kv: int
    head_dim: int
    page_size: int = 16

    @property
    def kv_len(self) -> int:
        return self.context if self.queries == 1 else self.context + self.queries


GPU_SHAPES = [
    Shape("decode", 32, 4096, 1, 32, 32, 128),
    Shape("decode_gqa", 32, 4096, 1, 32, 8, 128),
    Shape("tree_b1", 1, 2048, 64, 32, 32, 128),
    Shape("tree_b8", 8, 2048, 64, 32, 32, 128),
    Shape("tree_gqa_b8", 8, 2048, 64, 32, 8, 128),
]
QUICK_SHAPES = [
    Shape("decode", 4, 512, 1, 8, 8, 64),
    Shape("decode_gqa", 4, 512, 1, 8, 2, 64),
    Shape("tree_b1", 1, 512, 16, 8, 8, 64),
    Shape("tree_gqa_b2", 2, 512, 16, 8, 2, 64),
]
# FlexAttention compiles one kernel per shape; gpu_check.sh only has time for these.
GPU_CHECK_FLEX = {"decode", "tree_b1", "tree_b8"}


def medusa_like_parents(n: int) -> list[int]:
    """Parents of an n-node tree shaped like Medusa's sparse trees: a root, then levels whose
    nodes hang off the first (most likely) nodes of the level above."""
    widths = [1, 10, 16, 14, 10, 7, 4, 2]
    fanout = [10, 6, 4, 3, 2, 2, 1, 1]
    parents, level_start, prev_start, prev_width = [], 0, 0, 0
    for level, width in enumerate(widths):
        for j in range(width):
            if len(parents) == n:
                return parents
            parents.append(-1 if level == 0 else prev_start + j % min(fanout[level - 1], prev_width))
        prev_start, prev_width = level_start, width
        level_start += width
    while len(parents) < n:  # longer trees: extend as a chain
        parents.append(len(parents) - 1)
    return parents


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """[n, n] bool: node i sees node j when j is i or one of its ancestors."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


class Problem:
    """One shape's inputs: the paged cache for leapdec and the dense tensors for the baselines."""

    def __init__(self, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        s = shape
        self.shape, self.dtype, self.device = s, dtype, device
        n_pages = math.ceil(s.kv_len / s.page_size)
        total_pages = s.batch * n_pages
        cache_shape = (total_pages, s.page_size, s.h_kv, s.head_dim)
        self.k_cache = torch.randn(cache_shape, dtype=dtype, device=device)
        self.v_cache = torch.randn(cache_shape, dtype=dtype, device=device)
        perm = torch.randperm(total_pages).to(torch.int32)  # pages in shuffled order
        self.kv_indices = perm.to(device)
        self.kv_indptr = (torch.arange(s.batch + 1, dtype=torch.int32) * n_pages).to(device)
        last = s.kv_len - (n_pages - 1) * s.page_size
        self.kv_last_page_len = torch.full((s.batch,), last, dtype=torch.int32, device=device)
        self.qo_indptr = (torch.arange(s.batch + 1, dtype=torch.int32) * s.queries).to(device)
        self.q = torch.randn(s.batch * s.queries, s.h_q, s.head_dim, dtype=dtype, device=device)

        self.tree = None
        if s.queries > 1:
            self.tree = ancestor_mask(medusa_like_parents(s.queries))
            self.custom_mask = self.tree.reshape(-1).repeat(s.batch).to(device)
            self.mask_indptr = (torch.arange(s.batch + 1, dtype=torch.int32) * s.queries ** 2).to(device)
        # Dense baselines: K/V [B, H_kv, kv_len, D] gathered once, q [B, H_q, qo, D].
        pages = perm.view(s.batch, n_pages).long().to(device)
        self.k_dense = self.k_cache[pages].reshape(s.batch, -1, s.h_kv, s.head_dim)[:, : s.kv_len].transpose(1, 2).contiguous()
        self.v_dense = self.v_cache[pages].reshape(s.batch, -1, s.h_kv, s.head_dim)[:, : s.kv_len].transpose(1, 2).contiguous()
        self.q_dense = self.q.view(s.batch, s.queries, s.h_q, s.head_dim).transpose(1, 2).contiguous()
        self.dense_mask = None
        if self.tree is not None:
            mask = torch.ones(s.queries, s.kv_len, dtype=torch.bool)
            mask[:, s.context:] = self.tree
            self.dense_mask = mask.view(1, 1, s.queries, s.kv_len).to(device)

    def bytes_moved(self) -> int:
        """Bytes every implementation must move at least once: K/V of each request, q and out."""
        s, elem = self.shape, self.q.element_size()
        return 2 * s.batch * s.kv_len * s.h_kv * s.head_dim * elem + 2 * self.q.numel() * elem

    def leapdec(self) -> torch.Tensor:
        s = self.shape
        custom = self.tree is not None
        return paged_attention(self.q, self.k_cache, self.v_cache, self.qo_indptr, self.kv_indptr,
                               self.kv_indices, self.kv_last_page_len,
                               mask_mode="custom" if custom else "causal",
                               custom_mask=self.custom_mask if custom else None,
                               mask_indptr=self.mask_indptr if custom else None,
                               max_qo_len=s.queries, max_kv_len=s.kv_len)

    def sdpa(self) -> torch.Tensor:
        s = self.shape
        k, v = self.k_dense, self.v_dense
        kwargs = {}
        if s.h_q != s.h_kv:
            if _sdpa_has_gqa():
                kwargs["enable_gqa"] = True
            else:
                k = k.repeat_interleave(s.h_q // s.h_kv, dim=1)
                v = v.repeat_interleave(s.h_q // s.h_kv, dim=1)
        out = F.scaled_dot_product_attention(self.q_dense, k, v, attn_mask=self.dense_mask, **kwargs)
        return out.transpose(1, 2).reshape(-1, s.h_q, s.head_dim)

    def flex(self):
        """A callable running compiled FlexAttention with this problem's block mask."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        s = self.shape
        block_mask = None
        if self.tree is not None:
            tree = self.tree.to(self.device).expand(s.batch, -1, -1).contiguous()
            context = s.context

            def tree_mask_mod(b, h, q_idx, kv_idx):
                node = (kv_idx - context).clamp(min=0)
                return (kv_idx < context) | tree[b, q_idx, node]

            block_mask = create_block_mask(tree_mask_mod, s.batch, None, s.queries, s.kv_len,
                                           device=self.device)
        compiled = torch.compile(flex_attention, dynamic=False)
        gqa = s.h_q != s.h_kv

        def run():
            out = compiled(self.q_dense, self.k_dense, self.v_dense, block_mask=block_mask, enable_gqa=gqa)
            return out.transpose(1, 2).reshape(-1, s.h_q, s.head_dim)

        return run


_GQA = None


def _sdpa_has_gqa() -> bool:
    global _GQA
    if _GQA is None:
        import inspect
        try:
            _GQA = "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
        except (TypeError, ValueError):
            _GQA = torch.__version__ >= "2.5"
    return _GQA


# --------------------------------------------------------------------------- timing

WARMUP, REPEATS = 2, 5   # CPU defaults (at least REPEATS timed calls, more within a time budget)


def time_spread_us(fn, device: torch.device, quick: bool, warmup: int = WARMUP, repeats: int = REPEATS) -> Spread:
    """Time of fn() in microseconds over repeated calls after warm-up: median, min, max, quartiles."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            ms = do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, return_mode="all")
            return Spread.of(ms).scaled(1e3)
        except (ImportError, TypeError, ValueError):   # no triton, or one without return_mode="all"
            return _cuda_events_us(fn, warmup=warmup, reps=max(repeats, 20 if quick else 50))
    return time_calls(fn, device, warmup=warmup, repeats=max(1, repeats), min_seconds=0.3 if quick else 2.0,
                      max_repeats=50).scaled(1e6)


def time_us(fn, device: torch.device, quick: bool) -> float:
    """Median time of fn() in microseconds."""
    return time_spread_us(fn, device, quick).median


def _cuda_events_us(fn, warmup: int, reps: int) -> Spread:
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for _ in range(max(1, warmup)):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()  # cold L2, like do_bench
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return Spread.of(times)


def copy_bandwidth(device: torch.device, quick: bool) -> float:
    """Device copy bandwidth in bytes/s (read + write), measured with this run's timer."""
    nbytes = (1 << 30) if device.type == "cuda" else (64 << 20 if quick else 256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_us(lambda: dst.copy_(src), device, quick)
    return 2 * nbytes / (t * 1e-6)


# --------------------------------------------------------------------------- main

def run(shapes, device, dtype, quick, flex_for, deadline=None, warmup=WARMUP, repeats=REPEATS):
    bandwidth = copy_bandwidth(device, quick)

    def timed(fn, key, row):
        spread = time_spread_us(fn, device, quick, warmup, repeats)
        row[f"{key}_us"] = spread.median
        row.setdefault("spread_us", {})[key] = spread.as_dict()

    rows = []
    progress = tqdm(total=len(shapes) * 3, desc="bench_attention", file=sys.stderr, leave=False)
    for shape in shapes:
        prob = Problem(shape, dtype, device)
        row = dict(asdict(shape), kv_len=shape.kv_len, dtype=str(dtype).replace("torch.", ""))
        progress.set_postfix_str(f"{shape.name}: leapdec")
        ours = prob.leapdec()
        timed(prob.leapdec, "leapdec", row)
        progress.update()
        progress.set_postfix_str(f"{shape.name}: sdpa")
        ref = prob.sdpa()
        timed(prob.sdpa, "sdpa", row)
        row["max_abs_err_vs_sdpa"] = (ours.float() - ref.float()).abs().max().item()
        progress.update()
        progress.set_postfix_str(f"{shape.name}: flex")
        row["flex_us"], row["flex_note"] = None, ""
        if device.type != "cuda":
            row["flex_note"] = "skipped on CPU"
        elif shape.name not in flex_for:
            row["flex_note"] = "skipped (time budget)"
        elif deadline is not None and time.monotonic() > deadline:
            row["flex_note"] = "skipped (time budget)"
        else:
            try:
                fn = prob.flex()
                flex_out = fn()
                timed(fn, "flex", row)
                row["flex_max_abs_err_vs_sdpa"] = (flex_out.float() - ref.float()).abs().max().item()
            except Exception as exc:  # unavailable or unsupported here: report, keep going
                row["flex_note"] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        progress.update()
        row["bytes_moved"] = prob.bytes_moved()
        row["floor_us"] = 1e6 * row["bytes_moved"] / bandwidth
        row["speedup_vs_sdpa"] = row["sdpa_us"] / row["leapdec_us"]
        row["leapdec_over_floor"] = row["leapdec_us"] / row["floor_us"]
        rows.append(row)
        del prob, ours, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    return bandwidth, rows


def format_table(rows, bandwidth, device_name, markdown: bool = False) -> str:
    head = (f"paged_attention on {device_name} (copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
            f"times in us, median [min-max] over repeats after warm-up)\n")
    cols = ["case", "B", "L", "qo", "Hq/Hkv", "D", "leapdec", "SDPA", "Flex", "vs SDPA", "floor",
            "x floor", "max|err|"]
    lines = [cols]

    def cell(r, key):
        spread = r.get("spread_us", {}).get(key)
        if spread is None:
            return "-" if r.get(f"{key}_us") is None else f"{r[f'{key}_us']:.1f}"
        return Spread(**spread).cell()

    for r in rows:
        lines.append([r["name"], str(r["batch"]), str(r["context"]), str(r["queries"]),
                      f"{r['h_q']}/{r['h_kv']}", str(r["head_dim"]), cell(r, "leapdec"),
                      cell(r, "sdpa"), cell(r, "flex"),
                      f"{r['speedup_vs_sdpa']:.2f}x", f"{r['floor_us']:.1f}",
                      f"{r['leapdec_over_floor']:.2f}", f"{r['max_abs_err_vs_sdpa']:.1e}"])
    notes = [f"  {r['name']}: Flex {r['flex_note']}" for r in rows if r["flex_note"]]
    if markdown:
        out = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
        return "\n".join(out + ([""] + [n.strip() for n in notes] if notes else []))
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    out = [head]
    for k, line in enumerate(lines):
        out.append("  ".join(x.rjust(w) for x, w in zip(line, widths)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + notes)


def plot(rows, device_name):
    """Grouped bars: median time per case for leapdec / SDPA / Flex, min-max as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.27
    for k, (key, label) in enumerate((("leapdec", "leapdec"), ("sdpa", "SDPA"), ("flex", "FlexAttention"))):
        xs, med, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            spread = r.get("spread_us", {}).get(key)
            if spread is None:
                continue
            xs.append(i + (k - 1) * width)
            med.append(spread["median"])
            lo.append(spread["median"] - spread["min"])
            hi.append(spread["max"] - spread["median"])
        if xs:
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=20)
    ax.set_ylabel("time per call (us), median, min-max bars")
    ax.set_yscale("log")
    ax.set_title(f"paged_attention on {device_name}")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run, < 30 s)")
    ap.add_argument("--gpu-check", action="store_true", help="the short full-shape run of gpu_check.sh")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--json", default=None, help="also write the JSON report to this file")
    add_output_arguments(ap, default_repeats=REPEATS, default_warmup=WARMUP)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)          # before any work: a bad --out fails now, not at the end
    if args.json:
        writable_file(args.json)

    device = torch.device(args.device)
    quick = args.quick or args.gpu_check or device.type != "cuda"  # fewer timing repetitions
    shapes = QUICK_SHAPES if args.quick else (GPU_SHAPES if device.type == "cuda" else QUICK_SHAPES)
    if args.cases:
        wanted = set(args.cases.split(","))
        shapes = [s for s in shapes if s.name in wanted]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    flex_for = set() if args.no_flex else (GPU_CHECK_FLEX if args.gpu_check else {s.name for s in shapes})
    deadline = time.monotonic() + 150 if args.gpu_check else None

    torch.manual_seed(0)
    set_index_checks(False)  # host range checks cost a sync per call; inputs here are valid
    try:
        bandwidth, rows = run(shapes, device, dtype, quick, flex_for, deadline, args.warmup, args.repeats)
    finally:
        set_index_checks(True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(format_table(rows, bandwidth, name))

    tol = 2e-2 if dtype == torch.float16 else 1e-4
    bad = [r["name"] for r in rows if not r["max_abs_err_vs_sdpa"] <= tol]
    report = dict(benchmark="attention", device=name, torch=torch.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  warmup=args.warmup, repeats=args.repeats,
                  copy_bandwidth_bytes_per_s=bandwidth, error_tolerance=tol, mismatches=bad, results=rows)
    paths = write_outputs(out, "attention", format_table(rows, bandwidth, name, markdown=True), report,
                          plot(rows, name) if rows else None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print("wrote " + ", ".join(map(str, paths)))
    if bad:
        print(f"ERROR: leapdec differs from SDPA by more than {tol} on: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
