"""Typed wrappers over ``torch.ops.leapdec.*``: they allocate outputs, convert index dtypes,
and check index values of CUDA tensors on the host (outside graph capture)."""

from leapdec.ops._lib import set_index_checks
from leapdec.ops.attention import paged_attention
from leapdec.ops.ctc import CTCPrefixScores, ctc_initial_state, ctc_prefix_score
from leapdec.ops.diffusion import topological_reorder, unmask_and_filter
from leapdec.ops.kv_cache import append_paged_kv, move_kv_slots
from leapdec.ops.linear import linear, pack_linear_weight
from leapdec.ops.norm import fused_add_rms_norm, rms_norm, silu_and_mul
from leapdec.ops.rope import rope_append_paged_kv
from leapdec.ops.tree import (TreeVerification, build_tree, verify_tree_greedy, verify_tree_sampling,
                              verify_tree_typical)

__all__ = ["append_paged_kv", "move_kv_slots", "paged_attention", "rope_append_paged_kv",
           "set_index_checks", "TreeVerification", "build_tree", "verify_tree_greedy",
           "verify_tree_sampling", "verify_tree_typical", "topological_reorder", "unmask_and_filter",
           "CTCPrefixScores", "ctc_initial_state", "ctc_prefix_score", "linear", "pack_linear_weight",
           "rms_norm", "fused_add_rms_norm", "silu_and_mul"]
