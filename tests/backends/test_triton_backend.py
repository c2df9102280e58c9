"""The Triton backend: parity with the reference under the Triton interpreter, refusals, path choice, and every
kernel configuration compiled for sm_90 on the CPU (shared memory and register spills checked)."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: triton.jit reads it when kernels are defined

import json
import subprocess
import sys

import pytest

pytest.importorskip("triton")

import torch

import grukit
from grukit.backends import BackendUnavailable, dispatch
from grukit.backends.triton import configs
from grukit.backends.triton.compile_check import problems
from tests.backends.triton_helpers import max_diff as _max_diff
from tests.backends.triton_helpers import run as _run

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(configs.PATH_ENV, raising=False)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


# ------------------------------------------------------------------------------------------ GRU parity

VARIANTS = {
    # name: (GRU kwargs, T, B, I, H, lengths)
    "bidirectional-lengths": ({"bidirectional": True}, 6, 5, 6, 20, [6, 4, 1, 5, 0]),
    "reverse-nobias-2layers": ({"reverse": True, "bias": False, "num_layers": 2}, 4, 3, 4, 37, None),
    "batch18-lengths": ({}, 4, 18, 3, 16, [4, 3, 2, 1, 4, 4, 0, 2, 3, 1, 4, 2, 3, 3, 1, 4, 0, 2]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("path", configs.PATHS)
def test_float32_forward_and_backward_match_the_reference(monkeypatch, path, reset_after, variant):
    kwargs, steps, batch, inputs, hidden, lengths = VARIANTS[variant]
    torch.manual_seed(0)
    gru = grukit.GRU(inputs, hidden, reset_after=reset_after, **kwargs)
    x = torch.randn(steps, batch, inputs)
    layers = gru.num_layers * (2 if gru.bidirectional else 1)
    h0 = torch.randn(layers, batch, hidden)
    lengths = None if lengths is None else torch.tensor(lengths)
    got = _run(gru, "triton", monkeypatch, x, h0, lengths, path=path)
    want = _run(gru, "reference", monkeypatch, x, h0, lengths)
    assert _max_diff(got, want) <= 1e-5


def test_eval_without_grad_matches_the_reference(monkeypatch):
    torch.manual_seed(1)
    gru = grukit.GRU(3, 24, bidirectional=True).eval()
    x = torch.randn(6, 4, 3)
    with torch.no_grad():
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        got = gru(x)
        monkeypatch.setenv(dispatch.ENV_VAR, "reference")
        want = gru(x)
    assert _max_diff(got, want) <= 1e-5


@pytest.mark.parametrize("path", configs.PATHS)
def test_float16_is_as_accurate_as_the_reference(monkeypatch, path):
    """Both float16 runs are compared with a float64 reference. float16 keeps 11 significant bits (unit roundoff
    2^-11 = 4.9e-4): inputs, weights and the input projection are rounded to it, and so are the outputs, which
    lie in (-1, 1) (spacing up to 9.8e-4). The Triton kernels carry the state and accumulate in float32, so their
    error must stay within a few such roundings (forward 4e-3, about 4 ulps at 1, and gradients 2e-2 of their
    scale: the backward kernels carry dL/dh in float32 but take float16 operands in their dots) and not above
    twice the reference's own."""
    torch.manual_seed(2)
    gru64 = grukit.GRU(5, 32, bidirectional=True).double()
    x = torch.randn(8, 4, 5, dtype=torch.float64)
    h0 = 0.5 * torch.randn(2, 4, 32, dtype=torch.float64)
    lengths = torch.tensor([8, 5, 3, 8])
    exact = _run(gru64, "reference", monkeypatch, x, h0, lengths)
    gru16 = grukit.GRU(5, 32, bidirectional=True, dtype=F16)
    gru16.load_state_dict(gru64.state_dict())
    got = _run(gru16, "triton", monkeypatch, x.half(), h0.half(), lengths, path=path)
    ref16 = _run(gru16, "reference", monkeypatch, x.half(), h0.half(), lengths)
    assert got[0].dtype == F16 and got[1].dtype == F16
    forward, backward = slice(0, 2), slice(2, None)
    assert _max_diff(got[forward], exact[forward]) <= 4e-3
    assert _max_diff(got[forward], exact[forward]) <= 2 * _max_diff(ref16[forward], exact[forward]) + 1e-3
    for g, e, r in zip(got[backward], exact[backward], ref16[backward], strict=True):
        scale = e.abs().max().item()
        assert (g.double() - e).abs().max().item() <= 2e-2 * scale
        assert (g.double() - e).abs().max().item() <= 2 * (r.double() - e).abs().max().item() + 1e-3 * scale


def test_bfloat16_runs_in_float32_under_the_interpreter(monkeypatch):
    torch.manual_seed(3)
    gru = grukit.GRU(4, 16, dtype=BF16)
    x = torch.randn(5, 3, 4, dtype=BF16)
    got = _run(gru, "triton", monkeypatch, x)
    want = _run(gru, "reference", monkeypatch, x)
    assert got[0].dtype == BF16 and got[2].dtype == BF16
    assert _max_diff(got[:2], want[:2]) <= 2e-2  # bf16 spacing at 1 is 7.8e-3; the reference rounds every step


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kwargs", "dtype", "training", "reason"),
    [
        ({"layer_norm": True}, F32, False, "layer_norm is not implemented"),
        ({"zoneout": 0.1}, F32, True, "zoneout is not implemented"),
        ({}, torch.float64, False, "dtype torch.float64"),
        ({"recurrent_dropout": 0.2}, F32, True, "recurrent_dropout is not implemented"),
    ],
    ids=["layer_norm", "zoneout", "float64", "recurrent_dropout"],
)
def test_forced_triton_raises_naming_what_it_lacks(monkeypatch, kwargs, dtype, training, reason):
    gru = grukit.GRU(3, 8, dtype=dtype, **kwargs).train(training)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(BackendUnavailable, match=reason):
        gru(torch.randn(4, 2, 3, dtype=dtype))


def test_cpu_tensors_are_served_only_when_forced_under_the_interpreter(monkeypatch):
    backend = dispatch.load("triton")
    x = torch.randn(4, 2, 3)
    config = grukit.backends.GRUConfig()
    assert "unless GRUKIT_BACKEND=triton" in backend.supports_gru(x, config, None)  # unforced: never picked on CPU
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert backend.supports_gru(x, config, None) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in backend.supports_gru(x, config, None)


def test_cpu_users_without_the_interpreter_get_no_warning_and_no_triton_import():
    """A fresh process without TRITON_INTERPRET: the triton loader stays silent and never imports triton; with the
    interpreter but no triton package, loading fails with a message that says what to install."""
    script = """
import sys, warnings
warnings.filterwarnings("error", message=".*triton")  # (another backend's build warning is not ours to judge)
import torch, grukit
from grukit.backends import dispatch
grukit.GRU(3, 4)(torch.randn(5, 2, 3))
assert dispatch.load("triton") is not None
assert "triton" not in sys.modules, "triton was imported"
import os
os.environ["TRITON_INTERPRET"] = "1"
sys.modules["triton"] = None  # as if triton were not installed
from grukit.backends.triton import load_backend
try:
    load_backend()
except RuntimeError as err:
    assert "pip install triton" in str(err), err
else:
    raise AssertionError("load_backend did not raise without triton")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", dispatch.ENV_VAR)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ path choice


def test_forcing_the_persistent_path_beyond_its_limit_raises(monkeypatch):
    monkeypatch.setenv(configs.PATH_ENV, "persistent")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="hidden_size 65 > 64"):
        grukit.GRU(2, 65)(torch.randn(2, 1, 2))


def test_automatic_path_choice():
    assert configs.choose_path(8, 64, F32) == "persistent"
    assert configs.choose_path(8, 65, F32) == "step"
    assert configs.choose_path(8, 128, F16) == "persistent"
    assert configs.choose_path(8, 129, BF16) == "step"
    assert configs.choose_path(16 * configs.PERSISTENT_MAX_PROGRAMS + 1, 32, F16) == "step"


def test_every_config_the_backend_can_launch_is_listed():
    listed = set(configs.all_configs())
    for dtype in configs.DTYPES:
        for reset_after in (True, False):
            for batch in (1, 8, 16, 17, 64, 512, 5000):
                assert set(configs.step_configs(dtype, batch, reset_after)) <= listed
                assert set(configs.bwd_step_configs(dtype, batch, reset_after)) - {None} <= listed
                for hidden in (1, 20, 32, 33, 64, 100, 128, 129, 1024):
                    if configs.persistent_fits(batch, hidden, dtype) is None:
                        assert configs.persistent_config(dtype, hidden, reset_after) in listed
                        assert configs.persistent_bwd_config(dtype, hidden, reset_after) in listed
        assert {configs.scan_config(dtype), configs.scan_bwd_config(dtype)} <= listed


# ------------------------------------------------------------------------------------------ MinGRU


def test_mingru_scan_matches_the_float64_reference(monkeypatch):
    torch.manual_seed(4)
    mingru64 = grukit.MinGRU(5, 24).double()
    x = torch.randn(40, 2, 5, dtype=torch.float64)  # two scan chunks of 32, the last one partial
    h0 = torch.randn(1, 2, 24, dtype=torch.float64)
    exact = _run(mingru64, "reference", monkeypatch, x, h0)
    mingru = grukit.MinGRU(5, 24)  # (the interpreter's generic associative_scan is slow: keep T small)
    mingru.load_state_dict(mingru64.state_dict())
    got = _run(mingru, "triton", monkeypatch, x.float(), h0.float())
    for g, e in zip(got, exact, strict=True):
        assert (g.double() - e).abs().max().item() <= 1e-5 * max(1.0, e.abs().max().item())


def test_mingru_without_h0_and_streaming_match_the_reference(monkeypatch):
    torch.manual_seed(5)
    mingru = grukit.MinGRU(3, 16, bias=False)
    x = torch.randn(10, 2, 3)
    got = _run(mingru, "triton", monkeypatch, x)
    want = _run(mingru, "reference", monkeypatch, x)
    assert _max_diff(got, want) <= 1e-5
    with torch.no_grad():
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        streamed = mingru.stream_chunk(x[:4], None)
        streamed = mingru.stream_chunk(x[4:], streamed[1])
    assert _max_diff([streamed[1]], [want[1]]) <= 1e-5


# ------------------------------------------------------------------------------------------ sm_90 compilation

_CONFIGS = configs.all_configs()


@pytest.fixture(scope="module", autouse=True)
def _compile_workers(request):
    """Start compiling every configuration for sm_90 in two worker processes (TRITON_INTERPRET unset there) when
    the module starts, so that compilation (about a minute of CPU) overlaps the interpreter tests."""
    if not any("compiles_for_sm90" in item.name for item in request.session.items):
        yield []
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    indices = [str(i) for i in range(len(_CONFIGS))]
    cmd = [sys.executable, "-m", "grukit.backends.triton.compile_check"]
    workers = [
        subprocess.Popen([*cmd, *part], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for part in (indices[0::2], indices[1::2])
    ]
    yield workers
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


@pytest.fixture(scope="module")
def compiled(_compile_workers):
    """index -> the compile_check report of that configuration."""
    reports = {}
    for worker in _compile_workers:
        out, err = worker.communicate(timeout=600)
        if worker.returncode not in (0, 1):  # 1: some configuration has problems, reported per test below
            pytest.fail(f"compile_check failed:\n{err[-4000:]}")
        for line in out.splitlines():
            report = json.loads(line)
            reports[report["index"]] = report
    return reports


@pytest.mark.parametrize("index", range(len(_CONFIGS)), ids=[c.describe() for c in _CONFIGS])
def test_config_compiles_for_sm90_within_shared_memory_and_without_spills(compiled, index):
    report = compiled[index]
    assert problems(report) == [], report
