"""After a CUDA build (no GPU needed): the extension loads, says CUDA is on, and every op of the
catalog has both a CPU and a CUDA kernel registered."""

import re
from pathlib import Path

import torch

import leapdec

info = leapdec.build_info()
print(info)
assert info["cuda"], "leapdec was built without its CUDA kernels"
catalog = (Path(__file__).resolve().parents[1] / "csrc" / "torch_bindings.cpp").read_text()
ops = sorted(set(re.findall(r'm\.def\(\s*"([A-Za-z_0-9]+)\(', catalog)))
missing = [f"{op}:{key}" for op in ops for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"leapdec::{op}", key)]
assert not missing, f"ops without a kernel: {missing}"
print(f"{len(ops)} ops, each with CPU and CUDA kernels: {', '.join(ops)}")
