"""Shared by the Triton backend tests: the interpreter switch (set before anything imports triton, since
``triton.jit`` reads it when kernels are defined) and a forward + backward runner."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import torch

from grukit.backends import dispatch
from grukit.backends.triton import configs


def run(module, backend, monkeypatch, x, h0=None, lengths=None, path=None):
    """Forward and backward of ``module`` on ``backend``: [y, h_n, dx, dh0, d(every parameter)...].
    x: (T, B, I), h0: (L·D, B, H) or None, lengths: (B,) or None; path forces the Triton kernel path."""
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    if path is None:
        monkeypatch.delenv(configs.PATH_ENV, raising=False)
    else:
        monkeypatch.setenv(configs.PATH_ENV, path)
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    args = {} if lengths is None else {"lengths": lengths}
    y, h_n = module(x, h0, **args)
    # a loss that weighs every output and state differently, so no gradient is a plain sum
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    ((y * weights).sum() + (h_n.float() ** 2).sum()).backward()
    grads = [x.grad] + ([] if h0 is None else [h0.grad]) + [p.grad for p in module.parameters()]
    return [y.detach(), h_n.detach(), *grads]


def max_diff(got, want):
    """Largest absolute difference over matching tensors of two lists."""
    return max((a.double() - b.double()).abs().max().item() for a, b in zip(got, want, strict=True))
