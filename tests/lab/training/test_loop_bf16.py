"""Training precision on GPUs: bf16 autocast without loss scaling where the GPU computes bf16 natively (A100, H100
and later), fp16 with a GradScaler only on older GPUs; the CPU stays bf16."""

from __future__ import annotations

import warnings

import pytest
import torch

from triage_lab.training import loop
from triage_lab.training.loop import TrainConfig, amp_dtype, autocast, mixed_precision_text, needs_grad_scaler


def test_a_gpu_with_native_bf16_trains_in_bf16_without_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "cuda_bf16", lambda: True)
    assert amp_dtype("cuda") == torch.bfloat16
    assert not needs_grad_scaler("cuda", amp=True)
    with warnings.catch_warnings():  # torch warns that CUDA is absent; the configuration is what is checked
        warnings.simplefilter("ignore")
        ctx = autocast("cuda:0", True)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert mixed_precision_text(TrainConfig(device="cuda")) == "bf16 autocast"


def test_an_older_gpu_keeps_fp16_with_loss_scaling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "cuda_bf16", lambda: False)
    assert amp_dtype("cuda") == torch.float16
    assert needs_grad_scaler("cuda", amp=True)
    assert mixed_precision_text(TrainConfig(device="cuda")) == "fp16 autocast with loss scaling"
    assert amp_dtype("cpu") == torch.bfloat16 and not needs_grad_scaler("cpu", amp=True)
