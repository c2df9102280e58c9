"""``CpuBackend``: the fused C++ GRU kernels behind the backend contract, with autograd.

Serves CPU tensors of float32 and float64 in both equation forms, forward or reverse, with or without biases and
``lengths``, in training and eval, with gradients for x, h0 and every weight, and the regularisers: recurrent
dropout and zoneout (the layer's sampled masks, or zoneout's expectation in eval, applied inside the fused loop and
its backward), DropConnect (nothing to do: the layer passes an already-masked w_hh) and layer_norm (the input side
is one GEMM and the reference's norm, the recurrence ``ext.forward_norm``: each gate's recurrent product normalised
before the gate math). Declines, with a reason, other devices and dtypes, autocast and
``torch.compile`` tracing (the reference loop traces without graph breaks).

Packed weights can be cached across calls (``PackCache``, OFF by default: opt in with the environment variable
``GRUKIT_CPU_PACK_CACHE=8`` or ``PACK_CACHE.capacity = 8``): packing W_hh costs tens to hundreds of µs, more than a
whole streaming step. It is off by default because writes that bypass the version counter (below) would otherwise
give silently stale results. An entry is used only while each of its weight tensors is the same live object with the
same data pointer, shape, stride, dtype and ``_version`` as when it was packed; any in-place update through
autograd's view of the tensor (``w.add_(...)`` under ``no_grad``, optimizer steps, ``load_state_dict``) bumps
``_version`` and repacks. Writes that bypass the version counter (``w.data.add_(...)``, a NumPy view of the storage)
are not seen: call ``clear_pack_cache()`` after them. Weights made by autograd (a DropConnect-masked w_hh, a fresh
tensor each call) are never cached, and the cache keeps at most ``PackCache.capacity`` entries (0 turns it off).
Calls that record autograd never use it (training changes the weights every step, and ``gradcheck`` perturbs them
through ``.data``): the cache serves eval and ``no_grad`` calls.

A single step (T = 1, no lengths, no masks) of at most ``direct_batch()`` sequences without a cached pack runs from
the unpacked weights, in training too (``ext.forward`` then saves the gates as the loop does, and the backward reads
W_hh's columns in place where H is a multiple of the vector width): packing them would cost more than the step
(grukit.GRUCell in a decoder's training loop).
Calls that record autograd are one C++ autograd node (``ext.layer``; layer norm: a Python autograd.Function);
eval / no-grad calls record none; an uncached eval single step is ``ext.step_direct``, and a cached one
(reset_after, every weight cacheable) ``ext.step``: both products from packed weights and the gate math in one
kernel, with no GEMM call and no gi buffer.

A whole eval stack (``gru_stack``: every layer and direction, zero or given h0, h_n assembled, no lengths, no
autograd recorded, pack cache off) is one C++ call (``ext.stack``). After the first such call the layer keeps
``stack_guard``'s native builtin as ``GRU._fast_forward``: it checks in C++ that nothing it relied on changed (eval
mode, the module's own parameter objects, ``GRUKIT_BACKEND``, dispatch's generation, the pack cache, autocast, grad
mode, the input's dtype, device, layout and shape) and runs the stack, or returns None to hand the call to the Python
path.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from grukit.backends import dispatch
from grukit.backends.contract import NO_MASKS, GRUConfig, GRUMasks, GRUWeights
from grukit.backends.cpu.build import load_extension
from grukit.backends.reference import project


class _GRULayerNorm(torch.autograd.Function):
    """One layer-norm layer's recurrent side (``ext.forward_norm``). gi: (T, B, 3H), the input side already
    normalised and with b_ih added; h0: (B, H); w_hh: (3H, H); gamma, beta: (3H,), the recurrent norm's gain, and its
    bias plus b_hh; lengths: (B,) int64 or None; drop: (B, H) recurrent-dropout mask or None; keep: (T, B, H)
    zoneout mask or None; keep_p: eval zoneout's expectation -> (y: (T, B, H), h_n: (B, H)). The forward saves the
    gates, the states, the normalised products and their 1/std for the fused backward."""

    @staticmethod
    def forward(ctx, ext, gi, h0, w_hh, gamma, beta, lengths, reset_after, reverse, drop, keep, keep_p):
        y, h_n, gates, hs, xhat, rstd = ext.forward_norm(
            gi, h0, w_hh, gamma, beta, lengths, reset_after, reverse, True, drop, keep, keep_p
        )
        ctx.save_for_backward(w_hh, gamma, gates, hs, xhat, rstd, lengths, drop, keep)
        ctx.ext, ctx.reset_after, ctx.reverse, ctx.keep_p = ext, reset_after, reverse, keep_p
        ctx.set_materialize_grads(False)
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n):
        if dy is None and dh_n is None:
            return (None,) * 12
        w_hh, gamma, gates, hs, xhat, rstd, lengths, drop, keep = ctx.saved_tensors
        dgi, dh0, dw_hh, dgamma, dbeta = ctx.ext.backward_norm(
            dy, dh_n, w_hh, gamma, gates, hs, xhat, rstd, lengths, ctx.reset_after, ctx.reverse, drop, keep,
            ctx.keep_p,
        )  # fmt: skip
        return None, dgi, dh0, dw_hh, dgamma, dbeta, None, None, None, None, None, None


class _Packed:
    """The cached, packed form of one layer's weights (all detached copies; see the module docstring)."""

    __slots__ = ("b_hn", "fold", "refs", "shapes", "stamps", "w_hh", "w_ih")

    def __init__(self, tensors: tuple, w_hh: Tensor, fold: Tensor | None, b_hn: Tensor | None) -> None:
        self.refs = tuple(None if t is None else weakref.ref(t) for t in tensors)
        self.stamps = tuple(None if t is None else (t._version, t.data_ptr()) for t in tensors)
        self.shapes = (tensors[0].shape, tensors[1].shape, tensors[0].dtype)
        self.w_hh, self.fold, self.b_hn = w_hh, fold, b_hn
        self.w_ih: Tensor | None = None  # packed for ext.step on first use

    def matches(self, tensors: tuple) -> bool:
        """Each tensor is the same live object, unchanged since packing (version counter and data pointer)."""
        for t, ref, stamp in zip(tensors, self.refs, self.stamps, strict=True):
            if t is None:
                if ref is not None:
                    return False
            elif ref is None or ref() is not t or t._version != stamp[0] or t.data_ptr() != stamp[1]:
                return False
        return self.shapes == (tensors[0].shape, tensors[1].shape, tensors[0].dtype)


class PackCache:
    """A small LRU of packed weights keyed on the identity of (w_ih, w_hh, b_ih, b_hh) and reset_after; a hit is
    used only while ``_Packed.matches`` the live tensors, else the weights are repacked."""

    capacity = int(os.environ.get("GRUKIT_CPU_PACK_CACHE", "0"))  # entries; 0 (the default) turns it off

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, _Packed] = OrderedDict()
        self._lock = threading.Lock()
        self.packs = 0  # how many times W_hh was packed: the tests' window on hits and misses

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, ext: ModuleType, tensors: tuple, reset_after: bool) -> _Packed | None:
        """The packed weights for (w_ih, w_hh, b_ih, b_hh) (biases both present or both None), or None when one of
        them is a fresh result of autograd (a masked w_hh), which would only evict reusable entries."""
        w_ih, w_hh, b_ih, b_hh = tensors
        key = (id(w_ih), id(w_hh), id(b_ih), id(b_hh), reset_after)  # ids of live objects: matches() checks
        entry = self._entries.get(key)
        if entry is not None and entry.matches(tensors):
            try:  # noqa: SIM105 (contextlib.suppress costs more than the lookup on this hot path)
                self._entries.move_to_end(key)
            except KeyError:  # another thread evicted it meanwhile; the entry itself is still good
                pass
            return entry
        if self.capacity <= 0 or any(t is not None and t.grad_fn is not None for t in tensors):
            return None
        with torch.no_grad():
            wpack = ext.pack_hh(w_hh.detach(), reset_after)
            fold = b_hn = None
            if b_ih is not None:
                fold, b_hn = ext.fold_bias(b_ih.detach(), b_hh.detach(), reset_after)
        entry = _Packed(tensors, wpack, fold, b_hn)
        with self._lock:
            self.packs += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def step_weights(self, ext: ModuleType, entry: _Packed, w_ih: Tensor) -> Tensor:
        """W_ih packed for ``ext.step`` (validated with the entry, which covers w_ih)."""
        if entry.w_ih is None:
            with torch.no_grad():
                entry.w_ih = ext.pack_ih(w_ih.detach())
        return entry.w_ih


PACK_CACHE = PackCache()


def clear_pack_cache() -> None:
    """Forget every packed weight (needed only after writes that bypass ``_version``, such as ``w.data.add_``)."""
    PACK_CACHE.clear()


class CpuBackend:
    """Fused C++ kernels for CPU tensors (see the module docstring for what it serves)."""

    name = "cpu"

    def __init__(self, ext: ModuleType | None = None) -> None:
        self.ext = load_extension() if ext is None else ext
        self.direct_batch = self.ext.direct_batch()

    def supports_gru(self, x: Tensor, config: GRUConfig, lengths: Tensor | None) -> str | None:
        if torch.compiler.is_compiling():
            return "torch.compile tracing (the reference loop traces without graph breaks)"
        if not x.is_cpu:  # is_cpu: a fraction of the cost of x.device.type on the per-step path
            return f"{x.device.type} tensors (CPU only)"
        if x.dtype not in (torch.float32, torch.float64):
            return f"dtype {x.dtype} (float32 and float64 only)"
        if x.layout != torch.strided:
            return f"layout {x.layout} (strided only)"
        if torch.is_autocast_enabled("cpu"):
            return "autocast (the reference follows autocast's casts)"
        return None

    def make_stepper(
        self, weights: Sequence[GRUWeights], config: GRUConfig, watched: Sequence[Tensor], bf16: bool = False
    ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | None] | None:
        """A fused eval stepper for a stack of forward layers (``grukit.nn.streaming.Stepper``): every layer's
        weights packed now, and ``step(x_t: (B, I) or (I,), state: (L, B, H) or (L, H)) -> (y_t, new state)`` runs
        all layers in one C++ call, or returns None once one of ``watched`` has a new version or storage;
        ``step(x_t, state, y_out, state_out)`` writes into those tensors instead and returns True (or None). Both
        equation forms (reset_after=False: two phases per layer, r * h between them), zoneout's eval expectation and
        layer norm (each gate's row normalised). ``bf16`` packs the weights rounded to bfloat16 (float32
        without layer norm only: products, gates and state stay float32)."""
        if config.reverse or (bf16 and (weights[0].w_ih.dtype != torch.float32 or config.layer_norm)):
            return None
        layers = []
        for w in weights:
            biases = []
            present = w.b_ih if w.b_ih is not None else w.b_hh
            if present is not None or config.layer_norm:  # both, or one only: then a zero for the other
                present = w.w_hh.new_zeros(w.w_hh.shape[0]) if present is None else present
                biases = [torch.zeros_like(present) if b is None else b for b in (w.b_ih, w.b_hh)]
            norms = [w.ln_ih_weight, w.ln_ih_bias, w.ln_hh_weight, w.ln_hh_bias] if config.layer_norm else []
            layers.append([w.w_ih, w.w_hh, *biases, *norms])
        stepper = self.ext.Stepper(layers, list(watched), bf16, config.reset_after, config.zoneout)
        return stepper.bind()  # no pybind11 argument matching per call

    def gru_stack(
        self,
        x: Tensor,
        hx: Tensor | None,
        weights: Sequence[Tensor],
        config: GRUConfig,
        layers: int,
        directions: int,
    ) -> tuple[Tensor, Tensor] | None:
        """A whole eval stack (no autograd recorded) in one C++ call. x: (T, B, I), hx: (L·D, B, H) or None (zeros),
        weights: torch.nn.GRU's flat order, [w_ih, w_hh(, b_ih, b_hh)] per layer and direction -> (output (T, B, D·H),
        h_n (L·D, B, H)); None (the per-layer path) while the opt-in pack cache is on, which that path uses, or for
        zoneout (the per-layer path applies its expectation)."""
        if PACK_CACHE.capacity > 0 or config.zoneout > 0 or config.layer_norm:
            return None
        y, h_n = self.ext.stack(x, hx, weights, layers, directions, config.reset_after, config.reverse)
        return y, h_n

    def stack_guard(
        self,
        values: tuple[Tensor, ...],
        learn_init: bool,
        config: GRUConfig,
        layers: int,
        directions: int,
        input_size: int,
        hidden_size: int,
    ) -> Callable[..., tuple[Tensor, Tensor] | None]:
        """``gru_stack`` for the next eval calls of a grukit.GRU as one builtin, ``guard(module, input, hx)``, which
        returns None (the Python path) unless the module's own parameters are still exactly ``values`` (its flat
        weights, then initial_state with ``learn_init``), dispatch would still pick this backend and the input needs
        none of the Python path's conversions (see guarded_stack in gru_cpu.cpp)."""
        context = (values, PACK_CACHE, dispatch.GENERATION, dispatch.GENERATION[0], layers, directions, input_size,
                   hidden_size, config.reset_after, config.reverse, learn_init)  # fmt: skip
        return self.ext.stack_guard(context)

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
        w_ih, w_hh, b_ih, b_hh = weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh
        cacheable = True
        if (b_ih is None) != (b_hh is None):  # one bias only: fold a zero for the other (fresh: not cached)
            b_ih = torch.zeros_like(b_hh) if b_ih is None else b_ih
            b_hh = torch.zeros_like(b_ih) if b_hh is None else b_hh
            cacheable = False
        if lengths is not None:
            lengths = lengths.to(device="cpu", dtype=torch.int64)
        reset_after = config.reset_after
        drop, keep = masks.recurrent_dropout, masks.zoneout
        keep_p = config.zoneout if keep is None else 0.0  # eval zoneout: the expectation
        regularised = drop is not None or keep is not None or keep_p > 0
        if config.layer_norm:
            return self._gru_layer_norm(x, h0, weights, config, lengths, drop, keep, keep_p)
        if torch.is_grad_enabled() and (
            x.requires_grad
            or h0.requires_grad
            or w_ih.requires_grad
            or w_hh.requires_grad
            or (b_ih is not None and (b_ih.requires_grad or b_hh.requires_grad))
        ):
            # no cache while autograd records: training changes the weights every step anyway, and gradcheck
            # perturbs them through .data, which the version counter does not see
            # one autograd node in C++ (GRULayerFunction): forward saves the gates (T, B, 4H or 3H) and the state
            # entering each step (T, B, H) for the fused backward through time
            return self.ext.layer(
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, config.reverse, drop, keep, keep_p
            )
        if regularised:  # only the general loop applies the masks: no cache, no single-step kernels
            y, h_n, _, _ = self.ext.forward(
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, config.reverse, False,
                drop=drop, keep=keep, keep_p=keep_p,
            )  # fmt: skip
            return y, h_n
        packed = PACK_CACHE.get(self.ext, (w_ih, w_hh, b_ih, b_hh), reset_after) if cacheable else None
        if packed is None and x.shape[0] == 1 and x.shape[1] <= self.direct_batch and lengths is None:
            y, h_n = self.ext.step_direct(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after)  # nothing packed per call
            return y, h_n
        if packed is None:
            y, h_n, _, _ = self.ext.forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, config.reverse, False)
            return y, h_n
        if x.shape[0] == 1 and reset_after and lengths is None:  # a streaming step: one fused kernel, no GEMM
            w_ih_packed = packed.w_ih if packed.w_ih is not None else PACK_CACHE.step_weights(self.ext, packed, w_ih)
            y, h_n = self.ext.step(x, h0, w_ih_packed, packed.w_hh, packed.fold, packed.b_hn)
            return y, h_n
        y, h_n, _, _ = self.ext.forward(
            x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, config.reverse, False, packed.w_hh, packed.fold,
            packed.b_hn,
        )  # fmt: skip
        return y, h_n

    def _gru_layer_norm(
        self,
        x: Tensor,
        h0: Tensor,
        weights: GRUWeights,
        config: GRUConfig,
        lengths: Tensor | None,
        drop: Tensor | None,
        keep: Tensor | None,
        keep_p: float,
    ) -> tuple[Tensor, Tensor]:
        """A layer-norm layer: the input side as one GEMM and the reference's norm (autograd differentiates them),
        the recurrence with its per-gate norms in ``ext.forward_norm``. Shapes as ``gru_layer``."""
        hidden = h0.shape[-1]
        gi = project(x, weights.w_ih, weights.b_ih, (weights.ln_ih_weight, weights.ln_ih_bias), hidden)
        gamma = weights.ln_hh_weight
        beta = weights.ln_hh_bias if weights.b_hh is None else weights.ln_hh_bias + weights.b_hh
        w_hh, reset_after, reverse = weights.w_hh, config.reset_after, config.reverse
        if torch.is_grad_enabled() and any(t.requires_grad for t in (gi, h0, w_hh, gamma, beta)):
            return _GRULayerNorm.apply(
                self.ext, gi, h0, w_hh, gamma, beta, lengths, reset_after, reverse, drop, keep, keep_p
            )
        y, h_n, *_ = self.ext.forward_norm(
            gi, h0, w_hh, gamma, beta, lengths, reset_after, reverse, False, drop, keep, keep_p
        )
        return y, h_n
