"""Triton kernels for one GRU layer and direction, and for the MinGRU linear scan.

Imported only when a CUDA tensor or ``TRITON_INTERPRET=1`` is in play (``triton.jit`` reads that variable when
this module is imported). Conventions: H is the hidden size, B the batch, T the steps; gates are in PyTorch
order (r, z, n); the input projection ``gi = W_ih x + b_ih`` for all steps is one torch matmul done before any
kernel runs; the state is carried in float32 whatever the input dtype. Kernels avoid libdevice (tanh is
``2 sigmoid(2x) - 1``), mask every load and store, and use power-of-two tiles, so they also run under the
Triton interpreter. Offsets that scale with T are computed in int64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


# ------------------------------------------------------------------------------------------ per-step kernels
# One launch per time step (two for reset_after=False), grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)). Each program
# computes a (BLOCK_B, BLOCK_H) tile of the recurrent product for the gates it needs with tl.dot over K = H in
# BLOCK_K slices, then the gate math in the epilogue. Programs of one step read the state of the previous step
# from global memory, so the state is double-buffered by the host (h_ptr in, h_out_ptr out).


@triton.jit(do_not_specialize=["t"])  # one compiled kernel for every step
def gru_step_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h_ptr,  # (B, H) float32 state entering step t, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous, row blocks r, z, n
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    len_ptr,  # (B,) int32 valid steps per sequence
    h_out_ptr,  # (B, H) float32 state leaving step t, contiguous
    y_ptr,  # (T, B, H) output, contiguous
    t,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One step of the reset_after=True GRU: r, z, n from h @ W_hh^T, then h' = n + z (h - n)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = cols < H
    acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_n = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h_tile = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        h_tile = h_tile.to(w_ptr.dtype.element_ty)
        w_off = cols[None, :] * H + ks[:, None]  # (BLOCK_K, BLOCK_H): W^T tile
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_r = tl.load(w_ptr + w_off, mask=w_mask, other=0.0)
        w_z = tl.load(w_ptr + H * H + w_off, mask=w_mask, other=0.0)
        w_n = tl.load(w_ptr + 2 * H * H + w_off, mask=w_mask, other=0.0)
        acc_r = tl.dot(h_tile, w_r, acc_r, input_precision=PRECISION)
        acc_z = tl.dot(h_tile, w_z, acc_z, input_precision=PRECISION)
        acc_n = tl.dot(h_tile, w_n, acc_n, input_precision=PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    t64 = tl.full((), t, tl.int64)
    gi = gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :]
    i_r = tl.load(gi, mask=mask, other=0.0).to(tl.float32)
    i_z = tl.load(gi + H, mask=mask, other=0.0).to(tl.float32)
    i_n = tl.load(gi + 2 * H, mask=mask, other=0.0).to(tl.float32)
    b_r = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b_z = tl.load(b_ptr + H + cols, mask=col_ok, other=0.0).to(tl.float32)
    b_n = tl.load(b_ptr + 2 * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    state = rows[:, None] * H + cols[None, :]
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    r = tl.sigmoid(i_r + acc_r + b_r[None, :])
    z = tl.sigmoid(i_z + acc_z + b_z[None, :])
    n = _tanh(i_n + r * (acc_n + b_n[None, :]))
    h_new = n + z * (h - n)
    valid = (t < tl.load(len_ptr + rows, mask=row_ok, other=0))[:, None]
    tl.store(h_out_ptr + state, tl.where(valid, h_new, h), mask=mask)
    tl.store(y_ptr + t64 * B * H + state, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["t"])  # one compiled kernel for every step
def gru_step_rz_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h_ptr,  # (B, H) float32 state entering step t, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous (rows 0..2H, the r and z blocks, are read)
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    rh_ptr,  # (B, H) float32 out: r * h, contiguous
    z_ptr,  # (B, H) float32 out: z, contiguous
    t,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """First half of a reset_after=False step: r and z from h @ W_hr^T, h @ W_hz^T; writes r * h and z."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = cols < H
    acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h_tile = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        h_tile = h_tile.to(w_ptr.dtype.element_ty)
        w_off = cols[None, :] * H + ks[:, None]  # (BLOCK_K, BLOCK_H): W^T tile
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_r = tl.load(w_ptr + w_off, mask=w_mask, other=0.0)
        w_z = tl.load(w_ptr + H * H + w_off, mask=w_mask, other=0.0)
        acc_r = tl.dot(h_tile, w_r, acc_r, input_precision=PRECISION)
        acc_z = tl.dot(h_tile, w_z, acc_z, input_precision=PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    t64 = tl.full((), t, tl.int64)
    gi = gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :]
    i_r = tl.load(gi, mask=mask, other=0.0).to(tl.float32)
    i_z = tl.load(gi + H, mask=mask, other=0.0).to(tl.float32)
    b_r = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b_z = tl.load(b_ptr + H + cols, mask=col_ok, other=0.0).to(tl.float32)
    state = rows[:, None] * H + cols[None, :]
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    r = tl.sigmoid(i_r + acc_r + b_r[None, :])
    z = tl.sigmoid(i_z + acc_z + b_z[None, :])
    tl.store(rh_ptr + state, r * h, mask=mask)
    tl.store(z_ptr + state, z, mask=mask)


@triton.jit(do_not_specialize=["t"])  # one compiled kernel for every step
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
    t,
    B,
    H,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Second half of a reset_after=False step: n = tanh(i_n + (r h) @ W_hn^T + b_hn), h' = n + z (h - n)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = cols < H
    acc_n = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        rh = tl.load(rh_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_off = cols[None, :] * H + ks[:, None]  # (BLOCK_K, BLOCK_H): W^T tile
        w_n = tl.load(w_ptr + 2 * H * H + w_off, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc_n = tl.dot(rh.to(w_ptr.dtype.element_ty), w_n, acc_n, input_precision=PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    t64 = tl.full((), t, tl.int64)
    i_n = tl.load(gi_ptr + t64 * B * 3 * H + rows[:, None] * (3 * H) + 2 * H + cols[None, :], mask=mask, other=0.0)
    b_n = tl.load(b_ptr + 2 * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    state = rows[:, None] * H + cols[None, :]
    h = tl.load(h_ptr + state, mask=mask, other=0.0)
    z = tl.load(z_ptr + state, mask=mask, other=0.0)
    n = _tanh(i_n.to(tl.float32) + acc_n + b_n[None, :])
    h_new = n + z * (h - n)
    valid = (t < tl.load(len_ptr + rows, mask=row_ok, other=0))[:, None]
    tl.store(h_out_ptr + state, tl.where(valid, h_new, h), mask=mask)
    tl.store(y_ptr + t64 * B * H + state, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------ persistent kernel
# Grid (cdiv(B, BLOCK_B),): batch rows are independent, so programs never wait for each other (no grid barrier).
# Each program loads all of W_hh^T (three (BLOCK_H, BLOCK_H) tiles, H padded to BLOCK_H) once, keeps the state
# of its BLOCK_B rows on chip and loops over the T steps inside the kernel: one launch per layer and direction.


@triton.jit
def gru_persistent_kernel(
    gi_ptr,  # (T, B, 3H) input gates W_ih x + b_ih, contiguous
    h0_ptr,  # (B, H) initial state, contiguous
    w_ptr,  # (3H, H) W_hh, contiguous, row blocks r, z, n
    b_ptr,  # (3H,) b_hh (zeros when the layer has no bias)
    len_ptr,  # (B,) int32 valid steps per sequence
    y_ptr,  # (T, B, H) output, contiguous
    hn_ptr,  # (B, H) float32 out: final state, contiguous
    T,
    B,
    H,
    reverse,
    RESET_AFTER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """All T steps of one layer and direction for BLOCK_B batch rows, W_hh held on chip (H <= BLOCK_H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    ks = tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    w_off = cols[None, :] * H + ks[:, None]  # (BLOCK_H, BLOCK_H): W^T tile
    w_mask = (ks < H)[:, None] & col_ok[None, :]
    w_r = tl.load(w_ptr + w_off, mask=w_mask, other=0.0)
    w_z = tl.load(w_ptr + H * H + w_off, mask=w_mask, other=0.0)
    w_n = tl.load(w_ptr + 2 * H * H + w_off, mask=w_mask, other=0.0)
    b_r = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    b_z = tl.load(b_ptr + H + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    b_n = tl.load(b_ptr + 2 * H + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    state = rows[:, None] * H + cols[None, :]
    gi_rows = rows[:, None] * (3 * H) + cols[None, :]
    h = tl.load(h0_ptr + state, mask=mask, other=0.0).to(tl.float32)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    for s in range(0, T):
        t = s + reverse * (T - 1 - 2 * s)
        t64 = tl.full((), t, tl.int64)
        gi = gi_ptr + t64 * B * 3 * H + gi_rows
        i_r = tl.load(gi, mask=mask, other=0.0).to(tl.float32)
        i_z = tl.load(gi + H, mask=mask, other=0.0).to(tl.float32)
        i_n = tl.load(gi + 2 * H, mask=mask, other=0.0).to(tl.float32)
        h_op = h.to(w_ptr.dtype.element_ty)
        r = tl.sigmoid(i_r + tl.dot(h_op, w_r, input_precision=PRECISION) + b_r)
        z = tl.sigmoid(i_z + tl.dot(h_op, w_z, input_precision=PRECISION) + b_z)
        if RESET_AFTER:
            n = _tanh(i_n + r * (tl.dot(h_op, w_n, input_precision=PRECISION) + b_n))
        else:
            rh = (r * h).to(w_ptr.dtype.element_ty)
            n = _tanh(i_n + tl.dot(rh, w_n, input_precision=PRECISION) + b_n)
        h_new = n + z * (h - n)
        valid = (t < length)[:, None]
        tl.store(y_ptr + t64 * B * H + state, tl.where(valid, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
        h = tl.where(valid, h_new, h)
    tl.store(hn_ptr + state, h, mask=mask)


# ------------------------------------------------------------------------------------------ MinGRU linear scan


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier step: x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def linear_scan_kernel(
    a_ptr,  # (T, B, H) view, strides (sat, sab, 1): coefficient a_t, or MinGRU's gate pre-activation k_t
    b_ptr,  # (T, B, H) view, strides (sbt, sbb, 1): input b_t, or MinGRU's candidate pre-activation
    h0_ptr,  # (B, H) float32 initial carry, contiguous
    y_ptr,  # (T, B, H) float32 out: h_t, contiguous
    T,
    B,
    H,
    sat,
    sab,
    sbt,
    sbb,
    reverse,
    FROM_GATES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """h_t = a_t h_{t-1} + b_t over t (reverse=1: from T-1 down to 0) with h_{-1} = h0, as a parallel scan over
    BLOCK_T steps at a time (tl.associative_scan) carried linearly from chunk to chunk.

    FROM_GATES: a and b are MinGRU's projections k and p: a = 1 - sigmoid(k) = sigmoid(-k), b = sigmoid(k) g(p),
    g(p) = p + 0.5 for p >= 0 else sigmoid(p). Grid (B, cdiv(H, BLOCK_N)).
    """
    batch = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    carry = tl.load(h0_ptr + batch * H + cols, mask=col_ok, other=0.0)
    steps = tl.arange(0, BLOCK_T)
    last = (steps == BLOCK_T - 1)[:, None]
    for t0 in range(0, T, BLOCK_T):
        i = t0 + steps
        i_ok = i < T
        t = (i + reverse * (T - 1 - 2 * i)).to(tl.int64)
        mask = i_ok[:, None] & col_ok[None, :]
        a = tl.load(a_ptr + t[:, None] * sat + batch * sab + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + t[:, None] * sbt + batch * sbb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if FROM_GATES:
            z = tl.sigmoid(a)
            g = tl.where(b >= 0, b + 0.5, tl.sigmoid(b))
            a = tl.sigmoid(-a)
            b = z * g
        a = tl.where(mask, a, 1.0)  # steps past T carry the last state through to the chunk's last row
        b = tl.where(mask, b, 0.0)
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
        h = a_cum * carry[None, :] + b_cum
        tl.store(y_ptr + t[:, None] * B * H + batch * H + cols[None, :], h, mask=mask)
        carry = tl.sum(tl.where(last, h, 0.0), axis=0)
