"""Dispatch: fastest supporting backend, GRUKIT_BACKEND forcing, loud failures."""

from __future__ import annotations

import warnings

import pytest
import torch

import grukit
from grukit.backends import dispatch
from grukit.backends.reference import ReferenceBackend


class PickyBackend(ReferenceBackend):
    """Serves only reset_after=True calls; counts what it ran."""

    name = "picky"

    def __init__(self) -> None:
        self.ran = 0

    def supports_gru(self, x, config, lengths):
        return None if config.reset_after else "reset_after=False is not implemented"

    def gru_layer(self, *args, **kwargs):
        self.ran += 1
        return super().gru_layer(*args, **kwargs)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry for the test to add backends to."""
    monkeypatch.setattr(dispatch, "_loaders", dict(dispatch._loaders))
    monkeypatch.setattr(dispatch, "_order", list(dispatch._order))
    monkeypatch.setattr(dispatch, "_loaded", {})
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return dispatch


def test_highest_priority_supporting_backend_wins_and_unsupported_falls_back(registry):
    picky = PickyBackend()
    registry.register("picky", lambda: picky, priority=10)
    x = torch.randn(3, 2, 2)
    grukit.GRU(2, 3)(x)
    assert picky.ran == 1
    grukit.GRU(2, 3, reset_after=False)(x)  # silently served by the reference
    assert picky.ran == 1


def test_forced_backend_raises_naming_what_it_lacks(registry, monkeypatch):
    registry.register("picky", PickyBackend, priority=10)
    monkeypatch.setenv("GRUKIT_BACKEND", "picky")
    with pytest.raises(dispatch.BackendUnavailable, match="reset_after=False is not implemented"):
        grukit.GRU(2, 3, reset_after=False)(torch.randn(3, 2, 2))


def test_forcing_the_reference_beats_a_faster_backend(registry, monkeypatch):
    picky = PickyBackend()
    registry.register("picky", lambda: picky, priority=10)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    grukit.GRU(2, 3)(torch.randn(3, 2, 2))
    assert picky.ran == 0


def test_unknown_forced_backend_lists_the_names(registry, monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match=r"unknown grukit backend 'cuda-magic'.*reference"):
        grukit.GRU(2, 3)(torch.randn(3, 2, 2))


def test_backend_that_fails_to_build_warns_once_then_is_skipped(registry, monkeypatch):
    def broken():
        raise OSError("no C++ compiler found")

    registry.register("broken", broken, priority=10)
    x = torch.randn(3, 2, 2)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        grukit.GRU(2, 3)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grukit.GRU(2, 3)(x)  # no second warning
    monkeypatch.setenv("GRUKIT_BACKEND", "broken")
    with pytest.raises(dispatch.BackendUnavailable, match="failed to load"):
        grukit.GRU(2, 3)(x)
