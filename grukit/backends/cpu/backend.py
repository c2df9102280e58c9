"""``CpuBackend``: the fused C++ GRU kernels behind the backend contract, with autograd.

Serves CPU tensors of float32 and float64 in both equation forms, forward or reverse, with or without biases and
``lengths``, in training and eval, with gradients for x, h0 and every weight (DropConnect needs nothing: the
layer passes an already-masked w_hh). Declines, with a reason, layer_norm, zoneout, other devices and dtypes,
autocast, and ``torch.compile`` tracing (the reference loop traces without graph breaks). Recurrent dropout
masks reach only ``gru_layer``: unforced, such a call runs on the reference; forced, it raises
``BackendUnavailable``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from grukit.backends.contract import NO_MASKS, GRUConfig, GRUMasks, GRUWeights
from grukit.backends.cpu.build import load_extension


class _GRULayer(torch.autograd.Function):
    """One layer and direction. x: (T, B, I), h0: (B, H), w_ih: (3H, I), w_hh: (3H, H), b_ih, b_hh: (3H,) or None,
    lengths: (B,) int64 or None -> (y: (T, B, H), h_n: (B, H)). The forward saves the gates (T, B, 4H or 3H) and
    the state entering each step (T, B, H) for the fused backward through time."""

    @staticmethod
    def forward(ctx, ext, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, reverse):
        y, h_n, gates, hs = ext.forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, reverse, True)
        ctx.save_for_backward(x, w_ih, w_hh, gates, hs, lengths)
        ctx.ext, ctx.reset_after, ctx.reverse, ctx.has_bias = ext, reset_after, reverse, b_ih is not None
        ctx.set_materialize_grads(False)
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        x, w_ih, w_hh, gates, hs, lengths = ctx.saved_tensors
        if dy is None and dh_n is None:
            return (None,) * 10
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = ctx.ext.backward(
            dy, dh_n, x, w_ih, w_hh, gates, hs, lengths, ctx.reset_after, ctx.reverse, ctx.has_bias,
            ctx.needs_input_grad[1],
        )  # fmt: skip
        if not ctx.has_bias:
            db_ih = db_hh = None
        return None, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None


class CpuBackend:
    """Fused C++ kernels for CPU tensors (see the module docstring for what it serves)."""

    name = "cpu"

    def __init__(self, ext: ModuleType | None = None) -> None:
        self.ext = load_extension() if ext is None else ext

    def supports_gru(self, x: Tensor, config: GRUConfig, lengths: Tensor | None) -> str | None:
        if torch.compiler.is_compiling():
            return "torch.compile tracing (the reference loop traces without graph breaks)"
        if x.device.type != "cpu":
            return f"{x.device.type} tensors (CPU only)"
        if x.dtype not in (torch.float32, torch.float64):
            return f"dtype {x.dtype} (float32 and float64 only)"
        if x.layout != torch.strided:
            return f"layout {x.layout} (strided only)"
        if torch.is_autocast_enabled("cpu"):
            return "autocast (the reference follows autocast's casts)"
        if config.layer_norm:
            return "layer_norm is not implemented"
        if config.zoneout > 0:
            return "zoneout is not implemented"
        return None

    def supports_mingru(self, x: Tensor) -> str | None:
        return "MinGRU is not implemented (the reference's parallel scan serves it)"

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
        if masks.recurrent_dropout is not None or masks.zoneout is not None:
            from grukit.backends import dispatch, reference

            if dispatch.forced() == self.name:
                raise dispatch.BackendUnavailable(
                    f"{dispatch.ENV_VAR}={self.name} cannot run this GRU call: recurrent_dropout is not implemented; "
                    f"unset {dispatch.ENV_VAR} to fall back"
                )
            return reference.gru_layer(x, h0, weights, config, lengths, masks)
        w_ih, w_hh, b_ih, b_hh = weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh
        if (b_ih is None) != (b_hh is None):  # one bias only: fold a zero for the other
            b_ih = torch.zeros_like(b_hh) if b_ih is None else b_ih
            b_hh = torch.zeros_like(b_ih) if b_hh is None else b_hh
        if lengths is not None:
            lengths = lengths.to(device="cpu", dtype=torch.int64)
        tensors = (x, h0, w_ih, w_hh, b_ih, b_hh)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return _GRULayer.apply(self.ext, *tensors, lengths, config.reset_after, config.reverse)
        y, h_n, _, _ = self.ext.forward(*tensors, lengths, config.reset_after, config.reverse, False)
        return y, h_n
