"""Weights in and out of Keras 3 ``GRU`` and ``Bidirectional(GRU)`` layers (no Keras import needed).

Keras stores one layer (one direction) as the arrays ``layer.get_weights()`` returns, gates in (z, r, h)
order and matrices transposed relative to PyTorch:

    kernel            (I, 3H)    = W_ih.T
    recurrent_kernel  (H, 3H)    = W_hh.T
    bias              (2, 3H)    = [b_ih; b_hh]        reset_after=True (Keras' default, PyTorch's form)
                      (3H,)      = b_ih + b_hh         reset_after=False (one bias, outside the reset gate)
                      absent                           use_bias=False (grukit bias=False)

``Bidirectional(GRU(...)).get_weights()`` is the forward layer's arrays followed by the backward layer's.
Keras has no multi-layer GRU: a stacked grukit GRU maps to a list with one entry per Keras layer (each
with ``return_sequences=True``). Keras' activations must be the defaults (``activation="tanh"``,
``recurrent_activation="sigmoid"``).

Direction: a grukit ``reverse=True`` GRU is a Keras ``GRU(go_backwards=True)`` with the same weights, but
Keras returns that layer's sequence in processing order, i.e. reversed in time (``output[:, 0]`` is the
state after the *last* input step); grukit and ONNX return it in input time order. ``Bidirectional``
flips its backward layer's sequence back before merging, so its concatenated output is in input time order,
exactly like grukit's bidirectional output (verified against Keras 3 in tests/interop/test_keras.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from grukit.interop.gates import torch_to_zrh, zrh_to_torch
from grukit.nn.gru import GRU


def _numpy(param: torch.Tensor) -> np.ndarray:
    """A parameter as a host numpy array in its own dtype (bfloat16, which numpy lacks, becomes float32)."""
    param = param.detach().cpu()
    if param.dtype == torch.bfloat16:
        param = param.float()
    return param.numpy()


def _keras_blocking(gru: GRU) -> list[str]:
    """The grukit extensions that a Keras GRU cannot express (training-only ones are not listed)."""
    blocking = {
        "layer_norm=True (Keras GRU has no layer normalisation)": gru.layer_norm,
        "zoneout>0 (Keras GRU has no zoneout; its eval-mode expectation is not a plain GRU)": gru.zoneout > 0,
        "learn_init=True (Keras GRU weights carry no initial state; pass gru.initial_state to the Keras layer "
        "as initial_state at call time and export a copy built with learn_init=False)": gru.learn_init,
    }
    return [name for name, used in blocking.items() if used]


def to_keras_weights(gru: GRU, *, reset_after: bool | None = None) -> list[list[np.ndarray]]:
    """The weights of each layer of ``gru`` as Keras' ``get_weights()`` returns them.

    Returns one list per layer: ``[kernel (I, 3H), recurrent_kernel (H, 3H), bias]`` for a unidirectional GRU
    (bias (2, 3H) when ``gru.reset_after`` is True, (3H,) = b_ih + b_hh when False, left out when
    ``gru.bias`` is False: Keras ``use_bias=False``), and the forward layer's arrays followed by the backward
    layer's for a bidirectional one (what ``Bidirectional(GRU(...)).get_weights()`` returns). Layer k > 0 has
    I = D·H. Arrays are host copies in the parameters' dtype.

    reset_after: the Keras layer's ``reset_after``; by default ``gru.reset_after``. It must match the GRU:
    Keras' single bias of ``reset_after=False`` (b_ih + b_hh) is exact only for the Cho form, where b_hn sits
    outside the reset gate; a grukit ``reset_after=True`` GRU has it inside and cannot be expressed.

    Raises ValueError for ``layer_norm``, ``zoneout`` > 0 and ``learn_init``, which a Keras GRU cannot hold.
    ``recurrent_dropout`` and ``dropconnect`` act only in training and are not part of the weights. A
    ``reverse=True`` GRU exports as-is: use it in a Keras ``GRU(go_backwards=True)`` (whose sequence output
    is reversed in time, see the module docstring).
    """
    if not isinstance(gru, GRU):
        raise TypeError(f"to_keras_weights expects a grukit.nn.GRU, got {type(gru).__name__}")
    keras_reset_after = gru.reset_after if reset_after is None else bool(reset_after)
    if keras_reset_after != gru.reset_after:
        if not keras_reset_after:
            raise ValueError(
                "Keras reset_after=False stores one bias b_ih + b_hh, which is exact only for a GRU with "
                "reset_after=False (b_hn outside the reset gate); this grukit GRU has reset_after=True"
            )
        raise ValueError(
            "Keras reset_after=True computes PyTorch's form r * (W_hn h + b_hn); this grukit GRU has "
            "reset_after=False (the Cho form), so its weights do not give the same function there"
        )
    blocking = _keras_blocking(gru)
    if blocking:
        raise ValueError(f"a Keras GRU cannot express {'; '.join(blocking)}")
    layers: list[list[np.ndarray]] = []
    for layer in range(gru.num_layers):
        arrays: list[np.ndarray] = []
        for direction in range(2 if gru.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            w_ih = _numpy(getattr(gru, f"weight_ih{suffix}"))  # (3H, I)
            w_hh = _numpy(getattr(gru, f"weight_hh{suffix}"))  # (3H, H)
            arrays += [torch_to_zrh(w_ih).T.copy(), torch_to_zrh(w_hh).T.copy()]
            if gru.bias:
                b_ih = torch_to_zrh(_numpy(getattr(gru, f"bias_ih{suffix}")))  # (3H,)
                b_hh = torch_to_zrh(_numpy(getattr(gru, f"bias_hh{suffix}")))  # (3H,)
                arrays.append(np.stack([b_ih, b_hh]) if gru.reset_after else b_ih + b_hh)
        layers.append(arrays)
    return layers


def _check_inferred(gru_kwargs: dict[str, Any], inferred: dict[str, Any], source: str) -> None:
    """Arguments that the weights fix may be passed only with the value the weights give."""
    for name, value in inferred.items():
        if name in gru_kwargs and gru_kwargs.pop(name) != value:
            raise ValueError(f"{name} is fixed by the {source} weights to {value!r}; do not pass a different value")


def from_keras_weights(
    layers: Sequence[Sequence[np.ndarray]],
    *,
    reset_after: bool = True,
    bidirectional: bool = False,
    batch_first: bool = True,
    **gru_kwargs: Any,
) -> GRU:
    """A grukit GRU holding Keras GRU weights: ``layers[k]`` is ``get_weights()`` of Keras layer k.

    layers: one entry per stacked Keras layer, each ``[kernel (I, 3H), recurrent_kernel (H, 3H), bias]``
    (bias (2, 3H) for ``reset_after=True``, (3H,) for ``reset_after=False``, absent for ``use_bias=False``),
    or forward then backward arrays (6 or 4) of a ``Bidirectional(GRU)`` when ``bidirectional``. Sizes,
    ``num_layers`` and ``bias`` are inferred; layer k > 0 must take I = D·H.

    reset_after: the Keras layers' ``reset_after`` (Keras' default True). A (3H,) bias of ``reset_after=False``
    goes to ``bias_ih`` with ``bias_hh`` = 0 (the Cho form adds both outside the reset gate, so this is exact).
    batch_first: Keras' layout (B, T, I), the default here. Other keyword arguments (``dtype``, ``device``,
    ``reverse`` for a ``go_backwards=True`` layer, training-only extensions ...) go to ``GRU``; the dtype
    defaults to the kernels'.
    """
    if isinstance(layers, np.ndarray) or not layers or isinstance(layers[0], np.ndarray):
        raise TypeError(
            "layers must be a list with one get_weights() list per Keras layer, e.g. [layer.get_weights()] "
            "for a single layer"
        )
    directions = 2 if bidirectional else 1
    arrays = [[np.asarray(a) for a in layer] for layer in layers]
    counts = {len(layer) for layer in arrays}
    per_direction = len(arrays[0]) // directions
    if len(counts) != 1 or len(arrays[0]) % directions or per_direction not in (2, 3):
        expected = "6 (or 4 without bias)" if bidirectional else "3 (or 2 without bias)"
        raise ValueError(
            f"each layer needs {expected} arrays for bidirectional={bidirectional}, got {sorted(counts)} "
            "(all layers must have the same count)"
        )
    use_bias = per_direction == 3
    kernel, recurrent = arrays[0][0], arrays[0][1]
    if recurrent.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"kernel and recurrent_kernel must be 2-D, got shapes {kernel.shape} and {recurrent.shape}")
    hidden = recurrent.shape[0]
    bias_shape = (2, 3 * hidden) if reset_after else (3 * hidden,)
    for k, layer in enumerate(arrays):
        input_size = kernel.shape[0] if k == 0 else directions * hidden
        for d in range(directions):
            named = zip(
                ("kernel", "recurrent_kernel", "bias"), layer[d * per_direction : (d + 1) * per_direction], strict=False
            )
            expected = {
                "kernel": (input_size, 3 * hidden),
                "recurrent_kernel": (hidden, 3 * hidden),
                "bias": bias_shape,
            }
            for name, array in named:
                if array.shape != expected[name]:
                    hint = ""
                    if name == "bias" and array.ndim != len(bias_shape) and array.size in (3 * hidden, 6 * hidden):
                        hint = f"; a bias of shape {array.shape} belongs to reset_after={not reset_after}"
                    raise ValueError(
                        f"layer {k} direction {d}: {name} must have shape {expected[name]} for hidden_size={hidden}, "
                        f"reset_after={reset_after}, got {array.shape}{hint}"
                    )
    _check_inferred(
        gru_kwargs,
        {"input_size": kernel.shape[0], "hidden_size": hidden, "num_layers": len(arrays), "bias": use_bias},
        "Keras",
    )
    gru_kwargs.setdefault("dtype", torch.from_numpy(np.ascontiguousarray(kernel)).dtype)
    gru = GRU(
        kernel.shape[0],
        hidden,
        len(arrays),
        bias=use_bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        reset_after=reset_after,
        **gru_kwargs,
    )
    with torch.no_grad():
        for k, layer in enumerate(arrays):
            for d in range(directions):
                suffix = f"_l{k}" + ("_reverse" if d == 1 else "")
                kernel, recurrent, *bias = layer[d * per_direction : (d + 1) * per_direction]
                values = {"weight_ih": zrh_to_torch(kernel.T), "weight_hh": zrh_to_torch(recurrent.T)}
                if use_bias:
                    if reset_after:
                        values["bias_ih"], values["bias_hh"] = zrh_to_torch(bias[0][0]), zrh_to_torch(bias[0][1])
                    else:
                        values["bias_ih"], values["bias_hh"] = zrh_to_torch(bias[0]), np.zeros_like(bias[0])
                for stem, value in values.items():
                    param = getattr(gru, stem + suffix)
                    param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))
    return gru
