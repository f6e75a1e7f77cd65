"""Triton kernels of the eSCN hot path (see ``escn.backend`` for what each computes).

Conventions shared by every kernel:

* tensors are contiguous: node features ``x [N, S, C]``, edge features
  ``[E, K, C]``, Wigner rows ``[E, K_full, S]`` (a kernel may read only the
  first ``K <= K_full`` rows, hence the separate ``w_edge_stride``);
* one program per (edge or node or row, channel block); the coefficient axes
  (``K``, ``S``) fit in one block, padded to a power of two >= 16 for ``tl.dot``
  (the separable layer norm, which has no products, takes all channels of a node
  in one block and its coefficients a few rows at a time);
* reductions over edges walk a node's edges in a fixed order (``order``,
  ``ptr``: the CSR form from ``escn.edges.EdgeSegments``), so results are
  deterministic and no atomics are used;
* products accumulate in fp32; ``PREC`` is ``"ieee"`` for fp32 inputs (no
  TF32 rounding, so the kernels match the torch path to fp32 precision).

(No ``from __future__ import annotations`` here: triton's interpreter needs
the ``tl.constexpr`` annotations as objects, not strings.)
"""

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, base, rows, cols, row_stride, row_mask, col_mask):
    """Load ``ptr[base + rows[:, None] * row_stride + cols[None, :]]`` (zero where masked)."""
    return tl.load(
        ptr + base + rows[:, None] * row_stride + cols[None, :],
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
    )


# --------------------------------------------------------------------------- gather_rotate
@triton.jit
def gather_rotate_fwd(
    x_ptr, w_ptr, source_ptr, target_ptr, out_ptr,
    K, S, C, w_edge_stride,
    BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``out[e, :, side*C + c] = W[e] @ x[node_side(e), :, c]`` (side 0: source, 1: target)."""
    e = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    side = tl.program_id(2)
    if side == 0:
        node = tl.load(source_ptr + e)
    else:
        node = tl.load(target_ptr + e)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    c = cb * BC + tl.arange(0, BC)
    km, sm, cm = k < K, s < S, c < C
    w = _tile(w_ptr, e * w_edge_stride, k, s, S, km, sm)
    xv = _tile(x_ptr, node * S * C, s, c, C, sm, cm)
    acc = tl.dot(w, xv, input_precision=PREC)
    out = out_ptr + e * K * 2 * C + k[:, None] * (2 * C) + side * C + c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=km[:, None] & cm[None, :])


@triton.jit
def _rotate_back_edges(
    acc, g_ptr, w_ptr, order_ptr, start, end, col0, K, S, C, w_edge_stride,
    k, s, c, km, sm, cm, PREC: tl.constexpr,
):
    """``acc += sum_{i in [start, end)} W[e_i]^T @ g[e_i, :, col0 + c]`` with ``g [E, K, 2C]``."""
    for i in range(start, end):
        e = tl.load(order_ptr + i)
        w = _tile(w_ptr, e * w_edge_stride, k, s, S, km, sm)
        g = _tile(g_ptr, e * K * 2 * C + col0, k, c, 2 * C, km, cm)
        acc += tl.dot(tl.trans(w), g, input_precision=PREC)
    return acc


@triton.jit
def gather_rotate_bwd_x(
    g_ptr, w_ptr, src_order_ptr, src_seg_ptr, tgt_order_ptr, tgt_seg_ptr, gx_ptr,
    K, S, C, w_edge_stride,
    BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``gx[n] = sum_{e: source=n} W[e]^T g[e, :, :C] + sum_{e: target=n} W[e]^T g[e, :, C:]``."""
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    c = cb * BC + tl.arange(0, BC)
    km, sm, cm = k < K, s < S, c < C
    acc = tl.zeros((BS, BC), dtype=tl.float32)
    acc = _rotate_back_edges(
        acc, g_ptr, w_ptr, src_order_ptr, tl.load(src_seg_ptr + n), tl.load(src_seg_ptr + n + 1), 0,
        K, S, C, w_edge_stride, k, s, c, km, sm, cm, PREC,
    )
    acc = _rotate_back_edges(
        acc, g_ptr, w_ptr, tgt_order_ptr, tl.load(tgt_seg_ptr + n), tl.load(tgt_seg_ptr + n + 1), C,
        K, S, C, w_edge_stride, k, s, c, km, sm, cm, PREC,
    )
    out = gx_ptr + n * S * C + s[:, None] * C + c[None, :]
    tl.store(out, acc.to(gx_ptr.dtype.element_ty), mask=sm[:, None] & cm[None, :])


@triton.jit
def gather_rotate_bwd_w(
    g_ptr, x_ptr, source_ptr, target_ptr, gw_ptr,
    K, S, C,
    BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``gw[e] = g[e, :, :C] @ x[source_e]^T + g[e, :, C:] @ x[target_e]^T`` (``[K, S]``)."""
    e = tl.program_id(0).to(tl.int64)
    src = tl.load(source_ptr + e)
    tgt = tl.load(target_ptr + e)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    km, sm = k < K, s < S
    acc = tl.zeros((BK, BS), dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        g_src = _tile(g_ptr, e * K * 2 * C, k, c, 2 * C, km, cm)
        g_tgt = _tile(g_ptr, e * K * 2 * C + C, k, c, 2 * C, km, cm)
        x_src = _tile(x_ptr, src * S * C, s, c, C, sm, cm)
        x_tgt = _tile(x_ptr, tgt * S * C, s, c, C, sm, cm)
        acc += tl.dot(g_src, tl.trans(x_src), input_precision=PREC)
        acc += tl.dot(g_tgt, tl.trans(x_tgt), input_precision=PREC)
    out = gw_ptr + e * K * S + k[:, None] * S + s[None, :]
    tl.store(out, acc.to(gw_ptr.dtype.element_ty), mask=km[:, None] & sm[None, :])


# --------------------------------------------------------------------------- rotate_scatter
@triton.jit
def _weighted_values(v_ptr, a_ptr, e, K, C, H, V, k, c, km, cm, rescale, HAS_ALPHA: tl.constexpr):
    """``rescale[k] * alpha[e, c // V] * v[e, k, c]`` in fp32 (``[BK, BC]``)."""
    v = _tile(v_ptr, e * K * C, k, c, C, km, cm).to(tl.float32) * rescale[:, None]
    if HAS_ALPHA:
        a = tl.load(a_ptr + e * H + c // V, mask=cm, other=0.0).to(tl.float32)
        v = v * a[None, :]
    return v


@triton.jit
def rotate_scatter_fwd(
    v_ptr, w_ptr, r_ptr, a_ptr, order_ptr, seg_ptr, out_ptr,
    K, S, C, H, V, w_edge_stride,
    HAS_ALPHA: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``out[n] = sum_{e: target=n} W[e, :K]^T (rescale * alpha_e * v[e])``."""
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    c = cb * BC + tl.arange(0, BC)
    km, sm, cm = k < K, s < S, c < C
    rescale = tl.load(r_ptr + k, mask=km, other=0.0).to(tl.float32)
    acc = tl.zeros((BS, BC), dtype=tl.float32)
    for i in range(tl.load(seg_ptr + n), tl.load(seg_ptr + n + 1)):
        e = tl.load(order_ptr + i)
        w = _tile(w_ptr, e * w_edge_stride, k, s, S, km, sm)
        v = _weighted_values(v_ptr, a_ptr, e, K, C, H, V, k, c, km, cm, rescale, HAS_ALPHA)
        acc += tl.dot(tl.trans(w), v.to(w.dtype), input_precision=PREC)
    out = out_ptr + n * S * C + s[:, None] * C + c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=sm[:, None] & cm[None, :])


@triton.jit
def rotate_scatter_bwd_values(
    go_ptr, v_ptr, w_ptr, r_ptr, a_ptr, target_ptr, gv_ptr, q_ptr,
    K, S, C, H, V, w_edge_stride,
    HAS_ALPHA: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """With ``P = W[e, :K] @ go[target_e]``: ``gv[e] = rescale * alpha_e * P`` and, for the
    alpha gradient, ``q[e, c] = sum_k rescale_k v[e, k, c] P[k, c]`` (summed per head outside)."""
    e = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    t = tl.load(target_ptr + e)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    c = cb * BC + tl.arange(0, BC)
    km, sm, cm = k < K, s < S, c < C
    rescale = tl.load(r_ptr + k, mask=km, other=0.0).to(tl.float32)
    w = _tile(w_ptr, e * w_edge_stride, k, s, S, km, sm)
    go = _tile(go_ptr, t * S * C, s, c, C, sm, cm)
    p = tl.dot(w, go, input_precision=PREC) * rescale[:, None]
    gv = p
    if HAS_ALPHA:
        a = tl.load(a_ptr + e * H + c // V, mask=cm, other=0.0).to(tl.float32)
        gv = p * a[None, :]
        v = _tile(v_ptr, e * K * C, k, c, C, km, cm).to(tl.float32)
        tl.store(q_ptr + e * C + c, tl.sum(v * p, axis=0), mask=cm)
    out = gv_ptr + e * K * C + k[:, None] * C + c[None, :]
    tl.store(out, gv.to(gv_ptr.dtype.element_ty), mask=km[:, None] & cm[None, :])


@triton.jit
def rotate_scatter_bwd_w(
    go_ptr, v_ptr, r_ptr, a_ptr, target_ptr, gw_ptr,
    K, S, C, H, V,
    HAS_ALPHA: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``gw[e] = (rescale * alpha_e * v[e]) @ go[target_e]^T`` (``[K, S]``)."""
    e = tl.program_id(0).to(tl.int64)
    t = tl.load(target_ptr + e)
    k = tl.arange(0, BK)
    s = tl.arange(0, BS)
    km, sm = k < K, s < S
    rescale = tl.load(r_ptr + k, mask=km, other=0.0).to(tl.float32)
    acc = tl.zeros((BK, BS), dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        go = _tile(go_ptr, t * S * C, s, c, C, sm, cm)
        v = _weighted_values(v_ptr, a_ptr, e, K, C, H, V, k, c, km, cm, rescale, HAS_ALPHA)
        acc += tl.dot(v.to(go.dtype), tl.trans(go), input_precision=PREC)
    out = gw_ptr + e * K * S + k[:, None] * S + s[None, :]
    tl.store(out, acc.to(gw_ptr.dtype.element_ty), mask=km[:, None] & sm[None, :])


# --------------------------------------------------------------------------- grid_silu
@triton.jit
def grid_silu_fwd(
    x_ptr, to_grid_ptr, from_grid_ptr, out_ptr,
    K, G, C,
    BK: tl.constexpr, BG: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``out[r] = from_grid @ silu(to_grid @ x[r])``, the grid built ``BG`` points at a time on chip."""
    r = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    k = tl.arange(0, BK)
    c = cb * BC + tl.arange(0, BC)
    km, cm = k < K, c < C
    x = _tile(x_ptr, r * K * C, k, c, C, km, cm)
    acc = tl.zeros((BK, BC), dtype=tl.float32)
    for g0 in range(0, G, BG):
        g = g0 + tl.arange(0, BG)
        gm = g < G
        to_grid = _tile(to_grid_ptr, 0, g, k, K, gm, km)  # [BG, BK]
        from_grid = _tile(from_grid_ptr, g0, k, g - g0, G, km, gm)  # [BK, BG]
        pre = tl.dot(to_grid, x, input_precision=PREC)
        act = pre * tl.sigmoid(pre)
        acc += tl.dot(from_grid, act.to(x.dtype), input_precision=PREC)
    out = out_ptr + r * K * C + k[:, None] * C + c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=km[:, None] & cm[None, :])


@triton.jit
def grid_silu_bwd(
    go_ptr, x_ptr, to_grid_ptr, from_grid_ptr, gx_ptr,
    K, G, C,
    BK: tl.constexpr, BG: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """``gx[r] = to_grid^T @ (silu'(to_grid @ x[r]) * (from_grid^T @ go[r]))``, grid recomputed."""
    r = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    k = tl.arange(0, BK)
    c = cb * BC + tl.arange(0, BC)
    km, cm = k < K, c < C
    x = _tile(x_ptr, r * K * C, k, c, C, km, cm)
    go = _tile(go_ptr, r * K * C, k, c, C, km, cm)
    acc = tl.zeros((BK, BC), dtype=tl.float32)
    for g0 in range(0, G, BG):
        g = g0 + tl.arange(0, BG)
        gm = g < G
        to_grid = _tile(to_grid_ptr, 0, g, k, K, gm, km)  # [BG, BK]
        from_grid = _tile(from_grid_ptr, g0, k, g - g0, G, km, gm)  # [BK, BG]
        pre = tl.dot(to_grid, x, input_precision=PREC)
        upstream = tl.dot(tl.trans(from_grid), go, input_precision=PREC)
        sig = tl.sigmoid(pre)
        local = upstream * (sig * (1.0 + pre * (1.0 - sig)))
        acc += tl.dot(tl.trans(to_grid), local.to(x.dtype), input_precision=PREC)
    out = gx_ptr + r * K * C + k[:, None] * C + c[None, :]
    tl.store(out, acc.to(gx_ptr.dtype.element_ty), mask=km[:, None] & cm[None, :])


# --------------------------------------------------------------------------- separable layer norm
# One program per node; all C channels in one block; the l>0 coefficients BK rows at a time.
# stats [N, 3] = (mean of l=0, its 1/std, 1/rms of l>0), kept for the backward pass.
@triton.jit
def _degree_weights(w_ptr, deg_ptr, k, km, c, cm, C):
    """``w[deg(k), c]`` for coefficient rows ``k >= 1`` (``deg_ptr``: degree - 1 per row k - 1)."""
    deg = tl.load(deg_ptr + k - 1, mask=km, other=0)
    return _tile(w_ptr, 0, deg, c, C, km, cm).to(tl.float32)


@triton.jit
def _norm_bwd_rows(go_ptr, x_ptr, w_ptr, deg_ptr, base, k0, c, cm, K, C, BK: tl.constexpr):
    """Rows ``k0 .. k0+BK`` of one node: (rows, mask, x, upstream gradient, weights), fp32."""
    k = k0 + tl.arange(0, BK)
    km = k < K
    xt = _tile(x_ptr, base, k, c, C, km, cm).to(tl.float32)
    got = _tile(go_ptr, base, k, c, C, km, cm).to(tl.float32)
    return k, km, xt, got, _degree_weights(w_ptr, deg_ptr, k, km, c, cm, C)


@triton.jit
def separable_norm_fwd(
    x_ptr, g0_ptr, b0_ptr, w_ptr, bal_ptr, deg_ptr, out_ptr, stats_ptr,
    K, C, eps,
    BK: tl.constexpr, BC: tl.constexpr,
):
    """``out[n, 0] = LayerNorm(x[n, 0])``; ``out[n, k] = x[n, k] w[deg(k)] / rms_n`` for k > 0, where
    ``rms_n^2 = sum_k bal[k] sum_c x[n, k, c]^2 / C + eps``."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BC)
    cm = c < C
    base = n * K * C
    l0 = tl.load(x_ptr + base + c, mask=cm, other=0.0).to(tl.float32)
    mean = tl.sum(l0, axis=0) / C
    d = tl.where(cm, l0 - mean, 0.0)
    inv0 = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    g0 = tl.load(g0_ptr + c, mask=cm, other=0.0).to(tl.float32)
    b0 = tl.load(b0_ptr + c, mask=cm, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + c, (d * inv0 * g0 + b0).to(out_ptr.dtype.element_ty), mask=cm)
    acc = tl.zeros((BK, BC), dtype=tl.float32)
    for k0 in range(1, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        xt = _tile(x_ptr, base, k, c, C, km, cm).to(tl.float32)
        bal = tl.load(bal_ptr + k - 1, mask=km, other=0.0).to(tl.float32)
        acc += xt * xt * bal[:, None]
    inv = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=1), axis=0) / C + eps)
    for k0 in range(1, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        xt = _tile(x_ptr, base, k, c, C, km, cm).to(tl.float32)
        wt = _degree_weights(w_ptr, deg_ptr, k, km, c, cm, C)
        out = out_ptr + base + k[:, None] * C + c[None, :]
        tl.store(out, (xt * inv * wt).to(out_ptr.dtype.element_ty), mask=km[:, None] & cm[None, :])
    tl.store(stats_ptr + n * 3, mean)
    tl.store(stats_ptr + n * 3 + 1, inv0)
    tl.store(stats_ptr + n * 3 + 2, inv)


@triton.jit
def separable_norm_bwd(
    go_ptr, x_ptr, g0_ptr, w_ptr, bal_ptr, deg_ptr, stats_ptr, gx_ptr, p_ptr,
    K, C,
    BK: tl.constexpr, BC: tl.constexpr,
):
    """``gx`` (the input gradient) and ``p = go * (normalised x before the affine weights)``,
    whose sum over nodes gives the weight gradients."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BC)
    cm = c < C
    base = n * K * C
    mean = tl.load(stats_ptr + n * 3)
    inv0 = tl.load(stats_ptr + n * 3 + 1)
    inv = tl.load(stats_ptr + n * 3 + 2)
    # l = 0: LayerNorm's input gradient
    xhat = tl.where(cm, (tl.load(x_ptr + base + c, mask=cm, other=0.0).to(tl.float32) - mean) * inv0, 0.0)
    go0 = tl.load(go_ptr + base + c, mask=cm, other=0.0).to(tl.float32)
    gxhat = go0 * tl.load(g0_ptr + c, mask=cm, other=0.0).to(tl.float32)
    a = tl.sum(gxhat, axis=0) / C
    b = tl.sum(gxhat * xhat, axis=0) / C
    tl.store(gx_ptr + base + c, (inv0 * (gxhat - a - xhat * b)).to(gx_ptr.dtype.element_ty), mask=cm)
    tl.store(p_ptr + base + c, go0 * xhat, mask=cm)
    # l > 0: out = x w inv with d inv / d x[k, c] = -inv^3 bal[k] x[k, c] / C
    acc = tl.zeros((BK, BC), dtype=tl.float32)
    for k0 in range(1, K, BK):
        k, km, xt, got, wt = _norm_bwd_rows(go_ptr, x_ptr, w_ptr, deg_ptr, base, k0, c, cm, K, C, BK)
        acc += got * xt * wt
    s = tl.sum(tl.sum(acc, axis=1), axis=0) * inv * inv * inv / C
    for k0 in range(1, K, BK):
        k, km, xt, got, wt = _norm_bwd_rows(go_ptr, x_ptr, w_ptr, deg_ptr, base, k0, c, cm, K, C, BK)
        bal = tl.load(bal_ptr + k - 1, mask=km, other=0.0).to(tl.float32)
        offs = base + k[:, None] * C + c[None, :]
        mask = km[:, None] & cm[None, :]
        tl.store(gx_ptr + offs, (got * wt * inv - s * bal[:, None] * xt).to(gx_ptr.dtype.element_ty), mask=mask)
        tl.store(p_ptr + offs, got * xt * inv, mask=mask)
