"""``GRU``: an exact drop-in for ``torch.nn.GRU`` plus the variants nn.GRU lacks.

The layer owns arguments, parameters (same names, shapes and initialisation as torch.nn.GRU), input
checks, lengths and PackedSequence handling, random masks, and the composition of layers and directions.
Each (layer, direction) is computed by the backend that dispatch picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from grukit.backends.contract import NO_MASKS, GRUConfig, GRUMasks, GRUWeights, config_of
from grukit.backends.dispatch import gru_backend
from grukit.nn.checks import batch_input, check_hidden, check_probability, check_rnn_args, check_sequence
from grukit.nn.params import parameter
from grukit.nn.streaming import StreamingMixin

_LN_STEMS = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")
_TORCH_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


class GRU(StreamingMixin, nn.Module):
    """Multi-layer GRU with torch.nn.GRU's arguments, parameters, inputs and outputs.

    Shapes: input (T, B, I), or (B, T, I) with ``batch_first``, or unbatched (T, I), or a PackedSequence;
    h0 (L·D, B, H) or unbatched (L·D, H); output (T, B, D·H) (batch_first: (B, T, D·H)); h_n (L·D, B, H).

    Keyword-only extensions (all off by default, which keeps the layer exactly torch.nn.GRU):
      reset_after: False applies the reset gate before the recurrent product (Cho et al. 2014, Keras
        ``reset_after=False``, ONNX ``linear_before_reset=0``). Same parameters.
      layer_norm: per-gate layer normalisation of ``W_ih x`` and of the recurrent product, each with a
        learnable gain and bias (``ln_ih_weight_l0`` ... of shape (3H,)), applied before the biases.
      zoneout: probability that a unit keeps its previous value in training; eval uses the expectation.
      recurrent_dropout: variational dropout on the state entering the recurrent product, one mask per
        sequence shared by all time steps (training only).
      dropconnect: dropout on ``W_hh``, one mask per forward call (training only).
      learn_init: a learnable initial state ``initial_state`` (L·D, H), used when no h0 is passed.
      reverse: a unidirectional layer that runs from the last step to the first (ONNX direction=reverse).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        dropconnect: float = 0.0,
        learn_init: bool = False,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        dropout = check_rnn_args(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        if reverse and bidirectional:
            raise ValueError("reverse=True runs one direction backwards; it cannot be combined with bidirectional=True")
        self.mode = "GRU"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.proj_size = 0
        self.reset_after = bool(reset_after)
        self.layer_norm = bool(layer_norm)
        self.zoneout = check_probability("zoneout", zoneout)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout, allow_one=False)
        self.dropconnect = check_probability("dropconnect", dropconnect, allow_one=False)
        self.learn_init = bool(learn_init)
        self.reverse = bool(reverse)
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        gates = 3 * hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = self._suffix(layer, direction)
                shapes = {"weight_ih": (gates, layer_input), "weight_hh": (gates, hidden_size)}
                if bias:
                    shapes.update({"bias_ih": (gates,), "bias_hh": (gates,)})
                for stem, shape in shapes.items():
                    self._register(f"{stem}{suffix}", torch.empty(shape, **factory))
        if layer_norm:
            for layer in range(num_layers):
                for direction in range(directions):
                    for stem in _LN_STEMS:
                        self._register(f"{stem}{self._suffix(layer, direction)}", torch.empty(gates, **factory))
        if learn_init:
            self.initial_state = nn.Parameter(torch.empty(num_layers * directions, hidden_size, **factory))
        self._fast_forward: Callable[..., tuple[Tensor, Tensor] | None] | None = None  # see _forward_stack
        self.reset_parameters()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name != "training" and not name.startswith("_"):  # e.g. gru.zoneout = 0.2: the fast path assumed the old
            self.__dict__["_fast_forward"] = None  # configuration; the next eval call rebuilds it

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_fast_forward", None)  # a builtin bound to this object's parameters: rebuilt on the next call
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._fast_forward = None

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _register(self, name: str, value: Tensor) -> None:
        self.register_parameter(name, nn.Parameter(value))
        self._flat_weights_names.append(name)

    def reset_parameters(self) -> None:
        """torch.nn.GRU's initialisation U(-1/√H, 1/√H) in the same order; layer-norm gains 1, biases and
        the learnable initial state 0."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("ln_"):
                    param.fill_(1.0 if "_weight" in name else 0.0)
                elif name == "initial_state":
                    param.zero_()
                else:
                    nn.init.uniform_(param, -bound, bound)

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction: [weight_ih, weight_hh, bias_ih, bias_hh] (as torch.nn.GRU)."""
        stems = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        return [
            [getattr(self, f"{stem}{self._suffix(layer, d)}") for stem in stems]
            for layer in range(self.num_layers)
            for d in range(self._directions)
        ]

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn.GRU (grukit keeps no flat cuDNN buffer)."""

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0, "bidirectional": False}
        extensions = {
            "reset_after": True,
            "layer_norm": False,
            "zoneout": 0.0,
            "recurrent_dropout": 0.0,
            "dropconnect": 0.0,
            "learn_init": False,
            "reverse": False,
        }
        for name, default in {**defaults, **extensions}.items():
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text

    # ----------------------------------------------------------------------------------------- forward

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """input: (T, B, I) / (B, T, I) / (T, I) / PackedSequence; hx: (L·D, B, H) or (L·D, H);
        lengths: (B,) valid steps per sequence, any integer dtype and device, any order.

        Returns (output, h_n) as torch.nn.GRU. With lengths, outputs past each length are zero, h_n holds
        each sequence's state at its last valid step and the reverse direction starts there.
        """
        fast = self._fast_forward
        if fast is not None and lengths is None and not torch.compiler.is_compiling():
            result = fast(self, input, hx)  # the whole eval call in one builtin, or None: the path below
            if result is not None:
                return result
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths cannot be combined with a PackedSequence input, which carries its own")
            return self._forward_packed(input, hx)
        x, hx, batched = batch_input("GRU", input, hx, self.batch_first)
        if self.batch_first:
            x = x.transpose(0, 1)
        if lengths is not None:
            if not batched:
                lengths = torch.as_tensor(lengths).reshape(1)
            lengths = self._check_lengths(lengths, x)
        stacked = self._forward_stack(x, hx) if lengths is None and not self.training else None
        output, h_n = stacked if stacked is not None else self._forward_time_major(x, hx, lengths)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output, h_n = output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n

    def stream_chunk(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One chunk of a stream (see ``step`` and ``stream``): forward with the carried state."""
        self._check_forward_only()
        output, h_n = self(x, state)
        return output, h_n

    def _check_forward_only(self) -> None:
        if self.bidirectional or self.reverse:
            raise RuntimeError("streaming needs a forward-only GRU; this one is bidirectional or reverse")

    def fused_stepper(self, bf16: bool = False) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | None] | None:
        """The fused stepper of the backend that serves this GRU's eval steps, bound to the current weights, or None
        (see ``grukit.nn.streaming.Stepper``). A backend offers one through an optional
        ``make_stepper(weights per layer, config, watched parameters, bf16)`` method."""
        self._check_forward_only()
        config = self._config(0, training=False)
        probe = self.weight_ih_l0.new_empty(1, 1, self.input_size)  # what an eval step looks like to dispatch
        make = getattr(gru_backend(probe, config, None), "make_stepper", None)
        if make is None:
            return None
        weights = [self._layer_weights(layer, 0) for layer in range(self.num_layers)]
        return make(weights, config, list(self.parameters()), bf16)

    def initial_step_state(self, x_t: Tensor) -> Tensor:
        """The state a step starts from: zeros or ``initial_state``. x_t: (B, I) or (I,) -> (L, B, H) or (L, H)."""
        with torch.no_grad():
            if x_t.dim() == 1:
                shape = (self.num_layers, self.hidden_size)
                init = self.initial_state if self.learn_init else None
            else:
                shape = (self.num_layers, x_t.shape[0], self.hidden_size)
                init = self.initial_state.unsqueeze(1) if self.learn_init else None
            weight = self.weight_ih_l0
            return init.expand(shape).clone() if init is not None else weight.new_zeros(shape)

    def _check_lengths(self, lengths: Tensor | list[int], x: Tensor) -> Tensor:
        """lengths: (B,) integers in [0, T] -> int64 tensor on x's device. x: (T, B, I)."""
        lengths = torch.as_tensor(lengths)
        steps, batch = x.shape[0], x.shape[1]
        if lengths.shape != (batch,):
            raise ValueError(
                f"lengths must have shape (batch,) = ({batch},), got {tuple(lengths.shape)}: one length per sequence"
            )
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        if not torch.compiler.is_compiling():
            low, high = int(lengths.min()), int(lengths.max())
            if low < 0 or high > steps:
                raise ValueError(f"lengths must lie in [0, {steps}] (the padded sequence length), got [{low}, {high}]")
        return lengths.to(device=x.device, dtype=torch.int64)

    def _forward_packed(self, packed: PackedSequence, hx: Tensor | None) -> tuple[PackedSequence, Tensor]:
        """PackedSequence in, PackedSequence out, through the lengths path (h0 and h_n in input order)."""
        padded, lengths = pad_packed_sequence(packed)
        check_sequence(padded, self.input_size, self.weight_ih_l0.dtype)
        if hx is not None and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        output, h_n = self._forward_time_major(padded, hx, lengths.to(padded.device))
        if packed.sorted_indices is not None:
            output = output.index_select(1, packed.sorted_indices)
            lengths = lengths[packed.sorted_indices.cpu()]
        valid = torch.arange(output.shape[0]).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B), sorted batch
        data = output[valid.to(output.device)]  # time-major: the packed layout
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n

    def _forward_stack(self, x: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """All layers and directions in one backend call (``gru_stack``), for eval calls that record no autograd;
        None sends the call down the per-layer path (no such backend method, a parameter that needs grad or lives
        outside the module's own dict). x: (T, B, I), hx: (L·D, B, H) or None -> ((T, B, D·H), (L·D, B, H)).

        A backend may also offer ``stack_guard``: the next eval calls as one builtin (``_fast_forward``) that checks
        in native code that nothing this path decides on has changed, and returns None to send a call here."""
        own = self._parameters
        weights = [own.get(name) for name in self._flat_weights_names]
        if any(w is None for w in weights):  # torch.nn.utils.parametrize, weight_norm: the per-layer path reads them
            return None
        if torch.is_grad_enabled() and (
            x.requires_grad or (hx is not None and hx.requires_grad) or any(w.requires_grad for w in weights)
        ):
            return None
        check_sequence(x, self.input_size, weights[0].dtype)
        directions = self._directions
        shape = (self.num_layers * directions, x.shape[1], self.hidden_size)
        if hx is not None:
            check_hidden(hx, shape, x.dtype)
        elif self.learn_init:
            hx = self.initial_state.unsqueeze(1).expand(shape)
        config = self._config(0, False)
        backend = gru_backend(x, config, None)
        stack = getattr(backend, "gru_stack", None)
        result = None if stack is None else stack(x, hx, weights, config, self.num_layers, directions)
        guard = getattr(backend, "stack_guard", None)
        if result is not None and guard is not None:
            names = list(own)
            if names == self._flat_weights_names + (["initial_state"] if self.learn_init else []):
                sizes = (self.num_layers, directions, self.input_size, self.hidden_size)
                self._fast_forward = guard(tuple(own.values()), self.learn_init, config, *sizes)
        return result

    def _forward_time_major(self, x: Tensor, hx: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: (T, B, I), hx: (L·D, B, H) or None, lengths: (B,) int64 or None -> ((T, B, D·H), (L·D, B, H))."""
        check_sequence(x, self.input_size, self.weight_ih_l0.dtype)
        directions, batch = self._directions, x.shape[1]
        shape = (self.num_layers * directions, batch, self.hidden_size)
        if hx is None:
            hx = self.initial_state.unsqueeze(1).expand(shape) if self.learn_init else x.new_zeros(shape)
        else:
            check_hidden(hx, shape, x.dtype)
        states = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                h0 = hx[layer * directions + direction]
                config = self._config(direction, self.training)
                backend = gru_backend(layer_input, config, lengths)
                weights, masks = self._layer_weights(layer, direction), self._masks(layer_input, h0)
                output, state = backend.gru_layer(layer_input, h0, weights, config, lengths, masks)
                outputs.append(output)
                states.append(state)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(states) if len(states) > 1 else states[0].unsqueeze(0)

    def _config(self, direction: int, training: bool) -> GRUConfig:
        fields = (
            self.reset_after,
            direction == 1 or self.reverse,
            self.layer_norm,
            self.zoneout,
            training and self.recurrent_dropout > 0,
            training,
        )
        return config_of(*fields)

    def _layer_weights(self, layer: int, direction: int) -> GRUWeights:
        suffix = self._suffix(layer, direction)

        def param(stem: str) -> Tensor:
            return parameter(self, stem + suffix)

        w_hh = param("weight_hh")
        if self.dropconnect > 0 and self.training:
            w_hh = F.dropout(w_hh, self.dropconnect, training=True)
        biases = (param("bias_ih"), param("bias_hh")) if self.bias else (None, None)
        norms = [param(stem) for stem in _LN_STEMS] if self.layer_norm else [None] * 4
        return GRUWeights(param("weight_ih"), w_hh, *biases, *norms)

    def _masks(self, x: Tensor, h0: Tensor) -> GRUMasks:
        """Sample the training masks of one layer and direction. x: (T, B, I), h0: (B, H)."""
        if not self.training:
            return NO_MASKS
        dropout_mask = zoneout_mask = None
        if self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            dropout_mask = torch.bernoulli(torch.full_like(h0, keep)) / keep
        if self.zoneout > 0:
            zoneout_mask = torch.bernoulli(h0.new_full((x.shape[0], *h0.shape), self.zoneout))
        return GRUMasks(recurrent_dropout=dropout_mask, zoneout=zoneout_mask)

    # ----------------------------------------------------------------------------------------- interop

    @classmethod
    def from_torch(cls, module: nn.GRU, **extensions: object) -> GRU:
        """A grukit GRU with ``module``'s arguments, device, dtype and weights (extensions may be added)."""
        if not isinstance(module, nn.GRU):
            raise TypeError(f"from_torch expects a torch.nn.GRU, got {type(module).__name__}")
        weight = module.weight_ih_l0
        args = {name: getattr(module, name) for name in _TORCH_ARGS}
        gru = cls(**args, device=weight.device, dtype=weight.dtype, **extensions)
        gru.load_state_dict(module.state_dict(), strict=not (gru.layer_norm or gru.learn_init))
        gru.train(module.training)
        return gru

    def to_torch(self) -> nn.GRU:
        """The equivalent torch.nn.GRU (same weights, device, dtype and mode).

        Raises ValueError for extensions nn.GRU cannot express (reset_after=False, layer_norm, zoneout,
        learn_init, reverse); recurrent_dropout and dropconnect act only in training and are dropped.
        """
        blocking = {
            "reset_after=False": not self.reset_after,
            "layer_norm=True": self.layer_norm,
            "zoneout>0": self.zoneout > 0,
            "learn_init=True": self.learn_init,
            "reverse=True": self.reverse,
        }
        used = [name for name, on in blocking.items() if on]
        if used:
            raise ValueError(f"torch.nn.GRU cannot express {', '.join(used)}; only the default GRU converts")
        weight = self.weight_ih_l0
        module = nn.GRU(**{name: getattr(self, name) for name in _TORCH_ARGS}, device=weight.device, dtype=weight.dtype)
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module
