"""Inference precision: float32, bfloat16 autocast where the CPU or GPU computes bf16 natively, or int8 through ONNX
Runtime; and the device checks (models.device) and the TF32 policy.

On a CPU with AMX or AVX512-BF16 (Sapphire Rapids and later), bf16 autocast runs the convolutions of our networks
1.5-2x faster than float32 and changes probabilities by ~1e-3 (the cards' evaluations are run the same way). On a
CPU without native bf16 it is emulated and slower, so ``auto`` picks it only where it is native.

On a CUDA GPU with native bf16 (compute capability 8.0 and later), ``auto`` is bf16 autocast too; TF32 is switched
off explicitly (``set_tf32_policy``), so ``fp32`` on a GPU computes in float32.

``int8`` runs each network as the statically quantised ONNX export named in its card (``inference/onnxrt.py``); it
changes results more than bf16 does, so ``auto`` never picks it: each card states what int8 measured.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

# torch is imported inside each function: a node that runs no model (a receive or send node, a work node whose
# pipelines are empty) never loads it.

Precision = Literal["auto", "fp32", "bf16", "int8"]


def native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX tiles or AVX512-BF16)."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def cuda_bf16() -> bool:
    """True when the current CUDA device computes bf16 natively (compute capability 8.0 and later: A100, H100, ...)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def resolve(precision: str, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a CPU or a CUDA GPU with native bf16, else ``fp32``; the others are taken as given
    (int8: CPU only)."""
    if precision not in ("auto", "fp32", "bf16", "int8"):
        raise ValueError(f"precision must be auto, fp32, bf16 or int8, got {precision!r}")
    import torch

    kind = torch.device(device).type
    if precision == "int8" and kind != "cpu":
        raise ValueError(f"precision int8 runs on the CPU (ONNX Runtime), not on device {device!r}")
    if precision == "auto":
        if kind == "cpu":
            return "bf16" if native_bf16() else "fp32"
        return "bf16" if kind == "cuda" and cuda_bf16() else "fp32"
    return precision


def check_device(device: str) -> torch.device:
    """The torch device for ``models.device``; raise ValueError saying why it cannot be used (a CUDA device on a
    torch built without CUDA, or with no GPU visible, or an index past the last GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"models.device {device!r} is not a torch device ({exc})") from exc
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(
                f"models.device is {device!r} but this torch ({torch.__version__}) was built without CUDA; "
                "install a CUDA build of torch or set models.device: cpu"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"models.device is {device!r} but no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"models.device is {device!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return dev


def set_tf32_policy() -> None:
    """TF32, set explicitly rather than left to torch's defaults: off. ``fp32`` means float32 matmuls and
    convolutions on a GPU too (the precision the cards' evaluations were run in); the fast GPU path is ``bf16``
    (``auto`` picks it where the GPU computes bf16 natively)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def autocast(precision: str, device: str = "cpu") -> AbstractContextManager[object]:
    """The context a network's forward pass runs in for a resolved ``precision`` (``fp32`` | ``bf16`` | ``int8``)."""
    if precision in ("fp32", "int8"):
        return nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
