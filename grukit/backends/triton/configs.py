"""Every kernel configuration the Triton backend can launch, and how it picks one (no triton import here).

The compile tests build each entry of ``all_configs()`` for sm_90 and check shared memory and register spills,
so anything the backend may launch must come from the functions below.

Paths for a GRU layer:
  persistent: one launch per layer and direction, W_hh on chip, the time loop inside the kernel; one program
      per BLOCK_B batch rows. Only where all of W_hh^T fits one program: H <= PERSISTENT_MAX_H (three padded
      (BLOCK_H, BLOCK_H) tiles), and while the programs fit the GPU at once.
  step: one launch per time step (two for reset_after=False), a tiled GEMM with the gate math in its epilogue.
The backward through time runs on the forward's path: the persistent backward kernel (same tiles and warps), or
T + 1 fused per-step launches (plus T for reset_after=False's reset gate).
The environment variable GRUKIT_TRITON_PATH (``persistent`` / ``step``) forces one path; tests use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PATH_ENV = "GRUKIT_TRITON_PATH"
PATHS = ("persistent", "step")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

PERSISTENT_BLOCK_B = 16
PERSISTENT_MAX_H = {torch.float32: 64, torch.float16: 128, torch.bfloat16: 128}
"""Largest H the persistent kernel serves per dtype. Three padded (BLOCK_H, BLOCK_H) tiles of W_hh^T stay on chip
for the whole loop: at BLOCK_H = 128 that is 96 KiB in 16-bit, compiled for sm_90 without spills (8 warps); in
float32 (192 KiB, IEEE dots on FMA units) it spills at 8 and at 16 warps, so float32 stops at 64. The next power
of two, 256, is 384 / 768 KiB: over the 227 KiB an sm_90 block may use. Larger H needs W_hh split across
programs with a grid-wide step barrier, which is not written yet: such calls take the per-step path. The persistent
backward kernel holds the same three tiles (untransposed) and fits the same limits: 188 KiB of shared memory at
BLOCK_H = 128 in 16-bit and 108 KiB at 64 in float32, without spills (the sm_90 compile tests hold every entry)."""
PERSISTENT_MAX_PROGRAMS = 132
"""At most this many persistent programs (an H100 has 132 SMs): past it, the per-step path is used."""

SCAN_BLOCK_T = 32
SCAN_BLOCK_N = 32


@dataclass(frozen=True)
class KernelConfig:
    """One compiled variant: the kernel's name in ``kernels.py``, the dtype of its inputs and weights, its
    compile-time constants and its warp count."""

    kernel: str
    dtype: torch.dtype
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int

    @property
    def consts(self) -> dict[str, object]:
        return dict(self.constexprs)

    def describe(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.kernel}[{_TYPE_NAMES[self.dtype]},{consts},warps={self.num_warps}]"


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def forced_path() -> str | None:
    """The path forced by GRUKIT_TRITON_PATH, or None (automatic)."""
    value = os.environ.get(PATH_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in PATHS:
        raise ValueError(f"{PATH_ENV}={value!r}: choose one of {PATHS} or unset it")
    return value


def persistent_fits(batch: int, hidden: int, dtype: torch.dtype) -> str | None:
    """None when the persistent kernel can serve (B, H) in ``dtype``, else why not."""
    limit = PERSISTENT_MAX_H[dtype]
    if hidden > limit:
        return f"hidden_size {hidden} > {limit} in {dtype} (W_hh^T does not fit one program on chip)"
    if -(-batch // PERSISTENT_BLOCK_B) > PERSISTENT_MAX_PROGRAMS:
        return f"batch {batch} needs more than {PERSISTENT_MAX_PROGRAMS} programs"
    return None


def choose_path(batch: int, hidden: int, dtype: torch.dtype) -> str:
    """'persistent' or 'step' for a GRU layer of batch B, hidden size H and compute dtype (raises ValueError if a
    forced path cannot serve it)."""
    forced = forced_path()
    if forced == "persistent":
        reason = persistent_fits(batch, hidden, dtype)
        if reason is not None:
            raise ValueError(f"{PATH_ENV}=persistent cannot serve this call: {reason}")
    if forced is not None:
        return forced
    return "persistent" if persistent_fits(batch, hidden, dtype) is None else "step"


def _precision(dtype: torch.dtype) -> str:
    # float32 dots in IEEE fp32 (TF32 would break the 1e-5 parity of the backend contract); 16-bit dots ignore it.
    return "ieee"


def persistent_config(dtype: torch.dtype, hidden: int, reset_after: bool) -> KernelConfig:
    block_h = max(32, _next_pow2(hidden))
    consts = (
        ("RESET_AFTER", reset_after),
        ("BLOCK_B", PERSISTENT_BLOCK_B),
        ("BLOCK_H", block_h),
        ("PRECISION", _precision(dtype)),
    )
    warps = 8 if block_h >= 128 or (dtype == torch.float32 and block_h >= 64) else 4
    return KernelConfig("gru_persistent_kernel", dtype, consts, num_warps=warps)


def persistent_bwd_config(dtype: torch.dtype, hidden: int, reset_after: bool) -> KernelConfig:
    """The persistent backward kernel, for the layers whose forward ran on the persistent path."""
    forward = persistent_config(dtype, hidden, reset_after)
    return KernelConfig("gru_persistent_bwd_kernel", dtype, forward.constexprs, forward.num_warps)


def _step_consts(dtype: torch.dtype, batch: int) -> tuple[tuple[tuple[str, object], ...], int]:
    """(BLOCK_B, BLOCK_H, BLOCK_K, PRECISION) constants and warp count of the per-step kernels."""
    block_b = 16 if batch <= 16 else 64
    # float32 at BLOCK_K = 32 spills (the forward's save stores at BLOCK_B = 16, the backward at BLOCK_B = 64)
    block_h, block_k = (32, 16) if dtype == torch.float32 else (64, 64)
    consts = (("BLOCK_B", block_b), ("BLOCK_H", block_h), ("BLOCK_K", block_k), ("PRECISION", _precision(dtype)))
    # 16-bit at BLOCK_B = 64 spills at 4 warps (three (64, 64) float32 accumulators)
    warps = 8 if block_b >= 64 and dtype != torch.float32 else 4
    return consts, warps


def step_configs(dtype: torch.dtype, batch: int, reset_after: bool) -> tuple[KernelConfig, ...]:
    """The forward kernels of one step: (gru_step_kernel,) or (gru_step_rz_kernel, gru_step_n_kernel)."""
    consts, warps = _step_consts(dtype, batch)
    names = ("gru_step_kernel",) if reset_after else ("gru_step_rz_kernel", "gru_step_n_kernel")
    return tuple(KernelConfig(name, dtype, consts, num_warps=warps) for name in names)


def bwd_step_configs(dtype: torch.dtype, batch: int, reset_after: bool) -> tuple[KernelConfig, KernelConfig | None]:
    """The backward kernels of one step: (gru_bwd_step_kernel, None) for reset_after=True, else
    (gru_bwd_step_kernel, gru_bwd_reset_kernel)."""
    consts, warps = _step_consts(dtype, batch)
    warps = 8 if batch > 16 else warps  # float32 at BLOCK_B = 64 spills at 4 warps here (not in the forward)
    step = KernelConfig("gru_bwd_step_kernel", dtype, (("RESET_AFTER", reset_after), *consts), num_warps=warps)
    reset = None if reset_after else KernelConfig("gru_bwd_reset_kernel", dtype, consts, num_warps=warps)
    return step, reset


def scan_config(dtype: torch.dtype) -> KernelConfig:
    """The MinGRU forward scan, reading the projections in ``dtype``."""
    consts = (("BLOCK_T", SCAN_BLOCK_T), ("BLOCK_N", SCAN_BLOCK_N))
    return KernelConfig("mingru_scan_kernel", dtype, consts, num_warps=4)


def scan_bwd_config(dtype: torch.dtype) -> KernelConfig:
    """The MinGRU backward scan (its gradients of the projections are written in ``dtype``)."""
    return KernelConfig("mingru_scan_bwd_kernel", dtype, scan_config(dtype).constexprs, num_warps=4)


def all_configs() -> list[KernelConfig]:
    """Every configuration the functions above can return (for the compile tests)."""
    out: list[KernelConfig] = []
    for dtype in DTYPES:
        for reset_after in (True, False):
            for hidden in (32, 64, 128):
                if hidden <= PERSISTENT_MAX_H[dtype]:
                    out.append(persistent_config(dtype, hidden, reset_after))
                    out.append(persistent_bwd_config(dtype, hidden, reset_after))
            for batch in (16, 64):
                out.extend(step_configs(dtype, batch, reset_after))
                out.extend(c for c in bwd_step_configs(dtype, batch, reset_after) if c is not None)
        out.append(scan_config(dtype))
        out.append(scan_bwd_config(dtype))
    return list(dict.fromkeys(out))


_POINTERS = {
    "gru_step_kernel": ("gi", "h:fp32", "w", "b", "len:i32", "h_out:fp32", "y", "save:fp32"),
    "gru_step_rz_kernel": ("gi", "h:fp32", "w", "b", "rh:fp32", "z:fp32", "save:fp32"),
    "gru_step_n_kernel": ("gi", "h:fp32", "w", "b", "rh:fp32", "z:fp32", "len:i32", "h_out:fp32", "y", "save:fp32"),
    "gru_persistent_kernel": ("gi", "h0", "w", "b", "len:i32", "y", "hn:fp32", "save:fp32"),
    "gru_bwd_step_kernel": ("save:fp32", "dy", "w", "len:i32", "c:fp32", "p:fp32", "c_out:fp32", "dg"),
    "gru_bwd_reset_kernel": ("save:fp32", "w", "dg", "p:fp32"),
    "gru_persistent_bwd_kernel": ("save:fp32", "dy", "w", "len:i32", "dhn:fp32", "dg", "dh0:fp32"),
    "mingru_scan_kernel": ("proj", "h0:fp32", "y:fp32"),
    "mingru_scan_bwd_kernel": ("proj", "h0:fp32", "y:fp32", "dy:fp32", "dhn:fp32", "dproj", "dh0:fp32"),
}
_SCALARS = {
    "gru_step_kernel": ("t", "save", "B", "H"),
    "gru_step_rz_kernel": ("t", "save", "B", "H"),
    "gru_step_n_kernel": ("t", "save", "B", "H"),
    "gru_persistent_kernel": ("T", "B", "H", "reverse", "save"),
    "gru_bwd_step_kernel": ("u", "t", "B", "H"),
    "gru_bwd_reset_kernel": ("u", "B", "H"),
    "gru_persistent_bwd_kernel": ("T", "B", "H", "reverse"),
    "mingru_scan_kernel": ("T", "B", "H", "st", "sb"),
    "mingru_scan_bwd_kernel": ("T", "B", "H", "st", "sb"),
}


def signature(config: KernelConfig) -> dict[str, str]:
    """The argument types of ``config`` for ``triton.compiler.ASTSource`` (pointers in the config's dtype unless
    the kernel fixes them; the names match the kernels' parameters)."""
    sig: dict[str, str] = {}
    for entry in _POINTERS[config.kernel]:
        name, _, fixed = entry.partition(":")
        sig[f"{name}_ptr"] = "*" + (fixed or _TYPE_NAMES[config.dtype])
    for name in _SCALARS[config.kernel]:
        sig[name] = "i32"
    for name, _ in config.constexprs:
        sig[name] = "constexpr"
    return sig
