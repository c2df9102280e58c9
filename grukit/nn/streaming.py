"""Streaming for unidirectional recurrent layers: one step at a time, or chunk by chunk with carried state."""

from __future__ import annotations

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
