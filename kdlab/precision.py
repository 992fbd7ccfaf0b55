"""Precision chosen at run time: bf16 where the hardware computes it natively, fp32 elsewhere (never fp16).

Measured: on CPUs without native bf16 (AVX2 only, no AVX512-BF16 / AMX) bf16 matrix products are emulated and
4-5x slower than fp32, so ``auto`` means fp32 there.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str) -> str:
    """'bf16' or 'no' (accelerate's names). auto: bf16 on CUDA with bf16, and on CPUs with native bf16 units."""
    if precision == "bf16":
        return "bf16"
    if precision == "fp32":
        return "no"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    fast_cpu_bf16 = (
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    )
    return "bf16" if fast_cpu_bf16 else "no"


def uses_bf16(precision: str) -> bool:
    """Whether ``precision`` (auto | bf16 | fp32) runs in bf16 on this machine."""
    return resolve_precision(precision) == "bf16"
