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
255 registers and spills (bench/kernel_resources.py): the 128 x 128 key and value tiles are too
large. The third ("chunked": keys as 64 + 16, head dim as 64 + 32) reached 0.16 / 0.94 ms against
cuDNN's 0.12 / 0.59 on one machine. Kept here, out of
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
# two launches: dq per query block, then dk and dv over long runs of queries (one program per
# (batch, head) covering them all adds each element once); without, one launch doing both.
FORWARD_CONFIG = {"block_m": 64, "num_warps": 4, "blocks_per_program": 1, "num_stages": 3}
BACKWARD_CONFIG = {"block_m": 64, "num_warps": 4, "blocks_per_program": 1, "num_stages": 1}
KV_CONFIG: dict | None = None  # {"block_m", "num_warps", "blocks_per_program", "num_stages"}: the split backward
CHUNKED = False  # the third version's key/value tiles at (nearly) real size
SPLIT_KV = False  # chunked, with kv settings: dk and dv in two launches instead of one

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
    the one-kernel backward all four), or "[chunked [split-kv]] fwd=MxWxPxS bwd=MxWxPxS [kv=MxWxPxS]"
    (kv: dk and dv in a launch of their own, bwd then sets the dq launch; chunked: the third
    version's tiles; split-kv: dk and dv in separate launches)."""
    global KV_CONFIG, CHUNKED, SPLIT_KV
    words = settings.split()
    CHUNKED, SPLIT_KV = "chunked" in words, "split-kv" in words
    if SPLIT_KV and not CHUNKED:
        raise ValueError(f"split-kv needs the chunked kernels, got {settings!r}")
    parts = dict(part.split("=", 1) if "=" in part else ("old", part) for part in words
                 if part not in ("chunked", "split-kv"))
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


def _chunks(q: torch.Tensor, k: torch.Tensor) -> dict:
    """The chunked kernels' second key and head-dim tiles (the first ones are 64 wide)."""
    keys, head_dim = k.shape[-2], q.shape[-1]
    if not (64 < keys <= 128 and 64 < head_dim <= 128):
        raise ValueError(f"the chunked kernels take 65-128 keys and head dims, got {keys} keys, head dim {head_dim}")
    return {"block_lb": max(16, triton.next_power_of_2(keys - 64)),
            "block_db": max(16, triton.next_power_of_2(head_dim - 64))}


def _blocks(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    """Key and head-dim tile sizes: powers of two (tl.dot needs at least 16)."""
    return max(16, triton.next_power_of_2(k.shape[-2])), max(16, triton.next_power_of_2(q.shape[-1]))


if triton is not None:

    @triton.jit
    def _padded_keys_values(k, v, b, h, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, num_keys, head_dim,
                            block_l: tl.constexpr, block_d: tl.constexpr):
        # one (batch, head)'s keys and values as (block_l, block_d) tiles, zero past the real sizes
        keys = tl.arange(0, block_l)
        dims = tl.arange(0, block_d)
        key_ok, dim_ok = keys < num_keys, dims < head_dim
        k_tile = _tile(k + b * sk_b + h * sk_h, keys, sk_l, dims, key_ok, dim_ok)
        v_tile = _tile(v + b * sv_b + h * sv_h, keys, sv_l, dims, key_ok, dim_ok)
        return keys, dims, key_ok, dim_ok, k_tile, v_tile

    @triton.jit
    def _chunked_tiles(base, row_stride, keys_lo, keys_hi, dims_lo, dims_hi, all_lo, keys_hi_ok, dims_hi_ok):
        # the four (key chunk, head-dim chunk) tiles of one (batch, head)'s keys or values
        return (_tile(base, keys_lo, row_stride, dims_lo, all_lo, all_lo),
                _tile(base, keys_lo, row_stride, dims_hi, all_lo, dims_hi_ok),
                _tile(base, keys_hi, row_stride, dims_lo, keys_hi_ok, all_lo),
                _tile(base, keys_hi, row_stride, dims_hi, keys_hi_ok, dims_hi_ok))

    @triton.jit
    def _forward_kernel(q, k, v, out, lse, num_heads, num_queries, num_keys, scale_log2,
                        sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, head_dim: tl.constexpr,
                        block_m: tl.constexpr, block_l: tl.constexpr, block_d: tl.constexpr,
                        blocks_per_program: tl.constexpr):
        # q, k, v with unit stride along d; out (B, N, H * d) contiguous; lse (B, H, N) float32, log2 units
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys, dims, key_ok, dim_ok, k_tile, v_tile = _padded_keys_values(
            k, v, b, h, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, num_keys, head_dim, block_l, block_d)
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
    def _backward_kernel(q, k, v, out, grad_out, lse, grad_q, grad_k, grad_v, num_heads, num_queries, num_keys,
                         scale, scale_log2, sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sg_b, sg_n,
                         sdq_b, sdq_h, sdq_n, head_dim: tl.constexpr, block_m: tl.constexpr, block_l: tl.constexpr,
                         block_d: tl.constexpr, blocks_per_program: tl.constexpr, write_dq: tl.constexpr,
                         sum_kv: tl.constexpr):
        # out and grad_out (B, N, H * d), grad_q like q, all with unit stride along d. write_dq: dq
        # of these queries; sum_kv: their share of dk and dv, summed in registers over the blocks
        # and added once to grad_k, grad_v (B, H, L, d, float32 zeros). Both in one launch, or one
        # each in two (dq over many small programs, dk/dv over few long ones).
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys, dims, key_ok, dim_ok, k_tile, v_tile = _padded_keys_values(
            k, v, b, h, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, num_keys, head_dim, block_l, block_d)
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
            if write_dq:
                dq = tl.dot(ds, k_tile) * scale
                tl.store(grad_q + b * sdq_b + h * sdq_h + rows[:, None] * sdq_n + dims[None, :],
                         dq.to(grad_q.dtype.element_ty), mask=q_mask)
            if sum_kv:
                grad_k_sum += tl.dot(tl.trans(ds), q_tile)
                grad_v_sum += tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile)
        if sum_kv:
            kv_offsets = (bh * num_keys + keys[:, None]) * head_dim + dims[None, :]
            kv_mask = key_ok[:, None] & dim_ok[None, :]
            # relaxed: plain reductions in L2, no ordering (the default acq_rel fences every add)
            tl.atomic_add(grad_k + kv_offsets, grad_k_sum * scale, mask=kv_mask, sem="relaxed")
            tl.atomic_add(grad_v + kv_offsets, grad_v_sum, mask=kv_mask, sem="relaxed")

    # Chunked tiles (the third version): keys as 64 + LB and the head dim as 64 + DB (LB, DB the next
    # powers of two of what is left: 16 and 32 for 77 keys and head dim 88), so every key and value
    # tile is close to its real size instead of a padded 128 x 128. Needs 64 < L <= 128, 64 < d <= 128.

    @triton.jit
    def _tile(base, rows, row_stride, cols, row_ok, col_ok):
        return tl.load(base + rows[:, None] * row_stride + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                       other=0.0)

    @triton.jit
    def _pair_dot(a_lo, a_hi, b_lo, b_hi):
        # [a_lo a_hi] [b_lo b_hi]^T: a product over a head dim split in two chunks
        return tl.dot(a_lo, tl.trans(b_lo)) + tl.dot(a_hi, tl.trans(b_hi))

    @triton.jit
    def _chunked_scores(q_lo, q_hi, k_lo_lo, k_lo_hi, k_hi_lo, k_hi_hi, keys_hi_ok, scale_log2):
        # scores against the two key chunks (log2 units; padded keys at -inf)
        s_lo = _pair_dot(q_lo, q_hi, k_lo_lo, k_lo_hi) * scale_log2
        s_hi = tl.where(keys_hi_ok[None, :], _pair_dot(q_lo, q_hi, k_hi_lo, k_hi_hi) * scale_log2, float("-inf"))
        return s_lo, s_hi

    @triton.jit
    def _forward_chunked_kernel(q, k, v, out, lse, num_heads, num_queries, num_keys, scale_log2,
                                sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, head_dim: tl.constexpr,
                                block_m: tl.constexpr, block_lb: tl.constexpr, block_db: tl.constexpr,
                                blocks_per_program: tl.constexpr):
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys_lo, keys_hi = tl.arange(0, 64), 64 + tl.arange(0, block_lb)
        dims_lo, dims_hi = tl.arange(0, 64), 64 + tl.arange(0, block_db)
        all_lo = keys_lo < 64
        keys_hi_ok, dims_hi_ok = keys_hi < num_keys, dims_hi < head_dim
        k_lo_lo, k_lo_hi, k_hi_lo, k_hi_hi = _chunked_tiles(k + b * sk_b + h * sk_h, sk_l, keys_lo, keys_hi, dims_lo,
                                                            dims_hi, all_lo, keys_hi_ok, dims_hi_ok)
        v_lo_lo, v_lo_hi, v_hi_lo, v_hi_hi = _chunked_tiles(v + b * sv_b + h * sv_h, sv_l, keys_lo, keys_hi, dims_lo,
                                                            dims_hi, all_lo, keys_hi_ok, dims_hi_ok)
        for index in range(blocks_per_program):
            rows = (tl.program_id(0) * blocks_per_program + index) * block_m + tl.arange(0, block_m)
            row_ok = rows < num_queries
            q_base = q + b * sq_b + h * sq_h
            q_lo = _tile(q_base, rows, sq_n, dims_lo, row_ok, all_lo)
            q_hi = _tile(q_base, rows, sq_n, dims_hi, row_ok, dims_hi_ok)
            s_lo, s_hi = _chunked_scores(q_lo, q_hi, k_lo_lo, k_lo_hi, k_hi_lo, k_hi_hi, keys_hi_ok, scale_log2)
            row_max = tl.maximum(tl.max(s_lo, axis=1), tl.max(s_hi, axis=1))
            p_lo = tl.exp2(s_lo - row_max[:, None])
            p_hi = tl.exp2(s_hi - row_max[:, None])
            total = tl.sum(p_lo, axis=1) + tl.sum(p_hi, axis=1)
            p_lo, p_hi = p_lo.to(v_lo_lo.dtype), p_hi.to(v_lo_lo.dtype)
            o_lo = (tl.dot(p_lo, v_lo_lo) + tl.dot(p_hi, v_hi_lo)) / total[:, None]
            o_hi = (tl.dot(p_lo, v_lo_hi) + tl.dot(p_hi, v_hi_hi)) / total[:, None]
            out_rows = out + (b * num_queries + rows[:, None]) * (num_heads * head_dim) + h * head_dim
            tl.store(out_rows + dims_lo[None, :], o_lo.to(out.dtype.element_ty), mask=row_ok[:, None])
            tl.store(out_rows + dims_hi[None, :], o_hi.to(out.dtype.element_ty),
                     mask=row_ok[:, None] & dims_hi_ok[None, :])
            tl.store(lse + bh * num_queries + rows, row_max + tl.log2(total), mask=row_ok)

    @triton.jit
    def _backward_chunked_kernel(q, k, v, out, grad_out, lse, grad_q, grad_k, grad_v, num_heads, num_queries,
                                 num_keys, scale, scale_log2, sq_b, sq_h, sq_n, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                                 sg_b, sg_n, sdq_b, sdq_h, sdq_n, head_dim: tl.constexpr, block_m: tl.constexpr,
                                 block_lb: tl.constexpr, block_db: tl.constexpr, blocks_per_program: tl.constexpr,
                                 write_dq: tl.constexpr, sum_k: tl.constexpr, sum_v: tl.constexpr):
        # write_dq: dq of these queries; sum_k / sum_v: their share of dk / dv, summed in registers
        # over the blocks, then added to grad_k / grad_v (float32 zeros) once. All three in one
        # launch, or split over two or three (dq over many small programs, dk and dv over few long
        # ones, together or apart: apart, each keeps half the accumulators alive).
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        keys_lo, keys_hi = tl.arange(0, 64), 64 + tl.arange(0, block_lb)
        dims_lo, dims_hi = tl.arange(0, 64), 64 + tl.arange(0, block_db)
        all_lo = keys_lo < 64
        keys_hi_ok, dims_hi_ok = keys_hi < num_keys, dims_hi < head_dim
        k_lo_lo, k_lo_hi, k_hi_lo, k_hi_hi = _chunked_tiles(k + b * sk_b + h * sk_h, sk_l, keys_lo, keys_hi, dims_lo,
                                                            dims_hi, all_lo, keys_hi_ok, dims_hi_ok)
        v_lo_lo, v_lo_hi, v_hi_lo, v_hi_hi = _chunked_tiles(v + b * sv_b + h * sv_h, sv_l, keys_lo, keys_hi, dims_lo,
                                                            dims_hi, all_lo, keys_hi_ok, dims_hi_ok)
        dk_lo_lo = tl.zeros((64, 64), dtype=tl.float32)
        dk_lo_hi = tl.zeros((64, block_db), dtype=tl.float32)
        dk_hi_lo = tl.zeros((block_lb, 64), dtype=tl.float32)
        dk_hi_hi = tl.zeros((block_lb, block_db), dtype=tl.float32)
        dv_lo_lo = tl.zeros((64, 64), dtype=tl.float32)
        dv_lo_hi = tl.zeros((64, block_db), dtype=tl.float32)
        dv_hi_lo = tl.zeros((block_lb, 64), dtype=tl.float32)
        dv_hi_hi = tl.zeros((block_lb, block_db), dtype=tl.float32)
        for index in range(blocks_per_program):
            rows = (tl.program_id(0) * blocks_per_program + index) * block_m + tl.arange(0, block_m)
            row_ok = rows < num_queries
            q_base = q + b * sq_b + h * sq_h
            q_lo = _tile(q_base, rows, sq_n, dims_lo, row_ok, all_lo)
            q_hi = _tile(q_base, rows, sq_n, dims_hi, row_ok, dims_hi_ok)
            g_base = grad_out + b * sg_b + h * head_dim
            do_lo = _tile(g_base, rows, sg_n, dims_lo, row_ok, all_lo)
            do_hi = _tile(g_base, rows, sg_n, dims_hi, row_ok, dims_hi_ok)
            row_lse = tl.load(lse + bh * num_queries + rows, mask=row_ok, other=0.0)
            s_lo, s_hi = _chunked_scores(q_lo, q_hi, k_lo_lo, k_lo_hi, k_hi_lo, k_hi_hi, keys_hi_ok, scale_log2)
            p_lo = tl.where(row_ok[:, None], tl.exp2(s_lo - row_lse[:, None]), 0.0)
            p_hi = tl.where(row_ok[:, None], tl.exp2(s_hi - row_lse[:, None]), 0.0)
            if write_dq or sum_k:
                o_base = out + b * num_queries * num_heads * head_dim + h * head_dim
                o_lo = _tile(o_base, rows, num_heads * head_dim, dims_lo, row_ok, all_lo)
                o_hi = _tile(o_base, rows, num_heads * head_dim, dims_hi, row_ok, dims_hi_ok)
                delta = (tl.sum(o_lo.to(tl.float32) * do_lo.to(tl.float32), axis=1)
                         + tl.sum(o_hi.to(tl.float32) * do_hi.to(tl.float32), axis=1))
                ds_lo = (p_lo * (_pair_dot(do_lo, do_hi, v_lo_lo, v_lo_hi) - delta[:, None])).to(q_lo.dtype)
                ds_hi = (p_hi * (_pair_dot(do_lo, do_hi, v_hi_lo, v_hi_hi) - delta[:, None])).to(q_lo.dtype)
                if write_dq:
                    dq_base = grad_q + b * sdq_b + h * sdq_h + rows[:, None] * sdq_n
                    dq_lo = (tl.dot(ds_lo, k_lo_lo) + tl.dot(ds_hi, k_hi_lo)) * scale
                    dq_hi = (tl.dot(ds_lo, k_lo_hi) + tl.dot(ds_hi, k_hi_hi)) * scale
                    tl.store(dq_base + dims_lo[None, :], dq_lo.to(grad_q.dtype.element_ty), mask=row_ok[:, None])
                    tl.store(dq_base + dims_hi[None, :], dq_hi.to(grad_q.dtype.element_ty),
                             mask=row_ok[:, None] & dims_hi_ok[None, :])
                if sum_k:
                    ds_lo_t, ds_hi_t = tl.trans(ds_lo), tl.trans(ds_hi)
                    dk_lo_lo += tl.dot(ds_lo_t, q_lo)
                    dk_lo_hi += tl.dot(ds_lo_t, q_hi)
                    dk_hi_lo += tl.dot(ds_hi_t, q_lo)
                    dk_hi_hi += tl.dot(ds_hi_t, q_hi)
            if sum_v:
                p_lo_t, p_hi_t = tl.trans(p_lo.to(do_lo.dtype)), tl.trans(p_hi.to(do_lo.dtype))
                dv_lo_lo += tl.dot(p_lo_t, do_lo)
                dv_lo_hi += tl.dot(p_lo_t, do_hi)
                dv_hi_lo += tl.dot(p_hi_t, do_lo)
                dv_hi_hi += tl.dot(p_hi_t, do_hi)
        base = bh * num_keys * head_dim
        lo, hi = base + keys_lo[:, None] * head_dim, base + keys_hi[:, None] * head_dim
        hi_rows, hi_cols = keys_hi_ok[:, None], dims_hi_ok[None, :]
        if sum_k:
            tl.atomic_add(grad_k + lo + dims_lo[None, :], dk_lo_lo * scale, sem="relaxed")
            tl.atomic_add(grad_k + lo + dims_hi[None, :], dk_lo_hi * scale, mask=hi_cols, sem="relaxed")
            tl.atomic_add(grad_k + hi + dims_lo[None, :], dk_hi_lo * scale, mask=hi_rows, sem="relaxed")
            tl.atomic_add(grad_k + hi + dims_hi[None, :], dk_hi_hi * scale, mask=hi_rows & hi_cols, sem="relaxed")
        if sum_v:
            tl.atomic_add(grad_v + lo + dims_lo[None, :], dv_lo_lo, sem="relaxed")
            tl.atomic_add(grad_v + lo + dims_hi[None, :], dv_lo_hi, mask=hi_cols, sem="relaxed")
            tl.atomic_add(grad_v + hi + dims_lo[None, :], dv_hi_lo, mask=hi_rows, sem="relaxed")
            tl.atomic_add(grad_v + hi + dims_hi[None, :], dv_hi_hi, mask=hi_rows & hi_cols, sem="relaxed")

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
        launch = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
        arguments = (q, k, v, out, lse, heads, queries, k.shape[2], scale * math.log2(math.e),
                     *q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
        if CHUNKED:
            wrap_triton(_forward_chunked_kernel)[grid](
                *arguments, head_dim=head_dim, block_m=config["block_m"], **_chunks(q, k),
                blocks_per_program=config["blocks_per_program"], **launch)
        else:
            wrap_triton(_forward_kernel)[grid](
                *arguments, head_dim=head_dim, block_m=config["block_m"], block_l=block_l, block_d=block_d,
                blocks_per_program=config["blocks_per_program"], **launch)
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
        scale = 1.0 / math.sqrt(head_dim)
        common = (heads, queries, k.shape[2], scale, scale * math.log2(math.e),
                  *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:2])

        def grid(settings: dict) -> tuple[int, int]:
            return triton.cdiv(queries, settings["block_m"] * settings["blocks_per_program"]), batch * heads

        def launch(settings: dict) -> dict:
            return {"block_m": settings["block_m"], "blocks_per_program": settings["blocks_per_program"],
                    "num_warps": settings["num_warps"], "num_stages": settings["num_stages"]}

        arguments = (q, k, v, out, grad_out, lse, grad_q, grad_k, grad_v, *common, *grad_q.stride()[:3])
        if CHUNKED:
            kernel, tiles = wrap_triton(_backward_chunked_kernel), _chunks(q, k)

            def sums(k_: bool, v_: bool) -> dict:
                return {"sum_k": k_, "sum_v": v_}
        else:
            kernel, tiles = wrap_triton(_backward_kernel), {"block_l": block_l, "block_d": block_d}

            def sums(k_: bool, v_: bool) -> dict:
                return {"sum_kv": k_ and v_}
        kernel[grid(config)](*arguments, head_dim=head_dim, **tiles, **launch(config), write_dq=True,
                             **sums(not split, not split))
        for sum_k, sum_v in ([(True, False), (False, True)] if SPLIT_KV else [(True, True)]) if split else []:
            kernel[grid(KV_CONFIG)](*arguments, head_dim=head_dim, **tiles, **launch(KV_CONFIG), write_dq=False,
                                    **sums(sum_k, sum_v))
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)

    def _setup_context(ctx, inputs, output) -> None:
        q, k, v = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.ops.vqdiffusion_bench.short_attention_backward(grad_out, q, k, v, out, lse)

    _short_attention_forward.register_autograd(_backward, setup_context=_setup_context)
