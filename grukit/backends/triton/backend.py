"""``TritonBackend``: the Triton kernels behind the backend contract, with autograd.

Serves CUDA tensors, and CPU tensors when ``TRITON_INTERPRET=1`` is set and ``GRUKIT_BACKEND=triton`` forces it (the
Triton interpreter, a thousand times slower than the CPU backends: for tests only, never picked unforced), in
float32, float16 and bfloat16 (bfloat16 runs in float32 under the interpreter, whose bf16 ``tl.dot`` is wrong),
both equation forms, forward or reverse, with or without biases and ``lengths``, in training and eval, with
gradients for x, h0 and every weight. MinGRU runs as a linear-space parallel scan (forward and backward in
Triton). Declines, with a reason: layer_norm, zoneout, recurrent dropout, float64, other devices, autocast and
``torch.compile`` tracing.

Forward: the input projection for all steps is one torch matmul; the recurrence runs in the persistent kernel
(small H: one launch, W_hh on chip) or the per-step kernel (one launch per step), see ``configs``. In training the
forward also saves each step's gates, ``W_hn h + b_hn`` (or ``r h``) and entering state in float32.

Backward through time in Triton, on the same path as the forward: the persistent backward kernel (one launch, W_hh
on chip), or one fused launch per step (two for reset_after=False) that carries dL/dh through W_hh and writes the
gate gradients. dW_hh and db_hh are then batched torch matmuls / sums over all T * B rows; dx, dW_ih and db_ih
come from torch's autograd of the input projection.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from grukit.backends import dispatch
from grukit.backends.contract import NO_MASKS, GRUConfig, GRUMasks, GRUWeights, MinGRUWeights
from grukit.backends.triton import configs
from grukit.backends.triton.configs import KernelConfig

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for the Triton interpreter (CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


_kernels: ModuleType | None = None


def _load_kernels() -> ModuleType:
    global _kernels
    if _kernels is None:
        try:
            import triton  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                f"the triton package is not installed ({err}); install it with `pip install triton==3.7.1` "
                "(or the grukit[gpu] extra)"
            ) from err
        from grukit.backends.triton import kernels

        _kernels = kernels
    return _kernels


def _launch(config: KernelConfig, grid: tuple[int, ...], *args: object) -> None:
    kernel = getattr(_load_kernels(), config.kernel)
    kernel[grid](*args, **config.consts, num_warps=config.num_warps)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------------ GRU


def _lengths(lengths: Tensor | None, steps: int, batch: int, device: torch.device) -> Tensor:
    """(B,) int32 valid steps per sequence (all T when lengths is None)."""
    if lengths is None:
        return torch.full((batch,), steps, device=device, dtype=torch.int32)
    return lengths.to(device=device, dtype=torch.int32).contiguous()


def gru_forward(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    lens: Tensor,
    reset_after: bool,
    reverse: bool,
    path: str,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The Triton forward recurrence without autograd. gi: (T, B, 3H) = W_ih x + b_ih, h0: (B, H), w_hh: (3H, H),
    b_hh: (3H,) or None, lens: (B,) int32 -> (y: (T, B, H) in gi's dtype, h_n: (B, H) float32, saved: (T, B, 5, H)
    float32 activations for ``gru_backward`` when ``save``, else None)."""
    steps, batch, hidden = gi.shape[0], gi.shape[1], h0.shape[-1]
    y = gi.new_empty(steps, batch, hidden)
    saved = torch.empty(steps, batch, 5, hidden, device=gi.device, dtype=torch.float32) if save else None
    if steps == 0 or batch == 0 or hidden == 0:
        return y.zero_(), h0.float().clone(), saved
    gi = gi.contiguous()
    w = w_hh.contiguous()
    b = torch.zeros(3 * hidden, device=gi.device, dtype=w.dtype) if b_hh is None else b_hh.to(w.dtype).contiguous()
    save_buf = saved if save else torch.empty(1, device=gi.device, dtype=torch.float32)
    if path == "persistent":
        config = configs.persistent_config(gi.dtype, hidden, reset_after)
        h_n = torch.empty(batch, hidden, device=gi.device, dtype=torch.float32)
        grid = (_cdiv(batch, configs.PERSISTENT_BLOCK_B),)
        args = (gi, h0.contiguous(), w, b, lens, y, h_n, save_buf, steps, batch, hidden, int(reverse), int(save))
        _launch(config, grid, *args)
        return y, h_n, saved
    kernels = configs.step_configs(gi.dtype, batch, reset_after)
    consts = kernels[0].consts
    grid = (_cdiv(batch, consts["BLOCK_B"]), _cdiv(hidden, consts["BLOCK_H"]))
    h = h0.to(torch.float32).contiguous().clone()  # (B, H) float32 state, double-buffered with h_out
    h_out = torch.empty_like(h)
    if not reset_after:
        rh, z = torch.empty_like(h), torch.empty_like(h)  # (B, H) float32 scratch between the two launches
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        if reset_after:
            _launch(kernels[0], grid, gi, h, w, b, lens, h_out, y, save_buf, t, int(save), batch, hidden)
        else:
            _launch(kernels[0], grid, gi, h, w, b, rh, z, save_buf, t, int(save), batch, hidden)
            _launch(kernels[1], grid, gi, h, w, b, rh, z, lens, h_out, y, save_buf, t, int(save), batch, hidden)
        h, h_out = h_out, h
    return y, h, saved


def gru_backward(
    saved: Tensor,
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    lens: Tensor,
    reset_after: bool,
    reverse: bool,
    path: str,
) -> tuple[Tensor, Tensor]:
    """The Triton backward recurrence. saved: (T, B, 5, H) from ``gru_forward``, dy: (T, B, H), dh_n: (B, H),
    w_hh: (3H, H), lens: (B,) int32 -> (dg: (T, B, NG, H) gate gradients in w_hh's dtype, NG = 4 for reset_after
    else 3 (see ``kernels``), dh0: (B, H) float32)."""
    steps, batch, _, hidden = saved.shape
    blocks = 4 if reset_after else 3
    dg = torch.empty(steps, batch, blocks, hidden, device=saved.device, dtype=w_hh.dtype)
    c = dh_n.to(torch.float32).contiguous().clone()
    if steps == 0 or batch == 0 or hidden == 0:
        return dg.zero_(), c
    w = w_hh.contiguous()
    dy = dy.contiguous()
    if path == "persistent":
        config = configs.persistent_bwd_config(w.dtype, hidden, reset_after)
        dh0 = torch.empty_like(c)
        grid = (_cdiv(batch, configs.PERSISTENT_BLOCK_B),)
        _launch(config, grid, saved, dy, w, lens, c, dg, dh0, steps, batch, hidden, int(reverse))
        return dg, dh0
    step, reset = configs.bwd_step_configs(w.dtype, batch, reset_after)
    consts = step.consts
    grid = (_cdiv(batch, consts["BLOCK_B"]), _cdiv(hidden, consts["BLOCK_H"]))
    c_out = torch.empty_like(c)
    p = torch.empty_like(c)  # (B, H) float32 scratch of reset_after=False between the two launches of a step
    order = list(range(steps)) if reverse else list(range(steps - 1, -1, -1))  # the forward's steps, last first
    for u, t in zip([-1, *order], [*order, -1], strict=True):
        if u >= 0 and reset is not None:
            _launch(reset, grid, saved, w, dg, p, u, batch, hidden)
        _launch(step, grid, saved, dy, w, lens, c, p, c_out, dg, u, t, batch, hidden)
        c, c_out = c_out, c
    return dg, c


class _GRUFunction(torch.autograd.Function):
    """The recurrence of one GRU layer and direction, forward and backward in Triton.

    gi: (T, B, 3H) = W_ih x + b_ih (its own gradients are torch's), h0: (B, H), w_hh: (3H, H), b_hh: (3H,) or None,
    lens: (B,) int32 -> (y: (T, B, H), h_n: (B, H)) in gi's dtype. The forward saves (T, B, 5, H) float32
    activations; the backward kernels produce the gate gradients dg and dL/dh0, and dW_hh, db_hh are batched torch
    matmuls / sums over the T * B rows of dg.
    """

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lens, config, path):
        y, h_n, saved = gru_forward(gi, h0, w_hh, b_hh, lens, config.reset_after, config.reverse, path, save=True)
        ctx.save_for_backward(saved, w_hh, lens)
        ctx.config, ctx.path, ctx.has_bias = config, path, b_hh is not None
        return y, h_n.to(gi.dtype)

    @staticmethod
    def backward(ctx, dy, dh_n):
        if torch.is_grad_enabled():  # create_graph=True: the kernels' backward has no derivative of its own
            raise RuntimeError(
                "the Triton GRU backward is not differentiable (create_graph=True, higher-order gradients); "
                f"use {dispatch.ENV_VAR}=reference for those"
            )
        saved, w_hh, lens = ctx.saved_tensors
        steps, batch, _, hidden = saved.shape
        reset_after = ctx.config.reset_after
        dy = torch.zeros(steps, batch, hidden, device=saved.device, dtype=w_hh.dtype) if dy is None else dy
        dh_n = torch.zeros(batch, hidden, device=saved.device) if dh_n is None else dh_n
        dg, dh0 = gru_backward(saved, dy, dh_n, w_hh, lens, reset_after, ctx.config.reverse, ctx.path)
        dw_hh = db_hh = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # (T B, 3H): the gradient of W_hh h + b_hh, blocks (0, 1, NG - 1) of dg (module docstring of kernels)
            dgh = dg.view(steps * batch, dg.shape[2], hidden)[:, [0, 1, -1]].flatten(1)
        if ctx.needs_input_grad[2]:
            flat = saved.view(steps * batch, 5, hidden)
            h_prev = flat[:, 4].to(dg.dtype)
            x_n = h_prev if reset_after else flat[:, 3].to(dg.dtype)  # what W_hn multiplies: h, or r * h
            dw_hh = torch.cat([dgh[:, : 2 * hidden].T @ h_prev, dgh[:, 2 * hidden :].T @ x_n])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            db_hh = dgh.sum(0, dtype=torch.float32).to(dg.dtype)
        dgi = dg[:, :, :3].flatten(2) if ctx.needs_input_grad[0] else None
        dh0 = dh0.to(w_hh.dtype) if ctx.needs_input_grad[1] else None
        return dgi, dh0, dw_hh, db_hh, None, None, None


# ------------------------------------------------------------------------------------------ MinGRU


class _MinGRUScan(torch.autograd.Function):
    """proj: (T, B, 2H) = [k; p] projections, h0: (B, H) or None -> (y: (T, B, H) float32, h_n: (B, H) float32).
    Forward and backward are one Triton kernel each (``kernels.mingru_scan_kernel`` / ``mingru_scan_bwd_kernel``)."""

    @staticmethod
    def forward(ctx, proj, h0):
        steps, batch, two_h = proj.shape
        hidden = two_h // 2
        proj = proj if proj.stride(-1) == 1 else proj.contiguous()
        if h0 is None:
            h0f = torch.zeros(batch, hidden, device=proj.device, dtype=torch.float32)
        else:
            h0f = h0.to(torch.float32).contiguous()
        y = torch.empty(steps, batch, hidden, device=proj.device, dtype=torch.float32)
        grid = (batch, _cdiv(hidden, configs.SCAN_BLOCK_N))
        strides = (proj.stride(0), proj.stride(1))
        _launch(configs.scan_config(proj.dtype), grid, proj, h0f, y, steps, batch, hidden, *strides)
        ctx.save_for_backward(proj, h0f, y)
        ctx.has_h0 = h0 is not None
        return y, y[-1].clone()

    @staticmethod
    def backward(ctx, dy, dh_n):
        proj, h0f, y = ctx.saved_tensors
        steps, batch, hidden = y.shape
        dy = torch.zeros_like(y) if dy is None else dy.float().contiguous()
        dh_n = torch.zeros_like(h0f) if dh_n is None else dh_n.float().contiguous()
        dproj = torch.empty(steps, batch, 2 * hidden, device=proj.device, dtype=proj.dtype)
        dh0 = torch.empty_like(h0f)
        grid = (batch, _cdiv(hidden, configs.SCAN_BLOCK_N))
        args = (proj, h0f, y, dy, dh_n, dproj, dh0, steps, batch, hidden, proj.stride(0), proj.stride(1))
        _launch(configs.scan_bwd_config(proj.dtype), grid, *args)
        return dproj, (dh0 if ctx.has_h0 and ctx.needs_input_grad[1] else None)


# ------------------------------------------------------------------------------------------ the backend


class TritonBackend:
    """Triton kernels for CUDA tensors, and CPU tensors under TRITON_INTERPRET=1 (module docstring)."""

    name = "triton"

    def wanted(self) -> bool:
        """Whether this process could use the backend at all: a CUDA device, or the interpreter."""
        return interpreting() or torch.cuda.is_available()

    def kernels(self) -> ModuleType:
        """The kernels module (imports triton; raises RuntimeError when it is missing)."""
        return _load_kernels()

    def _supports(self, x: Tensor) -> str | None:
        if torch.compiler.is_compiling():
            return "torch.compile tracing (the reference loop traces without graph breaks)"
        if x.is_cpu:  # first, and cheap: on a CPU-only machine this check runs on every GRU call
            if not interpreting():
                return "CPU tensors without TRITON_INTERPRET=1 (set it to run the kernels in the Triton interpreter)"
            if dispatch.forced() != self.name:  # the interpreter is for tests: never pick it for CPU work unforced
                return f"CPU tensors under TRITON_INTERPRET=1 unless {dispatch.ENV_VAR}={self.name} forces it"
        elif not x.is_cuda:
            return f"{x.device.type} tensors (CUDA, or CPU under TRITON_INTERPRET=1)"
        if x.dtype not in _FLOATS:
            return f"dtype {x.dtype} (float32, float16 and bfloat16 only)"
        if x.layout != torch.strided:
            return f"layout {x.layout} (strided only)"
        if torch.is_autocast_enabled(x.device.type):
            return "autocast (the reference follows autocast's casts)"
        try:
            kernels = _load_kernels()
        except RuntimeError as err:
            return str(err)
        if x.is_cpu and type(kernels.gru_step_kernel).__name__ != "InterpretedFunction":
            return "CPU tensors: the kernels were compiled for the GPU (TRITON_INTERPRET=1 was set after they loaded)"
        return None

    def supports_gru(self, x: Tensor, config: GRUConfig, lengths: Tensor | None) -> str | None:
        if config.layer_norm:
            return "layer_norm is not implemented"
        if config.zoneout > 0:
            return "zoneout is not implemented"
        if config.recurrent_dropout:
            return "recurrent_dropout is not implemented"
        return self._supports(x)

    def supports_mingru(self, x: Tensor) -> str | None:
        return self._supports(x)

    @staticmethod
    def _compute_dtype(x: Tensor) -> torch.dtype:
        # the interpreter's bf16 tl.dot multiplies raw bits (triton#11584): run bf16 in float32 there
        return torch.float32 if x.dtype == torch.bfloat16 and x.device.type == "cpu" else x.dtype

    def gru_layer(
        self,
        x: Tensor,
        h0: Tensor,
        weights: GRUWeights,
        config: GRUConfig,
        lengths: Tensor | None = None,
        masks: GRUMasks = NO_MASKS,
    ) -> tuple[Tensor, Tensor]:
        """x: (T, B, I), h0: (B, H), lengths: (B,) int or None -> (y: (T, B, H), h_n: (B, H))."""
        dtype = self._compute_dtype(x)
        path = configs.choose_path(x.shape[1], h0.shape[-1], dtype)
        x_, h0_, w_ih, w_hh, b_ih, b_hh = (None if t is None else t.to(dtype) for t in (x, h0, *weights[:4]))
        gi = F.linear(x_, w_ih, b_ih)  # (T, B, 3H): every step's input projection in one GEMM (torch's autograd)
        lens = _lengths(lengths, x.shape[0], x.shape[1], x.device)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gi, h0_, w_hh, b_hh)):
            y, h_n = _GRUFunction.apply(gi, h0_, w_hh, b_hh, lens, config, path)
        else:
            y, h_n, _ = gru_forward(gi, h0_, w_hh, b_hh, lens, config.reset_after, config.reverse, path, save=False)
        return y.to(x.dtype), h_n.to(x.dtype)

    def mingru_layer(
        self, x: Tensor, h0: Tensor | None, weights: MinGRUWeights, sequential: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x: (T, B, I), h0: (B, H) or None -> (y: (T, B, H), h_n: (B, H)).

        The linear-space scan computes the same recurrence as the step-by-step loop, so ``sequential`` (streaming)
        calls are served by the same kernel.
        """
        dtype = self._compute_dtype(x)
        bias = None if weights.bias is None else weights.bias.to(dtype)
        proj = F.linear(x.to(dtype), weights.weight.to(dtype), bias)  # (T, B, 2H)
        if x.shape[0] == 0:
            hidden = proj.shape[-1] // 2
            y = proj.new_zeros(0, x.shape[1], hidden)
            return y.to(x.dtype), (proj.new_zeros(x.shape[1], hidden) if h0 is None else h0)
        y, h_n = _MinGRUScan.apply(proj, None if h0 is None else h0.to(dtype))
        return y.to(x.dtype), h_n.to(x.dtype)
