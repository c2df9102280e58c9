"""Test-wide settings: one thread (2 shared cores), float64-friendly hypothesis profile."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "grukit",
    deadline=None,
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "30")),
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("grukit")
