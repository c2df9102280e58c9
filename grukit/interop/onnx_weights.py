"""Weights in and out of the ONNX ``GRU`` operator's layout (no onnx import needed).

The ONNX GRU operator (opset 7 onwards) holds one layer, all its directions, gates in (z, r, h) order:

    W  (D, 3H, I)   = stack over directions of W_ih
    R  (D, 3H, H)   = stack over directions of W_hh
    B  (D, 6H)      = [b_ih, b_hh] per direction (zeros for bias=False)
    direction            "forward" | "reverse" (grukit reverse=True) | "bidirectional" (forward first)
    linear_before_reset  1 = PyTorch's form (grukit reset_after=True), 0 = Cho's (reset_after=False)

Activations are the defaults (Sigmoid, Tanh) and there is no ``clip``. A grukit GRU with ``learn_init``
adds ``initial_h`` (D, H) per layer: the learned initial state, which ONNX feeds as the operator's
``initial_h`` input (D, B, H) broadcast over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from grukit.interop.gates import torch_to_zrh, zrh_to_torch
from grukit.nn.gru import GRU

_DIRECTIONS = {"forward": (1, False), "reverse": (1, True), "bidirectional": (2, False)}


def _numpy(param: torch.Tensor) -> np.ndarray:
    """A parameter as a host numpy array in its own dtype (bfloat16, which numpy lacks, becomes float32)."""
    param = param.detach().cpu()
    if param.dtype == torch.bfloat16:
        param = param.float()
    return param.numpy()


def onnx_direction(gru: GRU) -> str:
    """The ONNX GRU ``direction`` attribute of ``gru``: "forward", "reverse" or "bidirectional"."""
    if gru.bidirectional:
        return "bidirectional"
    return "reverse" if gru.reverse else "forward"


def check_onnx_expressible(gru: GRU) -> None:
    """Raise ValueError naming each extension of ``gru`` that the ONNX GRU operator cannot compute in eval.

    ``recurrent_dropout``, ``dropconnect`` and inter-layer ``dropout`` act only in training and pass.
    """
    if not isinstance(gru, GRU):
        raise TypeError(f"expected a grukit.nn.GRU, got {type(gru).__name__}")
    blocking = {
        "layer_norm=True (the ONNX GRU operator has no layer normalisation of its gate pre-activations)": (
            gru.layer_norm
        ),
        f"zoneout={gru.zoneout} (in eval zoneout mixes h_t with h_(t-1) by its probability, a step the ONNX GRU "
        "operator has no attribute for)": gru.zoneout > 0,
    }
    used = [name for name, on in blocking.items() if on]
    if used:
        raise ValueError(f"the ONNX GRU operator cannot express {'; '.join(used)}")


def to_onnx_weights(gru: GRU) -> list[dict[str, Any]]:
    """The weights of each layer of ``gru`` in the ONNX GRU operator's layout (see the module docstring).

    Returns one dict per layer with ``W`` (D, 3H, I), ``R`` (D, 3H, H), ``B`` (D, 6H), ``direction``,
    ``linear_before_reset`` (1 for reset_after=True, else 0), ``hidden_size`` and, with ``learn_init``,
    ``initial_h`` (D, H). Layer k > 0 has I = D·H. Arrays are host copies in the parameters' dtype.
    Raises ValueError for ``layer_norm`` and ``zoneout`` > 0.
    """
    check_onnx_expressible(gru)
    directions = 2 if gru.bidirectional else 1
    hidden = gru.hidden_size
    layers = []
    for layer in range(gru.num_layers):
        w, r, b = [], [], []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            w.append(torch_to_zrh(_numpy(getattr(gru, f"weight_ih{suffix}"))))
            r.append(torch_to_zrh(_numpy(getattr(gru, f"weight_hh{suffix}"))))
            if gru.bias:
                b_ih = torch_to_zrh(_numpy(getattr(gru, f"bias_ih{suffix}")))
                b_hh = torch_to_zrh(_numpy(getattr(gru, f"bias_hh{suffix}")))
                b.append(np.concatenate([b_ih, b_hh]))
            else:
                b.append(np.zeros(6 * hidden, dtype=w[-1].dtype))
        entry: dict[str, Any] = {
            "W": np.stack(w),
            "R": np.stack(r),
            "B": np.stack(b),
            "direction": onnx_direction(gru),
            "linear_before_reset": int(gru.reset_after),
            "hidden_size": hidden,
        }
        if gru.learn_init:
            entry["initial_h"] = _numpy(gru.initial_state)[layer * directions : (layer + 1) * directions].copy()
        layers.append(entry)
    return layers


def from_onnx_weights(layers: Sequence[Mapping[str, Any]], **gru_kwargs: Any) -> GRU:
    """A grukit GRU holding ONNX GRU weights, one ``layers`` entry per stacked GRU operator.

    Each entry: ``W`` (D, 3H, I), ``R`` (D, 3H, H), optional ``B`` (D, 6H), ``direction`` (default "forward"),
    ``linear_before_reset`` (default 0, as in ONNX), optional ``hidden_size`` and ``initial_h`` (D, H).
    Sizes, ``num_layers``, ``bidirectional``, ``reverse``, ``reset_after``, ``bias`` (True when every entry has
    ``B``; pass ``bias=False`` to drop an all-zero ``B``) and ``learn_init`` (True when every entry has
    ``initial_h``) are inferred; other keyword arguments (``batch_first``, ``dtype``, ``device``, training-only
    extensions ...) go to ``GRU``. The dtype defaults to W's.
    """
    if isinstance(layers, Mapping) or not layers:
        raise TypeError("layers must be a non-empty list with one dict per ONNX GRU operator (layer)")
    first = layers[0]
    for k, entry in enumerate(layers):
        missing = [key for key in ("W", "R") if key not in entry]
        if missing:
            raise ValueError(f"layer {k} lacks {missing}: each entry needs at least W (D, 3H, I) and R (D, 3H, H)")
    direction = first.get("direction", "forward")
    linear_before_reset = int(first.get("linear_before_reset", 0))
    for k, entry in enumerate(layers):
        if entry.get("direction", "forward") != direction:
            raise ValueError(
                f"layer {k} has direction {entry.get('direction')!r}, layer 0 {direction!r}: all must match"
            )
        if int(entry.get("linear_before_reset", 0)) != linear_before_reset:
            raise ValueError("linear_before_reset must be the same in every layer (grukit has one reset_after)")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {list(_DIRECTIONS)}, got {direction!r}")
    if linear_before_reset not in (0, 1):
        raise ValueError(f"linear_before_reset must be 0 or 1, got {linear_before_reset}")
    directions, reverse = _DIRECTIONS[direction]
    w0, r0 = np.asarray(first["W"]), np.asarray(first["R"])
    if r0.ndim != 3 or w0.ndim != 3:
        raise ValueError(f"W and R must be 3-D (D, 3H, I) and (D, 3H, H), got shapes {w0.shape} and {r0.shape}")
    hidden = r0.shape[2]
    input_size = w0.shape[2]
    has_bias = all("B" in entry and entry["B"] is not None for entry in layers)
    has_init = ["initial_h" in entry and entry["initial_h"] is not None for entry in layers]
    if any(has_init) and not all(has_init):
        raise ValueError("initial_h must be given for every layer or for none")
    for k, entry in enumerate(layers):
        expected = {
            "W": (directions, 3 * hidden, input_size if k == 0 else directions * hidden),
            "R": (directions, 3 * hidden, hidden),
            "B": (directions, 6 * hidden),
            "initial_h": (directions, hidden),
        }
        for key, shape in expected.items():
            if entry.get(key) is not None and np.shape(entry[key]) != shape:
                raise ValueError(
                    f"layer {k}: {key} must have shape {shape} for direction={direction!r}, hidden_size={hidden}, "
                    f"got {np.shape(entry[key])}"
                )
        if "hidden_size" in entry and int(entry["hidden_size"]) != hidden:
            raise ValueError(f"layer {k}: hidden_size={entry['hidden_size']} but R has hidden size {hidden}")
    bias = gru_kwargs.pop("bias", has_bias)
    if bias and not has_bias:
        raise ValueError("bias=True needs B in every layer")
    if not bias and has_bias and any(np.any(np.asarray(entry["B"]) != 0) for entry in layers):
        raise ValueError("bias=False would drop the non-zero biases in B")
    learn_init = gru_kwargs.pop("learn_init", all(has_init))
    if not learn_init and all(has_init):
        raise ValueError("learn_init=False would drop the learned initial_h of the weights")
    inferred = {
        "input_size": input_size,
        "hidden_size": hidden,
        "num_layers": len(layers),
        "bidirectional": directions == 2,
        "reverse": reverse,
        "reset_after": bool(linear_before_reset),
    }
    for name, value in inferred.items():
        if name in gru_kwargs and gru_kwargs.pop(name) != value:
            raise ValueError(f"{name} is fixed by the ONNX weights to {value!r}; do not pass a different value")
    gru_kwargs.setdefault("dtype", torch.from_numpy(np.ascontiguousarray(w0)).dtype)
    gru = GRU(
        input_size,
        hidden,
        len(layers),
        bias=bias,
        bidirectional=directions == 2,
        reverse=reverse,
        reset_after=bool(linear_before_reset),
        learn_init=learn_init,
        **gru_kwargs,
    )
    with torch.no_grad():
        for k, entry in enumerate(layers):
            for d in range(directions):
                suffix = f"_l{k}" + ("_reverse" if d == 1 else "")
                values = {
                    "weight_ih": zrh_to_torch(np.asarray(entry["W"])[d]),
                    "weight_hh": zrh_to_torch(np.asarray(entry["R"])[d]),
                }
                if bias:
                    b = np.asarray(entry["B"])[d]
                    values["bias_ih"], values["bias_hh"] = zrh_to_torch(b[: 3 * hidden]), zrh_to_torch(b[3 * hidden :])
                for stem, value in values.items():
                    param = getattr(gru, stem + suffix)
                    param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))
            if learn_init and all(has_init):
                init = torch.from_numpy(np.ascontiguousarray(entry["initial_h"]))
                gru.initial_state[k * directions : (k + 1) * directions].copy_(init.to(gru.initial_state.dtype))
    return gru
