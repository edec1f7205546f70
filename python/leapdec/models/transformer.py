"""Transformer: a Llama / Qwen2 / Qwen3 decoder with two forwards over the same weights.

* ``forward(input_ids [B, T])`` is a plain full-sequence forward with PyTorch SDPA (causal, or
  bidirectional when ``config.causal`` is False): differentiable, used for training and for
  ``logits()``.
* ``forward_paged(step, cache)`` runs flat ragged tokens against a ``PagedKVCache`` with the
  leapdec ops (``rope_append_paged_kv`` then ``paged_attention`` per layer): every decoding
  method drives the model through it with a ``StepInput``.

Parameter names are the Hugging Face ones without the ``model.`` prefix
(``layers.0.self_attn.q_proj.weight``, ``embed_tokens.weight``, ``lm_head.weight``), so a
checkpoint maps one to one (``leapdec.models.loading``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leapdec.kv_cache import AttentionPlan, PagedKVCache
from leapdec.models.config import ModelConfig
from leapdec.models.linear import FusedLinears, Linear
from leapdec.ops import paged_attention, rope_append_paged_kv
from leapdec.ops._lib import OPS as _OPS
from leapdec.models.rope import rope_cos_sin_cache

MASK_MODES = ("none", "causal", "custom")


@dataclass
class StepInput:
    """One ``forward_paged`` call: N flat tokens of one or more cache sequences.

    Rows are grouped by request in the order of ``plan`` (request b owns rows
    ``plan.qo_indptr[b]:plan.qo_indptr[b+1]``), and request b's rows are the LAST ``qo_len``
    positions of its KV sequence in the cache, so the cache must already have been grown by
    ``PagedKVCache.append`` (or the positions reserved) before the call.

    Fields:
      input_ids     [N] int32/int64 token ids (ignored where ``inputs_embeds`` is given).
      positions     [N] int logical RoPE position of each token. Usually the cache position,
                    but any value is allowed: a tree node uses ``prefix_len + depth``, a reordered
                    window keeps each token's original position. Each must be below
                    ``max(config.max_position_embeddings, plan.max_kv_len)`` (the RoPE table).
      slot_mapping  [N] int32 cache slot that receives the token's K/V (``page*page_size+offset``,
                    from ``PagedKVCache.append`` / ``writable_slots``); a slot < 0 means "do not
                    write" (e.g. a query that must not leave K/V behind).
      plan          ``AttentionPlan`` from ``PagedKVCache.plan(seqs, qo_lens)`` (``sum(qo_lens) == N``).
      mask_mode     "causal", "none" (bidirectional) or "custom"; None = the model's default
                    ("causal" for an AR model, "none" for a masked diffusion LM).
      custom_mask   bool, each request's ``[qo_len, qo_len]`` matrix row-major, concatenated
                    (``mask_mode="custom"``): row i may see new row j where true (tree ancestors,
                    Falcon blocks); the cached prefix is always visible.
      mask_indptr   [B+1] int32 offsets of the requests' matrices in ``custom_mask``.
      logits_indices  [N_sel] int rows that need logits (e.g. the last token of each prompt);
                    None = every row. Only these rows pay for the LM head.
      inputs_embeds [N, hidden] optional input embeddings replacing the token lookup.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    plan: AttentionPlan
    mask_mode: str | None = None
    custom_mask: torch.Tensor | None = None
    mask_indptr: torch.Tensor | None = None
    logits_indices: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None

    @classmethod
    def extend(cls, cache: PagedKVCache, seqs: list[int], tokens: list[list[int]],
               positions: list[list[int]] | None = None, mask_mode: str | None = None,
               custom_mask: torch.Tensor | None = None, logits: str | list[int] = "all") -> "StepInput":
        """Append ``tokens[i]`` to cache sequence ``seqs[i]`` and describe the step that runs them.

        ``positions`` default to the cache positions the tokens land on. ``logits``: "all", "last"
        (the last token of each sequence) or explicit row indices. ``custom_mask``: the requests'
        ``[qo_len, qo_len]`` matrices flattened and concatenated (``mask_indptr`` is derived).
        """
        if len(seqs) != len(tokens):
            raise ValueError(f"seqs ({len(seqs)}) and tokens ({len(tokens)}) must have the same length")
        lens = [len(t) for t in tokens]
        if positions is not None and [len(p) for p in positions] != lens:
            raise ValueError("positions must give one position per token of each sequence")
        if custom_mask is not None and custom_mask.numel() != sum(n * n for n in lens):
            raise ValueError(f"custom_mask must hold sum(qo_len^2) = {sum(n * n for n in lens)} entries "
                             f"(each sequence's [qo_len, qo_len] matrix), got {custom_mask.numel()}")
        starts = [cache.seq_len(s) for s in seqs]
        slot_mapping = cache.append(seqs, lens)          # validates seqs; all-or-nothing
        plan = cache.plan(seqs, lens)
        if positions is None:
            flat_pos = [p for st, n in zip(starts, lens) for p in range(st, st + n)]
        else:
            flat_pos = [p for row in positions for p in row]
        device = cache.device
        ids = torch.tensor([t for row in tokens for t in row], dtype=torch.long, device=device)
        pos = torch.tensor(flat_pos, dtype=torch.int32, device=device)
        mask_indptr = None
        if custom_mask is not None:
            offs = [0]
            for n in lens:
                offs.append(offs[-1] + n * n)
            mask_indptr = torch.tensor(offs, dtype=torch.int32, device=device)
            custom_mask = custom_mask.to(device=device, dtype=torch.bool).reshape(-1)
            mask_mode = mask_mode or "custom"
        if logits == "all":
            logits_indices = None
        elif logits == "last":
            ends, acc = [], 0
            for n in lens:
                acc += n
                ends.append(acc - 1)
            logits_indices = torch.tensor(ends, dtype=torch.long, device=device)
        else:
            logits_indices = torch.as_tensor(logits, dtype=torch.long, device=device)
        return cls(ids, pos, slot_mapping, plan, mask_mode, custom_mask, mask_indptr, logits_indices)


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in float32 like Hugging Face. Without
    autograd, a contiguous input runs the ``rms_norm`` op (one call instead of ~7 small ones)."""

    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def _use_op(self, x: torch.Tensor) -> bool:
        # (a device mismatch reaches the op, which names it, as torch's own norm would fail too)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        return x.dtype in _NORM_DTYPES and x.is_contiguous() and not torch.compiler.is_compiling()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_op(x):
            out = torch.empty_like(x)
            _RMS_NORM(out, x, self.weight, self.eps)
            return out
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)     # same math, one op
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual = residual + x`` and its norm: returns ``(norm, residual)``. Without autograd
        both happen in place in one ``fused_add_rms_norm`` call (x and residual are overwritten)."""
        if self._use_op(x) and residual.dtype == x.dtype and residual.is_contiguous() \
                and not (residual.requires_grad and torch.is_grad_enabled()):
            _FUSED_ADD_RMS_NORM(x, residual, self.weight, self.eps)
            return x, residual
        residual = residual + x
        return self(residual), residual


_NORM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_RMS_NORM = _OPS.rms_norm.default
_FUSED_ADD_RMS_NORM = _OPS.fused_add_rms_norm.default
_ROPE_APPEND = _OPS.rope_append_paged_kv.default
_PAGED_ATTENTION = _OPS.paged_attention.default
_SILU_AND_MUL = _OPS.silu_and_mul.default


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style RoPE of ``x [..., H, D]`` with ``cos, sin [..., 1, D/2]`` (rotate halves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        kw = dict(device=device, dtype=dtype)
        self.q_proj = Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=cfg.o_bias, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, **kw)
        else:
            self.q_norm = self.k_norm = None
        self._fused_qkv: FusedLinears | None = None

    def fuse_projections(self) -> None:
        """q, k and v as one packed weight for few-row CPU steps (``models.linear.stream_weights``)."""
        self._fused_qkv = FusedLinears([self.q_proj, self.k_proj, self.v_proj])

    def _qkv(self, x: torch.Tensor):
        """``x [..., hidden]`` -> q ``[..., H_q, D]``, k, v ``[..., H_kv, D]`` (qk-norm applied)."""
        lead = x.shape[:-1]
        fused = None if self._fused_qkv is None else self._fused_qkv(x)
        q, k, v = fused if fused is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q = q.view(*lead, self.num_heads, self.head_dim)
        k = k.view(*lead, self.num_kv_heads, self.head_dim)
        v = v.view(*lead, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x, cos, sin, attn_mask, is_causal):
        """Plain forward: ``x [B, T, hidden]``, ``cos, sin [B, T, 1, D/2]``; SDPA."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)        # [B, H, T, D]
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def forward_paged(self, x, step: StepInput, mask_mode, cos_sin, k_cache, v_cache):
        """Paged forward: ``x [N, hidden]``; RoPE + cache write, then paged attention."""
        q, k, v = self._qkv(x)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        plan = step.plan
        if q.is_cpu and _direct_args(step, mask_mode):
            # CPU kernels check every index themselves: skip the wrappers' conversions (~12 us)
            _ROPE_APPEND(q, k, v, step.positions, cos_sin, k_cache, v_cache, step.slot_mapping, True)
            out = torch.empty_like(q)
            custom = mask_mode == "custom"
            _PAGED_ATTENTION(out, None, q, k_cache, v_cache, plan.qo_indptr, plan.kv_indptr, plan.kv_indices,
                             plan.kv_last_page_len, mask_mode, step.custom_mask if custom else None,
                             step.mask_indptr if custom else None, self.head_dim ** -0.5,
                             plan.max_qo_len, plan.max_kv_len, None)
        else:
            rope_append_paged_kv(q, k, v, step.positions, cos_sin, k_cache, v_cache, step.slot_mapping)
            out = paged_attention(q, k_cache, v_cache, plan.qo_indptr, plan.kv_indptr, plan.kv_indices,
                                  plan.kv_last_page_len, mask_mode, step.custom_mask, step.mask_indptr,
                                  max_qo_len=plan.max_qo_len, max_kv_len=plan.max_kv_len)
        return self.o_proj.forward(out.view(x.shape[0], self.num_heads * self.head_dim))


def _direct_args(step: StepInput, mask_mode: str) -> bool:
    """Whether ``step`` already holds what the RoPE and attention ops take (int64 positions, int32
    slots and plan, a flat bool mask with int32 offsets): then a CPU step calls them directly."""
    plan = step.plan
    if step.positions.dtype != torch.int64 or step.slot_mapping.dtype != torch.int32 \
            or plan.max_qo_len is None or plan.max_kv_len is None:
        return False
    if not (plan.qo_indptr.dtype == plan.kv_indptr.dtype == plan.kv_indices.dtype
            == plan.kv_last_page_len.dtype == torch.int32):
        return False
    if mask_mode == "custom":
        m, mi = step.custom_mask, step.mask_indptr
        return m is not None and mi is not None and m.dtype == torch.bool and m.dim() == 1 \
            and m.is_contiguous() and mi.dtype == torch.int32
    return True


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=cfg.mlp_bias, device=device, dtype=dtype)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, **kw)
        self._fused_gate_up: FusedLinears | None = None

    def fuse_projections(self) -> None:
        """gate and up as one packed weight for few-row CPU steps (``models.linear.stream_weights``)."""
        self._fused_gate_up = FusedLinears([self.gate_proj, self.up_proj])

    def forward(self, x):
        fused = None if self._fused_gate_up is None else self._fused_gate_up.matmul(x)
        if fused is not None and self._fused_gate_up.sizes[0] == self._fused_gate_up.sizes[1]:
            h = torch.empty(*fused.shape[:-1], fused.shape[-1] // 2, dtype=fused.dtype)
            _SILU_AND_MUL(h, fused)                       # [gate | up] -> silu(gate) * up, one call
            return self.down_proj(h)
        gate, up = fused.split(self._fused_gate_up.sizes, -1) if fused is not None else \
            (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.self_attn = Attention(cfg, device, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.mlp = MLP(cfg, device, dtype)

    def forward(self, x, cos, sin, attn_mask, is_causal):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, is_causal)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_paged(self, x, step, mask_mode, cos_sin, k_cache, v_cache):
        x = x + self.self_attn.forward_paged(self.input_layernorm(x), step, mask_mode, cos_sin, k_cache, v_cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_paged_residual(self, h, residual, step, mask_mode, cos_sin, k_cache, v_cache):
        """``forward_paged`` with the residual stream kept apart (vLLM's layout): ``h`` is the
        previous sublayer's output (or the embeddings, with ``residual=None``), and each residual
        add is fused into the norm after it. Returns ``(h, residual)``; the layer's output is
        ``h + residual``. May overwrite ``h`` and ``residual`` in place."""
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm.add_forward(h, residual)
        h = self.self_attn.forward_paged(h, step, mask_mode, cos_sin, k_cache, v_cache)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp.forward(h), residual                    # no hooks on the decode hot path


class Transformer(nn.Module):
    """Llama / Qwen2 / Qwen3 decoder (RMSNorm, RoPE, GQA, SwiGLU, optional qk-norm, tied or
    untied LM head); ``config.causal=False`` makes it a bidirectional masked diffusion LM."""

    def __init__(self, config: ModelConfig, device=None, dtype=None, init_std: float | None = 0.02):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(DecoderLayer(config, device, dtype) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, **kw)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.checkpoint_dir = None        # set by load_checkpoint: where companions are looked up
        self._rope: dict = {}             # (device, rows) -> float32 cos_sin cache
        if init_std is not None and (device is None or torch.device(device).type != "meta"):
            self.reset_parameters(init_std)

    # ------------------------------------------------------------------ basics
    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Hugging Face initialisation: normal(0, std) matrices and embeddings, zero biases, unit norms."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, std, generator=generator)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif isinstance(module, RMSNorm):
                    module.weight.fill_(1.0)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def default_mask_mode(self) -> str:
        return "causal" if self.config.causal else "none"

    def cos_sin(self, num_positions: int | None = None, device=None) -> torch.Tensor:
        """The float32 RoPE table ``[rows, head_dim]`` (cos then sin) covering ``num_positions``.

        Tables are kept once built (a captured CUDA graph may hold one), growing by doubling."""
        device = torch.device(device) if device is not None else self.device
        need = max(num_positions or 0, self.config.max_position_embeddings)
        best = None
        for (dev, rows), table in self._rope.items():
            if dev == device and rows >= need:
                best = table
                break
        if best is None:
            rows = max(need, 2 * max([r for (d, r) in self._rope if d == device], default=0))
            best = rope_cos_sin_cache(rows, self.config.head_dim, self.config.rope_theta,
                                      self.config.rope_scaling).to(device)
            self._rope[(device, rows)] = best
        return best

    def new_cache(self, max_tokens: int | None = None, num_pages: int | None = None,
                  page_size: int = 16) -> PagedKVCache:
        """A ``PagedKVCache`` for this model (its layers, KV heads, head_dim, dtype and device)
        holding ``num_pages`` pages, or enough pages for ``max_tokens`` tokens."""
        if (max_tokens is None) == (num_pages is None):
            raise ValueError("give exactly one of max_tokens and num_pages")
        if num_pages is None:
            if max_tokens <= 0:
                raise ValueError(f"max_tokens must be positive, got {max_tokens}")
            num_pages = -(-max_tokens // page_size)
        c = self.config
        return PagedKVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, num_pages,
                            page_size, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ plain forward
    def _check_ids(self, input_ids: torch.Tensor, name: str = "input_ids") -> None:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an integer tensor, got {input_ids.dtype}")

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
               causal: bool | None = None) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, hidden]`` of a plain full-sequence forward.

        ``attention_mask [B, T]`` (1 = real token, 0 = padding) hides padded keys; positions
        default to the count of real tokens before each one (left padding is transparent).
        ``causal`` overrides ``config.causal``.
        """
        if inputs_embeds is None:
            self._check_ids(input_ids)
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
            x = self.embed_tokens(input_ids)
        else:
            x = inputs_embeds
        b, t = x.shape[:2]
        causal = self.config.causal if causal is None else causal
        if attention_mask is not None:
            if attention_mask.shape != (b, t):
                raise ValueError(f"attention_mask must be [B, T] = {(b, t)}, got {tuple(attention_mask.shape)}")
            attention_mask = attention_mask.to(device=x.device, dtype=torch.bool)
        if positions is None:
            rows = t                        # positions are below T: no data-dependent size (torch.compile)
            if attention_mask is None:
                positions = torch.arange(t, device=x.device).expand(b, t)
            else:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        elif positions.shape != (b, t):
            raise ValueError(f"positions must be [B, T] = {(b, t)}, got {tuple(positions.shape)}")
        elif torch.compiler.is_compiling():
            rows = self.config.max_position_embeddings
        else:
            rows = int(positions.max()) + 1 if positions.numel() else 0
        table = self.cos_sin(rows, x.device)
        cos, sin = table[positions.long()].to(x.dtype).unsqueeze(2).chunk(2, dim=-1)   # [B, T, 1, D/2]
        attn_mask, is_causal = None, causal
        if attention_mask is not None:
            allowed = attention_mask[:, None, None, :].expand(b, 1, t, t)
            if causal:
                allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            # a padded query that sees nothing attends to itself (its output is never used)
            attn_mask = allowed | torch.eye(t, dtype=torch.bool, device=x.device)
            is_causal = False
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, is_causal)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, return_hidden: bool = False,
                inputs_embeds: torch.Tensor | None = None, causal: bool | None = None):
        """Logits ``[B, T, V]`` of a plain forward (and the hidden states with ``return_hidden``)."""
        h = self.hidden(input_ids, attention_mask, positions, inputs_embeds, causal)
        logits = self.lm_head(h)
        return (logits, h) if return_hidden else logits

    @torch.no_grad()
    def logits(self, input_ids, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T] -> [B, T, V]``: one plain full-sequence forward without the cache or grad."""
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        return self.forward(input_ids.to(self.device), attention_mask)

    # ------------------------------------------------------------------ paged forward
    def forward_paged(self, step: StepInput, cache: PagedKVCache, return_hidden: bool = False):
        """Run ``step``'s N tokens over ``cache``: writes their K/V, attends per ``step.plan``.

        Returns logits ``[N_sel, V]`` of the rows in ``step.logits_indices`` (every row when
        None), and with ``return_hidden`` also the final-norm hidden states ``[N, hidden]``
        of every row.
        """
        mask_mode = step.mask_mode or self.default_mask_mode
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        kv_shape = (self.config.num_key_value_heads, self.config.head_dim)
        if len(cache.k_caches) != len(self.layers) or tuple(cache.k_caches[0].shape[2:]) != kv_shape:
            raise ValueError(f"cache has {len(cache.k_caches)} layers of {tuple(cache.k_caches[0].shape[2:])} "
                             f"(H_kv, D); the model needs {len(self.layers)} layers of {kv_shape}: "
                             f"use model.new_cache()")
        if step.inputs_embeds is not None:
            x = step.inputs_embeds.clone()            # the residual stream is updated in place
        else:
            self._check_ids(step.input_ids, "step.input_ids")
            x = self.embed_tokens(step.input_ids)
        if x.shape[0] != step.positions.shape[0] or x.shape[0] != step.slot_mapping.shape[0]:
            raise ValueError(f"step has {x.shape[0]} tokens but {step.positions.shape[0]} positions and "
                             f"{step.slot_mapping.shape[0]} slots")
        cos_sin = self.cos_sin(step.plan.max_kv_len, x.device)
        if step.positions.dtype != torch.int64:       # the op's dtype, converted once, not per layer
            step = dataclasses.replace(step, positions=step.positions.to(torch.int64))
        h, residual = x, None
        for layer, k_cache, v_cache in zip(self.layers, cache.k_caches, cache.v_caches):
            h, residual = layer.forward_paged_residual(h, residual, step, mask_mode, cos_sin, k_cache, v_cache)
        h = self.norm(h) if residual is None else self.norm.add_forward(h, residual)[0]
        sel = h if step.logits_indices is None else h.index_select(0, step.logits_indices)
        logits = self.lm_head(sel)
        return (logits, h) if return_hidden else logits
