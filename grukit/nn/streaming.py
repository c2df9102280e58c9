"""Streaming for unidirectional recurrent layers: one step at a time, or chunk by chunk with carried state, and
``Stepper``, an inference handle that binds a model's weights once for the cheapest possible step calls."""

from __future__ import annotations

from collections.abc import Callable
from operator import is_not

import torch
from torch import Tensor


class Stream:
    """Stateful wrapper: ``s(chunk) -> (output, h_n)`` carries ``h_n`` into the next call.

    Chunks are shaped like the module's forward input (honouring ``batch_first``). The outputs of chunks of
    any lengths concatenate to one forward pass over the whole sequence. ``state`` is (L, B, H) or None;
    for truncated backpropagation through time, ``s.state = s.state.detach()`` between chunks.
    """

    def __init__(self, module: StreamingMixin, state: Tensor | None = None) -> None:
        self.module = module
        self.state = state

    def __call__(self, chunk: Tensor) -> tuple[Tensor, Tensor]:
        output, self.state = self.module.stream_chunk(chunk, self.state)
        return output, self.state

    def reset(self, state: Tensor | None = None) -> None:
        """Start over from ``state`` (default: the module's initial state)."""
        self.state = state


class StaleStepperError(RuntimeError):
    """The model changed after its ``Stepper`` bound it (call ``stepper.refresh()``)."""


class _Snapshot:
    """What a stepper bound: each parameter's identity, version counter, storage, shape and dtype, and eval mode."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.params = dict(module.named_parameters())
        self.stamps = {name: self._stamp(p) for name, p in self.params.items()}
        self.own = module._parameters  # the dict nn.Module keeps: replacing a parameter rebinds its entry
        self.values = tuple(self.own.values())  # the objects, kept alive here
        self.count = len(self.values)

    @staticmethod
    def _stamp(p: Tensor) -> tuple:
        return p._version, p.data_ptr(), p.shape, p.dtype, p.device

    def replaced(self) -> bool:
        """The cheap per-call check: training mode, or a parameter object replaced (``gru.w = nn.Parameter(...)``)."""
        own = self.own
        return self.module.training or len(own) != self.count or any(map(is_not, own.values(), self.values))

    def changed(self) -> str | None:
        """What changed since binding, in words, or None."""
        if self.module.training:
            return "the module was switched to training mode (call .eval(), then refresh())"
        current = dict(self.module.named_parameters())
        if current.keys() != self.params.keys():
            return "the module's set of parameters changed"
        for name, p in current.items():
            if p is not self.params[name]:
                return f"parameter {name} was replaced by another tensor"
            if self._stamp(p) != self.stamps[name]:
                return f"parameter {name} was modified (in-place update, load_state_dict, optimizer step or .to())"
        return None


class Stepper:
    """An inference handle for one step at a time: ``y_t, state = stepper.step(x_t, state)``, or stateful
    ``y_t = stepper(x_t)`` (the state lives in ``stepper.state``; ``stepper.reset(state)`` starts over).

    Shapes as ``module.step``: x_t (B, I) or unbatched (I,); state (L, B, H) or (L, H), None for the initial
    state -> y_t (B, H) or (H,) and the new state, fresh tensors each call (the cpu backend writes a later step's
    result into one the caller no longer references at all, instead of allocating). Eval-mode semantics only (no
    dropout, zoneout's expectation) and no autograd: use ``module.step`` to train through steps.

    ``bf16=True`` (float32 models on the cpu backend only) packs the weights rounded to bfloat16: half the bytes
    read per step, with products, gates and state still in float32; outputs differ from float32 by about 1e-3
    (bench/cpu.py reports the measured error).

    Snapshot semantics: where a backend offers a fused stepper (the cpu backend, for either equation form, layer
    norm and zoneout's expectation included), the weights are packed once, when the stepper is made or
    ``refresh()``-ed, and every step runs all layers in one C++ call. Otherwise each step calls ``module.step``
    under ``torch.no_grad()``. Either way, after the model changes, call ``refresh()``; until then a step raises
    ``StaleStepperError`` for every change it can detect:
      - in-place updates through the parameter or any view or ``.detach()`` of it (optimizer steps,
        ``p.add_(...)`` under no_grad, ``load_state_dict``), which bump its version counter;
      - a new storage (``p.data = ...``, ``module.to(dtype)``) or a replaced parameter (``module.w = Parameter``);
      - ``module.train()``.
    It cannot see writes that bypass the version counter: ``p.data.add_(...)``, a NumPy array sharing the
    storage, or a ``torch.Tensor.untyped_storage()`` write. After those, ``refresh()`` yourself; likewise after
    assigning a setting such as ``module.zoneout`` (the fused stepper binds it with the weights).
    """

    def __init__(self, module: StreamingMixin, bf16: bool = False) -> None:
        self.module = module
        self.bf16 = bf16
        self.state: Tensor | None = None
        self.refresh()

    def refresh(self) -> None:
        """Bind (again) the module's current weights, backend and initial state; keeps ``state``."""
        if self.module.training:
            name = type(self.module).__name__
            raise RuntimeError(f"{name}.stepper() is for inference: call .eval() first ({name}.step serves training)")
        self._snapshot = _Snapshot(self.module)
        self._fused = self.module.fused_stepper(self.bf16)
        if self.bf16 and self._fused is None:
            raise ValueError(
                "stepper(bf16=True) needs a fused stepper: the cpu backend and a float32 GRU with no layer_norm; "
                "use stepper() for this model"
            )
        self.__dict__.pop("step", None)  # the guarded builtin of a previous binding
        guard = getattr(getattr(self._fused, "__self__", None), "guard", None)
        if guard is not None and type(self).step is Stepper.step:  # not where a subclass overrides step
            # the cpu backend: a plain step(x, state) runs this method's checks in C++, no Python
            snapshot = self._snapshot
            self.step = guard(Stepper.step.__get__(self), self.module, snapshot.own, snapshot.values)
        self._initial: dict[int | None, Tensor] = {}

    def step(
        self, x_t: Tensor, state: Tensor | None = None, out: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """One time step: x_t (B, I) or (I,), state (L, B, H) or (L, H) or None -> (y_t, new state).

        ``out=(y_out, state_out)``, contiguous tensors of those shapes sharing no memory with x_t, state or each
        other, receives the results in place and is returned: no allocation, the cheapest call."""
        fused = self._fused
        if fused is None or self._snapshot.replaced():
            return self._unfused(x_t, state, out)
        if state is None:
            state = self._initial_state(x_t)
        result = fused(x_t, state) if out is None else (out if fused(x_t, state, *out) else None)
        if result is None:  # the backend saw a weight change
            self._raise_stale("a weight was modified")
        return result

    def __call__(self, x_t: Tensor) -> Tensor:
        """Stateful step: advances ``self.state`` and returns y_t."""
        y_t, self.state = self.step(x_t, self.state)
        return y_t

    def reset(self, state: Tensor | None = None) -> None:
        """Start over from ``state`` (default: the module's initial state)."""
        self.state = state

    def _unfused(self, x_t: Tensor, state: Tensor | None, out: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        self._raise_stale()
        with torch.no_grad():
            result = self.module.step(x_t, state)
            if out is None:
                return result
            for name, target, value in zip(("y_out", "state_out"), out, result, strict=True):
                if target.shape != value.shape:
                    raise ValueError(
                        f"stepper.step: {name} has shape {tuple(target.shape)}, expected {tuple(value.shape)}"
                    )
                target.copy_(value)
            return out

    def _raise_stale(self, seen: str | None = None) -> None:
        """Raise StaleStepperError if the snapshot sees a change (or the backend saw ``seen``)."""
        change = self._snapshot.changed() or seen
        if change is not None:
            raise StaleStepperError(f"{type(self.module).__name__} changed since its stepper bound it: {change}; "
                                    "call stepper.refresh()")  # fmt: skip

    def _initial_state(self, x_t: Tensor) -> Tensor:
        key = x_t.shape[0] if x_t.dim() == 2 else None
        h0 = self._initial.get(key)
        if h0 is None:
            h0 = self._initial[key] = self.module.initial_step_state(x_t)
        return h0


class StreamingMixin:
    """``step`` and ``stream`` on top of ``stream_chunk(x, state) -> (output, h_n)`` of the module."""

    batch_first: bool

    def stream_chunk(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step. x_t: (B, I) or unbatched (I,); state: (L, B, H) or (L, H) -> (y_t: (B, H), state)."""
        if x_t.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}.step: Expected input to be 1D or 2D, got {x_t.dim()}D instead")
        if state is not None and state.dim() != x_t.dim() + 1:
            kind = "unbatched" if x_t.dim() == 1 else "batched"
            raise RuntimeError(
                f"For {kind} {x_t.dim()}-D input, hx should also be {x_t.dim() + 1}-D but got {state.dim()}-D tensor "
                "(argument state: shape (num_layers, batch, hidden_size), or (num_layers, hidden_size) unbatched)"
            )
        if x_t.dim() == 1:
            output, state = self.stream_chunk(x_t.unsqueeze(0), state)
            return output[0], state
        time_dim = 1 if self.batch_first else 0
        output, state = self.stream_chunk(x_t.unsqueeze(time_dim), state)
        return output.squeeze(time_dim), state

    def stream(self, state: Tensor | None = None) -> Stream:
        """A stateful stream starting from ``state`` (default: the module's initial state)."""
        return Stream(self, state)

    def stepper(self, bf16: bool = False) -> Stepper:
        """An inference handle that binds the current weights once (see ``Stepper``; eval mode only)."""
        return Stepper(self, bf16)

    def fused_stepper(self, bf16: bool = False) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | None] | None:
        """A backend's fused ``step(x_t, state) -> (y_t, state)`` (None once a weight changed) bound to the current
        weights (rounded to bfloat16 if asked), or None when no backend offers one (then ``Stepper`` calls ``step``)."""
        return None

    def initial_step_state(self, x_t: Tensor) -> Tensor:
        """The initial state for a fused step on x_t (B, I) or (I,): (L, B, H) or (L, H), detached."""
        raise NotImplementedError
