"""An experiment, measured and not adopted: attention over a short key sequence (cross-attention
to 77 text tokens) in Triton kernels.

The idea: SDPA's kernels tile the keys for long sequences, and cuDNN's cross-attention of an ITHQ
block took 0.71 ms forward + backward at batch 16 on an H100, 60% of the self-attention's time for
7.5% of its FLOPs, where reading q, o and their gradients once is ~0.1 ms. Here every key and
value of one (batch, head) fits in one tile, so a program scores a block of queries against all
keys, normalises without flash's running rescale and multiplies by the values; the backward
recomputes the probabilities from the saved log-sum-exp, writes dq for its queries and adds its
share of dk and dv with float32 atomics.

Measured (bench/RESULTS.md, "Speed, stop 12"): correct to bf16 rounding, but at batch 24 its best
settings took 0.25 ms forward (cuDNN 0.14) and 1.19 ms forward + backward (cuDNN 0.65), and the
training step went 407 -> 426 ms. The tiles pad 77 keys and head dim 88 to 128 x 128 (2.4x the
data in shared memory and registers), which leaves few programs per SM to hide the loads. The
second version (programs walking several query blocks with keys and values kept loaded; a
backward split into a dq kernel and a register-summed dk/dv kernel) matched cuDNN's forward
(0.21 vs 0.22 ms) but not its backward (1.15 vs 0.68 ms forward + backward). Every variant sits at
255 registers and spills (cuobjdump -res-usage of an sm_90 build): the 128 x 128 float32 tiles
are too large. Kept here, out of
the model, so the rows can be re-run and the kernel improved; ``bench/attention_kernels.py``
times it next to SDPA's kernels.
"""

from __future__ import annotations

import math

import torch

__all__ = ["short_attention", "short_attention_available", "configure", "MAX_KEYS", "MAX_HEAD_DIM"]

MAX_KEYS = 128  # every key of a (batch, head) sits in one tile of registers
MAX_HEAD_DIM = 128

# Launch settings, swept by bench/attention_kernels.py (--short-configs): the query block, warps,
# query blocks one program walks through (keys and values stay loaded; the backward sums its
# dk, dv share in registers over them) and pipeline stages. With "kv" settings the backward is
# two kernels: dq (and the softmax's row terms) per query block, then dk and dv per (batch,
# head) over all queries in one program, no atomics; without, one kernel adding dk, dv atomically.
FORWARD_CONFIG = {"block_m": 64, "num_warps": 4, "blocks_per_program": 1, "num_stages": 3}
BACKWARD_CONFIG = {"block_m": 64, "num_warps": 4, "blocks_per_program": 1, "num_stages": 1}
KV_CONFIG: dict | None = None  # {"block_m", "num_warps", "blocks_per_program", "num_stages"}: the split backward

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only installs: SDPA serves
    triton = None


def short_attention_available(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`short_attention` runs its kernel for q (B, H, N, d) and k (B, H, L, d)."""
    return (triton is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
            and k.dtype == q.dtype and q.dim() == 4 and k.shape[-2] <= MAX_KEYS and q.shape[-1] <= MAX_HEAD_DIM)


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with heads merged: q (B, H, N, d), k and v (B, H, L, d) with
    L <= 128 -> (B, N, H * d). The kernel on CUDA bf16/fp16 inputs, SDPA otherwise."""
    if not short_attention_available(q, k):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    out, _ = torch.ops.vqdiffusion_bench.short_attention_forward(q, k, v)
    return out


def _launch(text: str) -> dict:
    try:
        block_m, num_warps, per_program, stages = (int(part) for part in text.split("x"))
    except ValueError:
        raise ValueError(f"launch settings must be BLOCKxWARPSxBLOCKS_PER_PROGRAMxSTAGES, e.g. '64x4x1x1', "
                         f"got {text!r}") from None
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"the query block must be a power of two >= 16, got {block_m}")
    return {"block_m": block_m, "num_warps": num_warps, "blocks_per_program": per_program, "num_stages": stages}


def configure(settings: str) -> None:
    """Set the kernels' launch settings: "MxWxPxS" (the first version's form: the forward takes M and W,
    the one-kernel backward all four), or "fwd=MxWxPxS bwd=MxWxPxS [kv=MxWxPxS]" (kv: the
    two-kernel backward, bwd then sets its dq kernel)."""
    global KV_CONFIG
    parts = dict(part.split("=", 1) if "=" in part else ("old", part) for part in settings.split())
    if "old" in parts:
        launch = _launch(parts["old"])
        FORWARD_CONFIG.update(block_m=launch["block_m"], num_warps=launch["num_warps"], blocks_per_program=1)
        BACKWARD_CONFIG.update(launch)
        KV_CONFIG = None
        return
    unknown = set(parts) - {"fwd", "bwd", "kv"}
    if unknown or not {"fwd", "bwd"} <= set(parts):
        raise ValueError(f"settings need fwd= and bwd= (and optionally kv=), got {settings!r}")
    FORWARD_CONFIG.update(_launch(parts["fwd"]))
    BACKWARD_CONFIG.update(_launch(parts["bwd"]))
    KV_CONFIG = _launch(parts["kv"]) if "kv" in parts else None


def _blocks(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    """Key and head-dim tile sizes: powers of two (tl.dot needs at least 16)."""
    return max(16, triton.next_power_of_2(k.shape[-2])), max(16, triton.next_power_of_2(q.shape[-1]))


if triton is not None:

    @triton.jit
    def _forward_kernel(q, k, v, out, lse, num_heads, num_queries, num_keys, scale_log2,
                        sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, head_dim: tl.constexpr,
                        block_m: tl.constexpr, block_l: tl.constexpr, block_d: tl.constexpr,
                        blocks_per_program: tl.constexpr):
        # q, k, v with unit stride along d; out (B, N, H * d) contiguous; lse (B, H, N) float32, log2 units
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys = tl.arange(0, block_l)
        dims = tl.arange(0, block_d)
        key_ok, dim_ok = keys < num_keys, dims < head_dim
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k_tile = tl.load(k + b * sk_b + h * sk_h + keys[:, None] * sk_l + dims[None, :], mask=kv_mask, other=0.0)
        v_tile = tl.load(v + b * sv_b + h * sv_h + keys[:, None] * sv_l + dims[None, :], mask=kv_mask, other=0.0)
        for index in range(blocks_per_program):
            rows = (tl.program_id(0) * blocks_per_program + index) * block_m + tl.arange(0, block_m)
            row_ok = rows < num_queries
            q_mask = row_ok[:, None] & dim_ok[None, :]
            q_tile = tl.load(q + b * sq_b + h * sq_h + rows[:, None] * sq_n + dims[None, :], mask=q_mask, other=0.0)
            scores = tl.dot(q_tile, tl.trans(k_tile)) * scale_log2  # (M, L) float32
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
            row_max = tl.max(scores, axis=1)
            p = tl.exp2(scores - row_max[:, None])
            total = tl.sum(p, axis=1)
            o = tl.dot(p.to(v_tile.dtype), v_tile) / total[:, None]
            out_rows = out + (b * num_queries + rows[:, None]) * (num_heads * head_dim) + h * head_dim + dims[None, :]
            tl.store(out_rows, o.to(out.dtype.element_ty), mask=q_mask)
            tl.store(lse + bh * num_queries + rows, row_max + tl.log2(total), mask=row_ok)

    @triton.jit
    def _backward_kernel(q, k, v, out, grad_out, lse, delta_out, grad_q, grad_k, grad_v, num_heads, num_queries,
                         num_keys, scale, scale_log2, sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sg_b, sg_n,
                         sdq_b, sdq_h, sdq_n, head_dim: tl.constexpr, block_m: tl.constexpr, block_l: tl.constexpr,
                         block_d: tl.constexpr, blocks_per_program: tl.constexpr, accumulate_kv: tl.constexpr):
        # out and grad_out (B, N, H * d), grad_q like q, all with unit stride along d; grad_k and
        # grad_v (B, H, L, d) float32 zeros, summed into (accumulate_kv), else delta_out (B, H, N)
        # float32 gets each row's do . o for _backward_kv_kernel
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys = tl.arange(0, block_l)
        dims = tl.arange(0, block_d)
        key_ok, dim_ok = keys < num_keys, dims < head_dim
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k_tile = tl.load(k + b * sk_b + h * sk_h + keys[:, None] * sk_l + dims[None, :], mask=kv_mask, other=0.0)
        v_tile = tl.load(v + b * sv_b + h * sv_h + keys[:, None] * sv_l + dims[None, :], mask=kv_mask, other=0.0)
        grad_k_sum = tl.zeros((block_l, block_d), dtype=tl.float32)
        grad_v_sum = tl.zeros((block_l, block_d), dtype=tl.float32)
        for index in range(blocks_per_program):
            rows = (tl.program_id(0) * blocks_per_program + index) * block_m + tl.arange(0, block_m)
            row_ok = rows < num_queries
            q_mask = row_ok[:, None] & dim_ok[None, :]
            q_tile = tl.load(q + b * sq_b + h * sq_h + rows[:, None] * sq_n + dims[None, :], mask=q_mask, other=0.0)
            merged = rows[:, None] * (num_heads * head_dim) + h * head_dim + dims[None, :]
            o_tile = tl.load(out + b * num_queries * num_heads * head_dim + merged, mask=q_mask, other=0.0)
            do_tile = tl.load(grad_out + b * sg_b + rows[:, None] * sg_n + h * head_dim + dims[None, :],
                              mask=q_mask, other=0.0)
            row_lse = tl.load(lse + bh * num_queries + rows, mask=row_ok, other=0.0)
            scores = tl.dot(q_tile, tl.trans(k_tile)) * scale_log2
            p = tl.where(row_ok[:, None] & key_ok[None, :], tl.exp2(scores - row_lse[:, None]), 0.0)  # (M, L)
            # d loss / d scores = p * (do . v_l - do . o): the softmax Jacobian applied to do v^T
            delta = tl.sum(o_tile.to(tl.float32) * do_tile.to(tl.float32), axis=1)
            dp = tl.dot(do_tile, tl.trans(v_tile))
            ds = (p * (dp - delta[:, None])).to(q_tile.dtype)
            dq = tl.dot(ds, k_tile) * scale
            tl.store(grad_q + b * sdq_b + h * sdq_h + rows[:, None] * sdq_n + dims[None, :],
                     dq.to(grad_q.dtype.element_ty), mask=q_mask)
            if accumulate_kv:
                grad_k_sum += tl.dot(tl.trans(ds), q_tile)
                grad_v_sum += tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile)
            else:
                tl.store(delta_out + bh * num_queries + rows, delta, mask=row_ok)
        if accumulate_kv:
            kv_offsets = (bh * num_keys + keys[:, None]) * head_dim + dims[None, :]
            # relaxed: plain reductions in L2, no ordering (the default acq_rel fences every add)
            tl.atomic_add(grad_k + kv_offsets, grad_k_sum * scale, mask=kv_mask, sem="relaxed")
            tl.atomic_add(grad_v + kv_offsets, grad_v_sum, mask=kv_mask, sem="relaxed")

    @triton.jit
    def _backward_kv_kernel(q, k, v, grad_out, lse, delta, grad_k, grad_v, num_heads, num_queries, num_keys,
                            scale, scale_log2, sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sg_b, sg_n,
                            head_dim: tl.constexpr, block_m: tl.constexpr, block_l: tl.constexpr,
                            block_d: tl.constexpr, blocks_per_program: tl.constexpr):
        # dk and dv of one (batch, head) over blocks_per_program query blocks, summed in registers;
        # grad_k, grad_v (B, H, L, d) float32 zeros (one program per (b, h) when its blocks cover
        # every query: then each element gets exactly one add, and the result is deterministic)
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys = tl.arange(0, block_l)
        dims = tl.arange(0, block_d)
        key_ok, dim_ok = keys < num_keys, dims < head_dim
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k_tile = tl.load(k + b * sk_b + h * sk_h + keys[:, None] * sk_l + dims[None, :], mask=kv_mask, other=0.0)
        v_tile = tl.load(v + b * sv_b + h * sv_h + keys[:, None] * sv_l + dims[None, :], mask=kv_mask, other=0.0)
        grad_k_sum = tl.zeros((block_l, block_d), dtype=tl.float32)
        grad_v_sum = tl.zeros((block_l, block_d), dtype=tl.float32)
        for index in range(blocks_per_program):
            rows = (tl.program_id(0) * blocks_per_program + index) * block_m + tl.arange(0, block_m)
            row_ok = rows < num_queries
            q_mask = row_ok[:, None] & dim_ok[None, :]
            q_tile = tl.load(q + b * sq_b + h * sq_h + rows[:, None] * sq_n + dims[None, :], mask=q_mask, other=0.0)
            do_tile = tl.load(grad_out + b * sg_b + rows[:, None] * sg_n + h * head_dim + dims[None, :],
                              mask=q_mask, other=0.0)
            row_lse = tl.load(lse + bh * num_queries + rows, mask=row_ok, other=0.0)
            row_delta = tl.load(delta + bh * num_queries + rows, mask=row_ok, other=0.0)
            scores = tl.dot(q_tile, tl.trans(k_tile)) * scale_log2
            p = tl.where(row_ok[:, None] & key_ok[None, :], tl.exp2(scores - row_lse[:, None]), 0.0)
            dp = tl.dot(do_tile, tl.trans(v_tile))
            ds = (p * (dp - row_delta[:, None])).to(q_tile.dtype)
            grad_k_sum += tl.dot(tl.trans(ds), q_tile)
            grad_v_sum += tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile)
        kv_offsets = (bh * num_keys + keys[:, None]) * head_dim + dims[None, :]
        tl.atomic_add(grad_k + kv_offsets, grad_k_sum * scale, mask=kv_mask, sem="relaxed")
        tl.atomic_add(grad_v + kv_offsets, grad_v_sum, mask=kv_mask, sem="relaxed")

    def _unit_stride(t: torch.Tensor) -> torch.Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    @triton_op("vqdiffusion_bench::short_attention_forward", mutates_args=())
    def _short_attention_forward(q: torch.Tensor, k: torch.Tensor,
                                 v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, N, d), k, v (B, H, L, d) -> out (B, N, H * d), log2-sum-exp (B, H, N) float32."""
        q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
        batch, heads, queries, head_dim = q.shape
        out = torch.empty(batch, queries, heads * head_dim, device=q.device, dtype=q.dtype)
        lse = torch.empty(batch, heads, queries, device=q.device, dtype=torch.float32)
        block_l, block_d = _blocks(q, k)
        config = FORWARD_CONFIG
        scale = 1.0 / math.sqrt(head_dim)
        grid = (triton.cdiv(queries, config["block_m"] * config["blocks_per_program"]), batch * heads)
        wrap_triton(_forward_kernel)[grid](
            q, k, v, out, lse, heads, queries, k.shape[2], scale * math.log2(math.e),
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], head_dim=head_dim, block_m=config["block_m"],
            block_l=block_l, block_d=block_d, blocks_per_program=config["blocks_per_program"],
            num_warps=config["num_warps"], num_stages=config["num_stages"])
        return out, lse

    @triton_op("vqdiffusion_bench::short_attention_backward", mutates_args=())
    def _short_attention_backward(
        grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of q, k, v (their shapes; dk and dv contiguous) from grad_out (B, N, H * d)."""
        q, k, v, grad_out = _unit_stride(q), _unit_stride(k), _unit_stride(v), _unit_stride(grad_out)
        batch, heads, queries, head_dim = q.shape
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        grad_v = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        block_l, block_d = _blocks(q, k)
        config, split = BACKWARD_CONFIG, KV_CONFIG is not None
        delta = torch.empty(lse.shape, device=q.device, dtype=torch.float32) if split else lse  # unused: lse
        scale = 1.0 / math.sqrt(head_dim)
        common = (heads, queries, k.shape[2], scale, scale * math.log2(math.e),
                  *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:2])
        grid = (triton.cdiv(queries, config["block_m"] * config["blocks_per_program"]), batch * heads)
        wrap_triton(_backward_kernel)[grid](
            q, k, v, out, grad_out, lse, delta, grad_q, grad_k, grad_v, *common, *grad_q.stride()[:3],
            head_dim=head_dim, block_m=config["block_m"], block_l=block_l, block_d=block_d,
            blocks_per_program=config["blocks_per_program"], accumulate_kv=not split,
            num_warps=config["num_warps"], num_stages=config["num_stages"])
        if split:
            config = KV_CONFIG
            grid = (triton.cdiv(queries, config["block_m"] * config["blocks_per_program"]), batch * heads)
            wrap_triton(_backward_kv_kernel)[grid](
                q, k, v, grad_out, lse, delta, grad_k, grad_v, *common, head_dim=head_dim,
                block_m=config["block_m"], block_l=block_l, block_d=block_d,
                blocks_per_program=config["blocks_per_program"], num_warps=config["num_warps"],
                num_stages=config["num_stages"])
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)

    def _setup_context(ctx, inputs, output) -> None:
        q, k, v = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.ops.vqdiffusion_bench.short_attention_backward(grad_out, q, k, v, out, lse)

    _short_attention_forward.register_autograd(_backward, setup_context=_setup_context)
