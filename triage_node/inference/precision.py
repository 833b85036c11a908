"""Inference precision: float32, or bfloat16 autocast where the CPU computes bf16 natively.

On a CPU with AMX or AVX512-BF16 (Sapphire Rapids and later), bf16 autocast runs the convolutions of our networks
1.5-2x faster than float32 and changes probabilities by ~1e-3 (the cards' evaluations are run the same way). On a
CPU without native bf16 it is emulated and slower, so ``auto`` picks it only where it is native.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve(precision: str, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``fp32``; ``fp32`` and ``bf16`` are taken as given."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device == "cpu" and native_bf16() else "fp32"
    return precision


def autocast(precision: str, device: str = "cpu") -> AbstractContextManager[object]:
    """The context a network's forward pass runs in for a resolved ``precision`` (``fp32`` | ``bf16``)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
