"""Inference precision: float32, bfloat16 autocast where the CPU computes bf16 natively, or int8 through ONNX Runtime.

On a CPU with AMX or AVX512-BF16 (Sapphire Rapids and later), bf16 autocast runs the convolutions of our networks
1.5-2x faster than float32 and changes probabilities by ~1e-3 (the cards' evaluations are run the same way). On a
CPU without native bf16 it is emulated and slower, so ``auto`` picks it only where it is native.

``int8`` runs each network as the statically quantised ONNX export named in its card (``inference/onnxrt.py``); it
changes results more than bf16 does, so ``auto`` never picks it: each card states what int8 measured.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "int8"]


def native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve(precision: str, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``fp32``; the others are taken as given (int8: CPU only)."""
    if precision not in ("auto", "fp32", "bf16", "int8"):
        raise ValueError(f"precision must be auto, fp32, bf16 or int8, got {precision!r}")
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU (ONNX Runtime), not on device {device!r}")
    if precision == "auto":
        return "bf16" if device == "cpu" and native_bf16() else "fp32"
    return precision


def autocast(precision: str, device: str = "cpu") -> AbstractContextManager[object]:
    """The context a network's forward pass runs in for a resolved ``precision`` (``fp32`` | ``bf16`` | ``int8``)."""
    if precision in ("fp32", "int8"):
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
