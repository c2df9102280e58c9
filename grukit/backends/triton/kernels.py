"""Triton kernels for one GRU layer and direction (forward and backward through time), and the MinGRU linear scan.

Imported only when a CUDA tensor or ``TRITON_INTERPRET=1`` is in play (``triton.jit`` reads that variable when
this module is imported). Conventions: H is the hidden size, B the batch, T the steps; gates are in PyTorch
order (r, z, n); the input projection ``gi = W_ih x + b_ih`` for all steps is one torch matmul done before any
kernel runs, and its gradients (dx, dW_ih, db_ih) are torch matmuls after the backward kernels; the state and
its gradient are carried in float32 and every dot accumulates in float32 whatever the input dtype. Kernels avoid
libdevice (tanh is ``2 sigmoid(2x) - 1``), mask every load and store, and use power-of-two tiles, so they also
run under the Triton interpreter. Offsets that scale with T are computed in int64.

Saved activations (training): ``save`` is a float32 (T, B, 5, H) buffer holding, per step, r, z, n, hx and the
state entering the step, where hx is ``W_hn h + b_hn`` for reset_after=True and ``r * h`` for reset_after=False.
Gate gradients: ``dg`` is (T, B, NG, H) in the weights' dtype, NG = 4 for reset_after=True (da_r, da_z, da_n and
da_n * r, the last being the gradient of ``W_hn h + b_hn``) and NG = 3 for reset_after=False (da_r, da_z, da_n),
where a_* are the gates' pre-activations; steps past a sequence's length hold zeros. The gradient of gi is the
first three blocks; that of W_hh h (+ b_hh) is blocks (0, 1, NG - 1).

Scalars that vary per call (``t``, ``u``, ``reverse``, ``save``) are excluded from Triton's value specialisation,
so one compiled variant serves every step and direction. T, B, H and strides are not: on a GPU Triton also builds
variants for the value 1 and for multiples of 16, which the sm_90 compile tests (generic i32) do not build.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's (BLOCK_B, BLOCK_H) tile of a (B, H) array: rows, row mask, columns, column mask, 2-D mask and
    the row-major offsets of the tile in a contiguous (B, H) array."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = cols < H
    return rows, row_ok, cols, col_ok, row_ok[:, None] & col_ok[None, :], rows[:, None] * H + cols[None, :]


@triton.jit
def _dot_acc(
    acc,
    x_ptr,
    x_stride,
    w_ptr,
    w_sk,
    w_sc,
    rows,
    row_ok,
    cols,
    col_ok,
    K,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """acc + X[rows, :K] @ M[:K, cols] in float32, with X[b, k] at ``x_ptr + b * x_stride + k`` (cast to the weights'
    dtype) and M[k, c] at ``w_ptr + k * w_sk + c * w_sc`` (w_sk = 1, w_sc = H reads W^T of a row-major (H, H) block
    of W_hh; w_sk = H, w_sc = 1 reads the block itself)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + rows[:, None] * x_stride + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * w_sk + cols[None, :] * w_sc, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(x.to(w_ptr.dtype.element_ty), w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _load_f32(ptr, mask):
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _save_base(save_ptr, t64, B, H, rows, cols):
    """Pointers to slot 0 of step t's (BLOCK_B, BLOCK_H) tile in the saved activations; slot k is at + k * H."""
    return save_ptr + t64 * B * 5 * H + rows[:, None] * (5 * H) + cols[None, :]


@triton.jit
def _saved(save_ptr, t64, B, H, rows, cols, mask):
    """The saved (r, z, n, hx, h_prev) tiles of step t (see the module docstring), float32."""
    base = _save_base(save_ptr, t64, B, H, rows, cols)
    r = tl.load(base, mask=mask, other=0.0)
    z = tl.load(base + H, mask=mask, other=0.0)
    n = tl.load(base + 2 * H, mask=mask, other=0.0)
    hx = tl.load(base + 3 * H, mask=mask, other=0.0)
    h = tl.load(base + 4 * H, mask=mask, other=0.0)
    return r, z, n, hx, h


@triton.jit
def _save_all(base, H, mask, r, z, n, hx, h):
    """Store one step's (r, z, n, hx, h_prev) tiles at ``_save_base``'s pointers."""
    tl.store(base, r, mask=mask)
    tl.store(base + H, z, mask=mask)
    tl.store(base + 2 * H, n, mask=mask)
    tl.store(base + 3 * H, hx, mask=mask)
    tl.store(base + 4 * H, h, mask=mask)


@triton.jit
def _finish_step(h, n, z, t, t64, length, state, mask, y_ptr, B, H):
    """h' = n + z (h - n); stores y_t (zeros past a sequence's length) and returns the carried state."""
    h_new = n + z * (h - n)
    valid = (t < length)[:, None]
    tl.store(y_ptr + t64 * B * H + state, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
    return tl.where(valid, h_new, h)


@triton.jit
def _gate_grads(c, dy, r, z, n, hx, h, valid, RESET_AFTER: tl.constexpr):
    """Gradients of one step's gate pre-activations (a_r, a_z, a_n; a_hn = W_hn h + b_hn for reset_after) from
    c = dL/dh_t carried back from later steps and dy = dL/dy_t, all (BLOCK_B, BLOCK_H) float32. Returns
    (g z, da_r, da_z, da_n, da_hn) with g = c + dy, zeros where the step is past the sequence's length.
    reset_after=False leaves da_r = 0: it needs d(r h) = da_n @ W_hn, a product over all of H."""
    g = tl.where(valid, c + dy, 0.0)
    da_n = g * (1.0 - z) * (1.0 - n * n)
    da_z = g * (h - n) * z * (1.0 - z)
    if RESET_AFTER:
        da_r = da_n * hx * r * (1.0 - r)
        da_hn = da_n * r
    else:
        da_r = tl.zeros_like(da_n)
        da_hn = da_n
    return g * z, da_r, da_z, da_n, da_hn


# ------------------------------------------------------------------------------------------ per-step forward
# One launch per time step (two for reset_after=False), grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)). Each program
# computes a (BLOCK_B, BLOCK_H) tile of the recurrent product for the gates it needs with tl.dot over K = H in
# BLOCK_K slices, then the gate math in the epilogue. Programs of one step read the state of the previous step
# from global memory, so the state is double-buffered by the host (h_ptr in, h_out_ptr out).


@triton.jit(do_not_specialize=["t", "save"])  # one compiled kernel for every step
def gru_step_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h_ptr,  # (B, H) float32 state entering step t, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous, row blocks r, z, n
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    len_ptr,  # (B,) int32 valid steps per sequence
    h_out_ptr,  # (B, H) float32 state leaving step t, contiguous
    y_ptr,  # (T, B, H) output, contiguous
    save_ptr,  # (T, B, 5, H) float32 saved activations, written when save != 0
    t,
    save,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One step of the reset_after=True GRU: r, z, n from h @ W_hh^T, then h' = n + z (h - n)."""
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_r = _dot_acc(zero, h_ptr, H, w_ptr, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    acc_z = _dot_acc(zero, h_ptr, H, w_ptr + H * H, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    acc_n = _dot_acc(zero, h_ptr, H, w_ptr + 2 * H * H, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    t64 = tl.full((), t, tl.int64)
    gi = gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :]
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    r = tl.sigmoid(_load_f32(gi, mask) + acc_r + _load_f32(b_ptr + cols, col_ok)[None, :])
    z = tl.sigmoid(_load_f32(gi + H, mask) + acc_z + _load_f32(b_ptr + H + cols, col_ok)[None, :])
    hn = acc_n + _load_f32(b_ptr + 2 * H + cols, col_ok)[None, :]
    n = _tanh(_load_f32(gi + 2 * H, mask) + r * hn)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    tl.store(h_out_ptr + state, _finish_step(h, n, z, t, t64, length, state, mask, y_ptr, B, H), mask=mask)
    if save != 0:
        _save_all(_save_base(save_ptr, t64, B, H, rows, cols), H, mask, r, z, n, hn, h)


@triton.jit(do_not_specialize=["t", "save"])  # one compiled kernel for every step
def gru_step_rz_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h_ptr,  # (B, H) float32 state entering step t, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous (rows 0..2H, the r and z blocks, are read)
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    rh_ptr,  # (B, H) float32 out: r * h, contiguous
    z_ptr,  # (B, H) float32 out: z, contiguous
    save_ptr,  # (T, B, 5, H) float32 saved activations (r, z, r h, h written here) when save != 0
    t,
    save,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """First half of a reset_after=False step: r and z from h @ W_hr^T, h @ W_hz^T; writes r * h and z."""
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_r = _dot_acc(zero, h_ptr, H, w_ptr, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    acc_z = _dot_acc(zero, h_ptr, H, w_ptr + H * H, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    t64 = tl.full((), t, tl.int64)
    gi = gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :]
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    r = tl.sigmoid(_load_f32(gi, mask) + acc_r + _load_f32(b_ptr + cols, col_ok)[None, :])
    z = tl.sigmoid(_load_f32(gi + H, mask) + acc_z + _load_f32(b_ptr + H + cols, col_ok)[None, :])
    tl.store(rh_ptr + state, r * h, mask=mask)
    tl.store(z_ptr + state, z, mask=mask)
    if save != 0:
        base = _save_base(save_ptr, t64, B, H, rows, cols)
        tl.store(base, r, mask=mask)
        tl.store(base + H, z, mask=mask)
        tl.store(base + 3 * H, r * h, mask=mask)
        tl.store(base + 4 * H, h, mask=mask)


@triton.jit(do_not_specialize=["t", "save"])  # one compiled kernel for every step
def gru_step_n_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h_ptr,  # (B, H) float32 state entering step t, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous (rows 2H..3H, the n block, are read)
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    rh_ptr,  # (B, H) float32 r * h from gru_step_rz_kernel, contiguous
    z_ptr,  # (B, H) float32 z from gru_step_rz_kernel, contiguous
    len_ptr,  # (B,) int32 valid steps per sequence
    h_out_ptr,  # (B, H) float32 state leaving step t, contiguous
    y_ptr,  # (T, B, H) output, contiguous
    save_ptr,  # (T, B, 5, H) float32 saved activations (n written here) when save != 0
    t,
    save,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Second half of a reset_after=False step: n = tanh(i_n + (r h) @ W_hn^T + b_hn), h' = n + z (h - n)."""
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_n = _dot_acc(zero, rh_ptr, H, w_ptr + 2 * H * H, 1, H, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    t64 = tl.full((), t, tl.int64)
    i_n = _load_f32(gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + 2 * H + cols[None, :], mask)
    n = _tanh(i_n + acc_n + _load_f32(b_ptr + 2 * H + cols, col_ok)[None, :])
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    z = tl.load(z_ptr + state, mask=mask, other=0.0)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    tl.store(h_out_ptr + state, _finish_step(h, n, z, t, t64, length, state, mask, y_ptr, B, H), mask=mask)
    if save != 0:
        tl.store(_save_base(save_ptr, t64, B, H, rows, cols) + 2 * H, n, mask=mask)


# ------------------------------------------------------------------------------------------ per-step backward
# One launch per step, plus one (reset_after=True) or two (reset_after=False) more, same grid as the forward.
# Launch k finishes step u (the step handled by launch k - 1) and starts step t (the next one back in time):
#   dL/dh_{u-1} = g_u z_u + [da_r, da_z, da_hn]_u @ W_hh   (needs every column of dg_u, written by launch k - 1),
#   then the pointwise gate gradients of step t from that carry, stored into dg_t.
# u = -1 skips the first part (carry = dL/dh_n), t = -1 the second (the carry is then dL/dh0).


@triton.jit(do_not_specialize=["u", "t"])
def gru_bwd_step_kernel(
    save_ptr,  # (T, B, 5, H) float32 saved activations
    dy_ptr,  # (T, B, H) dL/dy, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous
    len_ptr,  # (B,) int32 valid steps per sequence
    c_ptr,  # (B, H) float32 dL/dh_u (the carry entering this launch), contiguous
    p_ptr,  # (B, H) float32 d(r h)_u * r_u from gru_bwd_reset_kernel (reset_after=False only)
    c_out_ptr,  # (B, H) float32 out: dL/dh_{u-1} = dL/dh_t, contiguous
    dg_ptr,  # (T, B, NG, H) gate gradients (module docstring), dtype of W_hh
    u,
    t,
    B,
    H,
    RESET_AFTER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Finish step u (carry through W_hh) and start step t (its gate gradients); see the section comment."""
    NG: tl.constexpr = 4 if RESET_AFTER else 3
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    c = tl.load(c_ptr + state, mask=mask, other=0.0)
    if u >= 0:
        u64 = tl.full((), u, tl.int64)
        dg = dg_ptr + u64 * B * NG * H
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc = _dot_acc(acc, dg, NG * H, w_ptr, H, 1, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
        acc = _dot_acc(acc, dg + H, NG * H, w_ptr + H * H, H, 1, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
        if RESET_AFTER:
            w_n = w_ptr + 2 * H * H
            acc = _dot_acc(acc, dg + 3 * H, NG * H, w_n, H, 1, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
        else:
            acc += tl.load(p_ptr + state, mask=mask, other=0.0)
        z = tl.load(_save_base(save_ptr, u64, B, H, rows, cols) + H, mask=mask, other=0.0)
        g = c + _load_f32(dy_ptr + u64 * B * H + state, mask)
        c = tl.where((u < length)[:, None], g * z + acc, c)
    if t >= 0:
        t64 = tl.full((), t, tl.int64)
        r, z, n, hx, h = _saved(save_ptr, t64, B, H, rows, cols, mask)
        dy = _load_f32(dy_ptr + t64 * B * H + state, mask)
        _, da_r, da_z, da_n, da_hn = _gate_grads(c, dy, r, z, n, hx, h, (t < length)[:, None], RESET_AFTER)
        dg = dg_ptr + t64 * B * NG * H + rows[:, None] * (NG * H) + cols[None, :]
        out = dg_ptr.dtype.element_ty
        if RESET_AFTER:  # reset_after=False: gru_bwd_reset_kernel writes da_r
            tl.store(dg, da_r.to(out), mask=mask)
            tl.store(dg + 3 * H, da_hn.to(out), mask=mask)
        tl.store(dg + H, da_z.to(out), mask=mask)
        tl.store(dg + 2 * H, da_n.to(out), mask=mask)
    tl.store(c_out_ptr + state, c, mask=mask)


@triton.jit(do_not_specialize=["u"])
def gru_bwd_reset_kernel(
    save_ptr,  # (T, B, 5, H) float32 saved activations
    w_ptr,  # (3H, H) W_hh, contiguous (the n block is read)
    dg_ptr,  # (T, B, 3, H) gate gradients, dtype of W_hh: da_n of step u read, da_r written
    p_ptr,  # (B, H) float32 out: d(r h) * r of step u
    u,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """reset_after=False, step u: d(r h) = da_n @ W_hn; writes da_r = d(r h) h r (1 - r) and p = d(r h) r."""
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    u64 = tl.full((), u, tl.int64)
    dg = dg_ptr + u64 * B * 3 * H
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    drh = _dot_acc(zero, dg + 2 * H, 3 * H, w_ptr + 2 * H * H, H, 1, rows, row_ok, cols, col_ok, H, BLOCK_K, PRECISION)
    r, _, _, _, h = _saved(save_ptr, u64, B, H, rows, cols, mask)
    da_r = drh * h * r * (1.0 - r)
    tl.store(dg + rows[:, None] * (3 * H) + cols[None, :], da_r.to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(p_ptr + state, drh * r, mask=mask)


# ------------------------------------------------------------------------------------------ persistent kernels
# Grid (cdiv(B, BLOCK_B),): batch rows are independent, so programs never wait for each other (no grid barrier).
# Each program loads three (BLOCK_H, BLOCK_H) tiles of W_hh (H padded to BLOCK_H) once, keeps the state (or its
# gradient) of its BLOCK_B rows on chip and loops over the T steps inside the kernel: one launch per layer and
# direction. Padded rows and columns load zeros, which every gate formula maps back to zero gradients.


@triton.jit
def _weight_tiles(w_ptr, H, w_sk, w_sc, BLOCK_H: tl.constexpr):
    """The r, z, n blocks of W_hh as (BLOCK_H, BLOCK_H) tiles M[k, c] at ``k * w_sk + c * w_sc`` within a block: W^T
    (w_sk = 1, w_sc = H, for h @ W^T) or W itself (w_sk = H, w_sc = 1, for dg @ W)."""
    ks = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_H)
    off = ks[:, None] * w_sk + cols[None, :] * w_sc
    w_mask = (ks < H)[:, None] & (cols < H)[None, :]
    w_r = tl.load(w_ptr + off, mask=w_mask, other=0.0)
    w_z = tl.load(w_ptr + H * H + off, mask=w_mask, other=0.0)
    w_n = tl.load(w_ptr + 2 * H * H + off, mask=w_mask, other=0.0)
    return w_r, w_z, w_n


@triton.jit(do_not_specialize=["reverse", "save"])
def gru_persistent_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h0_ptr,  # (B, H) initial state, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous, row blocks r, z, n
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    len_ptr,  # (B,) int32 valid steps per sequence
    y_ptr,  # (T, B, H) output, contiguous
    hn_ptr,  # (B, H) float32 out: final state, contiguous
    save_ptr,  # (T, B, 5, H) float32 saved activations, written when save != 0
    T,
    B,
    H,
    reverse,
    save,
    RESET_AFTER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """All T steps of one layer and direction for BLOCK_B batch rows, W_hh held on chip (H <= BLOCK_H)."""
    rows, row_ok, cols, col_ok, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    w_r, w_z, w_n = _weight_tiles(w_ptr, H, 1, H, BLOCK_H)
    op = w_ptr.dtype.element_ty
    b_r = _load_f32(b_ptr + cols, col_ok)[None, :]
    b_z = _load_f32(b_ptr + H + cols, col_ok)[None, :]
    b_n = _load_f32(b_ptr + 2 * H + cols, col_ok)[None, :]
    gi_rows = rows[:, None] * (3 * H) + cols[None, :]
    h = _load_f32(h0_ptr + state, mask)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    for s in range(0, T):
        t = s + reverse * (T - 1 - 2 * s)
        t64 = tl.full((), t, tl.int64)
        gi = gi_ptr + t64 * B * 3 * H + gi_rows
        h_op = h.to(op)
        r = tl.sigmoid(_load_f32(gi, mask) + tl.dot(h_op, w_r, input_precision=PRECISION) + b_r)
        z = tl.sigmoid(_load_f32(gi + H, mask) + tl.dot(h_op, w_z, input_precision=PRECISION) + b_z)
        if RESET_AFTER:
            hx = tl.dot(h_op, w_n, input_precision=PRECISION) + b_n
            n = _tanh(_load_f32(gi + 2 * H, mask) + r * hx)
        else:
            hx = r * h
            n = _tanh(_load_f32(gi + 2 * H, mask) + tl.dot(hx.to(op), w_n, input_precision=PRECISION) + b_n)
        if save != 0:
            _save_all(_save_base(save_ptr, t64, B, H, rows, cols), H, mask, r, z, n, hx, h)
        h = _finish_step(h, n, z, t, t64, length, state, mask, y_ptr, B, H)
    tl.store(hn_ptr + state, h, mask=mask)


@triton.jit(do_not_specialize=["reverse"])
def gru_persistent_bwd_kernel(
    save_ptr,  # (T, B, 5, H) float32 saved activations
    dy_ptr,  # (T, B, H) dL/dy, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous
    len_ptr,  # (B,) int32 valid steps per sequence
    dhn_ptr,  # (B, H) float32 dL/dh_n, contiguous
    dg_ptr,  # (T, B, NG, H) out: gate gradients (module docstring), dtype of W_hh
    dh0_ptr,  # (B, H) float32 out: dL/dh0, contiguous
    T,
    B,
    H,
    reverse,
    RESET_AFTER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Backward through all T steps (in the opposite order to the forward's) for BLOCK_B batch rows, W_hh on chip."""
    NG: tl.constexpr = 4 if RESET_AFTER else 3
    rows, row_ok, cols, _, mask, state = _tile(B, H, BLOCK_B, BLOCK_H)
    w_r, w_z, w_n = _weight_tiles(w_ptr, H, H, 1, BLOCK_H)
    op = w_ptr.dtype.element_ty
    out = dg_ptr.dtype.element_ty
    c = _load_f32(dhn_ptr + state, mask)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    dg_rows = rows[:, None] * (NG * H) + cols[None, :]
    for s in range(0, T):
        t = T - 1 - s + reverse * (2 * s + 1 - T)  # the forward's steps, last first
        t64 = tl.full((), t, tl.int64)
        r, z, n, hx, h = _saved(save_ptr, t64, B, H, rows, cols, mask)
        dy = _load_f32(dy_ptr + t64 * B * H + state, mask)
        valid = (t < length)[:, None]
        gz, da_r, da_z, da_n, da_hn = _gate_grads(c, dy, r, z, n, hx, h, valid, RESET_AFTER)
        da_z = da_z.to(op)
        da_hn = da_hn.to(op)
        if RESET_AFTER:
            carried = gz
        else:
            drh = tl.dot(da_hn, w_n, input_precision=PRECISION)
            da_r = drh * h * r * (1.0 - r)
            carried = gz + drh * r
        da_r = da_r.to(op)
        carried += tl.dot(da_r, w_r, input_precision=PRECISION) + tl.dot(da_z, w_z, input_precision=PRECISION)
        if RESET_AFTER:
            carried += tl.dot(da_hn, w_n, input_precision=PRECISION)
        dg = dg_ptr + t64 * B * NG * H + dg_rows
        tl.store(dg, da_r.to(out), mask=mask)
        tl.store(dg + H, da_z.to(out), mask=mask)
        tl.store(dg + 2 * H, da_n.to(out), mask=mask)
        if RESET_AFTER:
            tl.store(dg + 3 * H, da_hn.to(out), mask=mask)
        c = tl.where(valid, carried, c)
    tl.store(dh0_ptr + state, c, mask=mask)


# ------------------------------------------------------------------------------------------ MinGRU linear scan
# MinGRU: h_t = a_t h_{t-1} + b_t with a = 1 - sigmoid(k) = sigmoid(-k), b = sigmoid(k) g(p), g(p) = p + 0.5 for
# p >= 0 else sigmoid(p), from the projections k and p. Grid (B, cdiv(H, BLOCK_N)); each program runs its columns
# through all T steps, BLOCK_T steps at a time as a parallel scan (tl.associative_scan), carried linearly from one
# chunk to the next.


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier step: x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_chunk(a, b, carry, mask, BLOCK_T: tl.constexpr):
    """h_i = a_i h_{i-1} + b_i over the (BLOCK_T, BLOCK_N) chunk's rows with h_{-1} = carry: (h, the last row's h).
    Masked rows (past T) carry the state through unchanged."""
    a = tl.where(mask, a, 1.0)
    b = tl.where(mask, b, 0.0)
    a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
    h = a_cum * carry[None, :] + b_cum
    last = (tl.arange(0, BLOCK_T) == BLOCK_T - 1)[:, None]
    return h, tl.sum(tl.where(last, h, 0.0), axis=0)


@triton.jit
def _mingru_gates(k, p):
    """(z, a, g) of the projections k, p."""
    return tl.sigmoid(k), tl.sigmoid(-k), tl.where(p >= 0, p + 0.5, tl.sigmoid(p))


@triton.jit
def mingru_scan_kernel(
    proj_ptr,  # (T, B, 2H) projections [k; p], strides (st, sb, 1)
    h0_ptr,  # (B, H) float32 initial state, contiguous
    y_ptr,  # (T, B, H) float32 out: h_t, contiguous
    T,
    B,
    H,
    st,
    sb,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The MinGRU forward over all T steps (section comment)."""
    batch = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    carry = tl.load(h0_ptr + batch * H + cols, mask=col_ok, other=0.0)
    for t0 in range(0, T, BLOCK_T):
        t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        mask = (t < T)[:, None] & col_ok[None, :]
        kp = proj_ptr + t[:, None] * st + batch * sb + cols[None, :]
        z, a, g = _mingru_gates(_load_f32(kp, mask), _load_f32(kp + H, mask))
        h, carry = _scan_chunk(a, z * g, carry, mask, BLOCK_T)
        tl.store(y_ptr + t[:, None] * B * H + batch * H + cols[None, :], h, mask=mask)


@triton.jit
def mingru_scan_bwd_kernel(
    proj_ptr,  # (T, B, 2H) projections [k; p], strides (st, sb, 1)
    h0_ptr,  # (B, H) float32 initial state, contiguous
    y_ptr,  # (T, B, H) float32 forward states h_t, contiguous
    dy_ptr,  # (T, B, H) float32 dL/dy, contiguous
    dhn_ptr,  # (B, H) float32 dL/dh_n, contiguous
    dproj_ptr,  # (T, B, 2H) out: dL/d[k; p], contiguous, dtype of proj
    dh0_ptr,  # (B, H) float32 out: dL/dh0, contiguous
    T,
    B,
    H,
    st,
    sb,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The MinGRU backward: dh_t = a_{t+1} dh_{t+1} + dy_t (a_T = 1, dh_T = dL/dh_n) as a reverse scan, then
    dk = dh z a (g - h_{t-1}), dp = dh z g'(p) and dL/dh0 = a_0 dh_0, all in one pass from t = T-1 down to 0."""
    batch = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    carry = tl.load(dhn_ptr + batch * H + cols, mask=col_ok, other=0.0)
    for t0 in range(0, T, BLOCK_T):
        t = (T - 1 - t0 - tl.arange(0, BLOCK_T)).to(tl.int64)  # row i of the chunk is step T-1-t0-i
        mask = (t >= 0)[:, None] & col_ok[None, :]
        state = t[:, None] * B * H + batch * H + cols[None, :]
        k_next = _load_f32(proj_ptr + (t + 1)[:, None] * st + batch * sb + cols[None, :], mask & (t + 1 < T)[:, None])
        a_next = tl.where((t + 1 < T)[:, None], tl.sigmoid(-k_next), 1.0)
        dh, carry = _scan_chunk(a_next, _load_f32(dy_ptr + state, mask), carry, mask, BLOCK_T)
        kp = proj_ptr + t[:, None] * st + batch * sb + cols[None, :]
        p = _load_f32(kp + H, mask)
        z, a, g = _mingru_gates(_load_f32(kp, mask), p)
        first = (t == 0)[:, None]
        h0 = tl.load(h0_ptr + batch * H + cols[None, :] + 0 * t[:, None], mask=mask & first, other=0.0)
        h_prev = tl.where(first, h0, _load_f32(y_ptr + state - B * H, mask & (t > 0)[:, None]))
        dg = tl.where(p >= 0, 1.0, tl.sigmoid(p) * tl.sigmoid(-p))
        out = dproj_ptr + t[:, None] * B * 2 * H + batch * 2 * H + cols[None, :]
        tl.store(out, (dh * z * a * (g - h_prev)).to(dproj_ptr.dtype.element_ty), mask=mask)
        tl.store(out + H, (dh * z * dg).to(dproj_ptr.dtype.element_ty), mask=mask)
        tl.store(dh0_ptr + batch * H + cols[None, :] + 0 * t[:, None], a * dh, mask=mask & first)
