"""A naive GRU written straight from the equations, independent of grukit's reference backend.

Every weight block is sliced out by name (W_ir, W_iz, W_in, ...) and every step is written out, so a
mistake in the reference (gate order, bias placement, reset form, layer norm, masks) shows up as a mismatch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _ln(v: Tensor, gain: Tensor, bias: Tensor) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + 1e-5) * gain + bias


def naive_direction(
    x: Tensor,
    h0: Tensor,
    p: dict[str, Tensor],
    *,
    reset_after: bool = True,
    layer_norm: bool = False,
    reverse: bool = False,
    lengths: Tensor | None = None,
    zoneout_keep: Tensor | float | None = None,
    dropout_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """x: (T, B, I), h0: (B, H); p holds w_ih, w_hh, b_ih, b_hh (maybe None) and ln_* for layer norm.

    zoneout_keep: (T, B, H) 0/1 mask, or a float (eval expectation). Returns (T, B, H), (B, H).
    """
    steps, batch, _ = x.shape
    hidden = h0.shape[1]
    w_ir, w_iz, w_in = p["w_ih"].split(hidden)
    w_hr, w_hz, w_hn = p["w_hh"].split(hidden)
    zeros = torch.zeros(3 * hidden, dtype=x.dtype)
    b_ir, b_iz, b_in = (p["b_ih"] if p.get("b_ih") is not None else zeros).split(hidden)
    b_hr, b_hz, b_hn = (p["b_hh"] if p.get("b_hh") is not None else zeros).split(hidden)

    def ln(v: Tensor, which: str, gate: int) -> Tensor:
        if not layer_norm:
            return v
        sl = slice(gate * hidden, (gate + 1) * hidden)
        return _ln(v, p[f"ln_{which}_weight"][sl], p[f"ln_{which}_bias"][sl])

    h = h0
    out = torch.zeros(steps, batch, hidden, dtype=x.dtype)
    order = reversed(range(steps)) if reverse else range(steps)
    for t in order:
        xt = x[t]
        hd = h if dropout_mask is None else h * dropout_mask
        r = torch.sigmoid(ln(xt @ w_ir.T, "ih", 0) + b_ir + ln(hd @ w_hr.T, "hh", 0) + b_hr)
        z = torch.sigmoid(ln(xt @ w_iz.T, "ih", 1) + b_iz + ln(hd @ w_hz.T, "hh", 1) + b_hz)
        if reset_after:
            n = torch.tanh(ln(xt @ w_in.T, "ih", 2) + b_in + r * (ln(hd @ w_hn.T, "hh", 2) + b_hn))
        else:
            n = torch.tanh(ln(xt @ w_in.T, "ih", 2) + b_in + ln((r * hd) @ w_hn.T, "hh", 2) + b_hn)
        new = (1 - z) * n + z * h
        if zoneout_keep is not None:
            keep = zoneout_keep[t] if isinstance(zoneout_keep, Tensor) else zoneout_keep
            new = keep * h + (1 - keep) * new
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)
            new = torch.where(valid, new, h)
            out[t] = torch.where(valid, new, torch.zeros_like(new))
        else:
            out[t] = new
        h = new
    return out, h
