"""``TritonBackend``: the Triton kernels behind the backend contract, with autograd.

Serves CUDA tensors, and CPU tensors when ``TRITON_INTERPRET=1`` is set and ``GRUKIT_BACKEND=triton`` forces it (the
Triton interpreter, a thousand times slower than the CPU backends: for tests only, never picked unforced), in
float32, float16 and bfloat16 (bfloat16 runs in float32 under the interpreter, whose bf16 ``tl.dot`` is wrong),
both equation forms, forward or reverse, with or without biases and ``lengths``, in training and eval, with
gradients for x, h0 and every weight. MinGRU runs as a linear-space parallel scan (forward and backward in
Triton). Declines, with a reason: layer_norm, zoneout, recurrent dropout, float64, other devices, autocast and
``torch.compile`` tracing.

Forward: the input projection for all steps is one torch matmul; the recurrence runs in the persistent kernel
(small H: one launch, W_hh on chip) or the per-step kernel (one launch per step), see ``configs``.

GRU backward (first version): the backward pass RECOMPUTES the layer with the reference backend under autograd
and differentiates that; it is exact but costs a reference forward plus its backward (a Python loop over T).
A fused per-step Triton backward kernel is the next step.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from grukit.backends import dispatch, reference
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


def gru_forward(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reset_after: bool,
    reverse: bool,
    path: str,
) -> tuple[Tensor, Tensor]:
    """The Triton forward without autograd. x: (T, B, I), h0: (B, H), w_ih: (3H, I), w_hh: (3H, H), b_*: (3H,)
    or None, lengths: (B,) int or None -> (y: (T, B, H), h_n: (B, H)), both in x's dtype."""
    steps, batch = x.shape[0], x.shape[1]
    hidden = h0.shape[-1]
    y = x.new_empty(steps, batch, hidden)
    if steps == 0 or batch == 0 or hidden == 0:
        return y.zero_(), h0.clone()
    gi = F.linear(x, w_ih, b_ih).contiguous()  # (T, B, 3H): every step's input projection in one GEMM
    w = w_hh.contiguous()
    b = torch.zeros(3 * hidden, device=x.device, dtype=w.dtype) if b_hh is None else b_hh.to(w.dtype).contiguous()
    if lengths is None:
        lens = torch.full((batch,), steps, device=x.device, dtype=torch.int32)
    else:
        lens = lengths.to(device=x.device, dtype=torch.int32).contiguous()
    if path == "persistent":
        config = configs.persistent_config(x.dtype, hidden, reset_after)
        h_n = torch.empty(batch, hidden, device=x.device, dtype=torch.float32)
        grid = (_cdiv(batch, configs.PERSISTENT_BLOCK_B),)
        _launch(config, grid, gi, h0.contiguous(), w, b, lens, y, h_n, steps, batch, hidden, int(reverse))
        return y, h_n.to(x.dtype)
    kernels = configs.step_configs(x.dtype, batch, reset_after)
    consts = kernels[0].consts
    grid = (_cdiv(batch, consts["BLOCK_B"]), _cdiv(hidden, consts["BLOCK_H"]))
    h = h0.to(torch.float32).contiguous().clone()  # (B, H) float32 state, double-buffered with h_out
    h_out = torch.empty_like(h)
    if not reset_after:
        rh, z = torch.empty_like(h), torch.empty_like(h)  # (B, H) float32 scratch between the two launches
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        if reset_after:
            _launch(kernels[0], grid, gi, h, w, b, lens, h_out, y, t, batch, hidden)
        else:
            _launch(kernels[0], grid, gi, h, w, b, rh, z, t, batch, hidden)
            _launch(kernels[1], grid, gi, h, w, b, rh, z, lens, h_out, y, t, batch, hidden)
        h, h_out = h_out, h
    return y, h.to(x.dtype)


class _GRUFunction(torch.autograd.Function):
    """Triton forward; backward by recomputing the layer with the reference backend under autograd.

    x: (T, B, I), h0: (B, H), w_ih: (3H, I), w_hh: (3H, H), b_ih, b_hh: (3H,) or None, lengths: (B,) or None
    -> (y: (T, B, H), h_n: (B, H)).
    """

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, config, path):
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
        ctx.config = config
        return gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, config.reset_after, config.reverse, path)

    @staticmethod
    def backward(ctx, dy, dh_n):
        saved = ctx.saved_tensors
        lengths = saved[6]
        leaves = [
            None if t is None else t.detach().requires_grad_(need)
            for t, need in zip(saved[:6], ctx.needs_input_grad[:6], strict=True)
        ]
        wanted = [t for t, need in zip(leaves, ctx.needs_input_grad[:6], strict=True) if t is not None and need]
        grads_in: list[Tensor | None] = [None] * 6
        if wanted:
            with torch.enable_grad():
                y, h_n = reference.gru_layer(leaves[0], leaves[1], GRUWeights(*leaves[2:6]), ctx.config, lengths)
            found = torch.autograd.grad((y, h_n), wanted, (dy, dh_n), allow_unused=True)
            by_id = {id(t): g for t, g in zip(wanted, found, strict=True)}
            grads_in = [None if t is None else by_id.get(id(t)) for t in leaves]
        return (*grads_in, None, None, None)


# ------------------------------------------------------------------------------------------ MinGRU


def _scan(a: Tensor, b: Tensor, h0: Tensor, from_gates: bool, reverse: bool, dtype: torch.dtype) -> Tensor:
    """h_t = a_t h_{t-1} + b_t in Triton. a, b: (T, B, H) views with unit last stride, h0: (B, H) float32
    -> (T, B, H) float32. from_gates: a and b are MinGRU's projections (see ``kernels.linear_scan_kernel``)."""
    steps, batch, hidden = a.shape
    y = torch.empty(steps, batch, hidden, device=a.device, dtype=torch.float32)
    config = configs.scan_config(dtype, from_gates)
    grid = (batch, _cdiv(hidden, configs.SCAN_BLOCK_N))
    _launch(
        config,
        grid,
        a,
        b,
        h0,
        y,
        steps,
        batch,
        hidden,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        int(reverse),
    )
    return y


class _MinGRUScan(torch.autograd.Function):
    """proj: (T, B, 2H) = [k; p] projections (unit last stride), h0: (B, H) or None
    -> (y: (T, B, H) float32, h_n: (B, H) float32). Forward and backward are Triton linear scans."""

    @staticmethod
    def forward(ctx, proj, h0):
        _, batch, two_h = proj.shape
        hidden = two_h // 2
        proj = proj if proj.stride(-1) == 1 else proj.contiguous()
        if h0 is None:
            h0f = torch.zeros(batch, hidden, device=proj.device, dtype=torch.float32)
        else:
            h0f = h0.to(torch.float32).contiguous()
        y = _scan(proj[..., :hidden], proj[..., hidden:], h0f, True, False, proj.dtype)
        ctx.save_for_backward(proj, h0f, y)
        ctx.has_h0 = h0 is not None
        return y, y[-1].clone()

    @staticmethod
    def backward(ctx, dy, dh_n):
        proj, h0f, y = ctx.saved_tensors
        hidden = y.shape[-1]
        k, p = proj[..., :hidden].float(), proj[..., hidden:].float()
        z, a = torch.sigmoid(k), torch.sigmoid(-k)
        g = torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
        dg = torch.where(p >= 0, torch.ones_like(p), torch.sigmoid(p) * torch.sigmoid(-p))
        dy = torch.zeros_like(y) if dy is None else dy.float().contiguous()
        dh_n = torch.zeros_like(h0f) if dh_n is None else dh_n.float().contiguous()
        # dh_t = dy_t + a_{t+1} dh_{t+1}, dh_{T-1} = dy_{T-1} + dh_n: a reverse scan with coefficients a_{t+1}
        coeff = torch.cat([a[1:], torch.ones_like(a[:1])]).contiguous()
        dh = _scan(coeff, dy, dh_n, False, True, torch.float32)
        h_prev = torch.cat([h0f.unsqueeze(0), y[:-1]])
        dk = dh * z * a * (g - h_prev)
        dp = dh * z * dg
        dproj = torch.cat([dk, dp], dim=-1).to(proj.dtype)
        dh0 = (a[0] * dh[0]).to(h0f.dtype) if ctx.has_h0 and ctx.needs_input_grad[1] else None
        return dproj, dh0


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
        tensors = [None if t is None else t.to(dtype) for t in (x, h0, *weights[:4])]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            y, h_n = _GRUFunction.apply(*tensors, lengths, config, path)
        else:
            y, h_n = gru_forward(*tensors, lengths, config.reset_after, config.reverse, path)
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
