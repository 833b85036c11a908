"""``--device cuda`` plumbing, proven without a GPU: the training loop and every validation path send their batches to
the device they are given (here PyTorch's "meta" device) and bring predictions back to the CPU; fp16 on CUDA gets a
GradScaler, bf16 on the CPU does not."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from triage_lab.training.ich_data import from_volumes
from triage_lab.training.ich_train import make_validate as ich_validate
from triage_lab.training.ich_train import predict_slices
from triage_lab.training.loop import (
    TrainConfig,
    autocast,
    fit,
    grad_scaler,
    model_device,
    needs_grad_scaler,
    train_step,
)
from triage_lab.training.mr_cmb import TrainingDetector
from triage_lab.training.seg_train import CropSet, SegRecipe
from triage_lab.training.seg_train import make_validate as seg_validate
from triage_node.inference.cmb import CandidateConfig

META = torch.device("meta")


class OnMeta(nn.Module):
    """A network that lives on another device: its one parameter is on "meta", so code that asks the model where it
    is gets "meta". ``forward`` records where its input arrived and answers with CPU tensors from ``answer`` (a meta
    tensor has no values to read back)."""

    def __init__(self, answer: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(1, device="meta"))
        self.answer = answer
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> object:
        self.seen.append(x.device)
        return self.answer(x)


def _slices() -> object:
    rng = np.random.default_rng(0)
    hu = rng.integers(-100, 120, (6, 24, 24)).astype(np.int16)
    labels = np.zeros((6, 6), bool)
    labels[::2] = True  # both classes present, so the AUCs are defined
    return from_volumes([(hu, labels)], size=16)


def test_ich_validation_and_prediction_run_on_the_model_device() -> None:
    data = _slices()
    net = OnMeta(lambda x: torch.zeros(x.shape[0], 6))
    assert model_device(net) == META
    metrics = ich_validate(data, context=1)(net)
    assert net.seen and set(net.seen) == {META}
    assert np.isfinite(metrics["val_loss"])
    # An explicit device wins over the model's; probabilities come back as CPU numpy.
    cpu_net = OnMeta(lambda x: torch.zeros(x.shape[0], 6))
    cpu_net.anchor = nn.Parameter(torch.empty(1))
    p = predict_slices(cpu_net, data, 0, batch=4, device="meta")
    assert set(cpu_net.seen) == {META} and len(cpu_net.seen) == 2
    assert isinstance(p, np.ndarray) and p.shape == (6, 6) and np.allclose(p, 0.5)


def test_segmenter_validation_runs_on_the_model_device() -> None:
    x = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    m = torch.zeros(5, 1, 16, 16, dtype=torch.uint8)
    m[:2, :, 4:9, 4:9] = 1
    net = OnMeta(lambda x: (torch.zeros(x.shape[0], 1, *x.shape[-2:]), torch.zeros(x.shape[0])))
    metrics = seg_validate(CropSet(x, m), SegRecipe())(net)
    assert net.seen and set(net.seen) == {META}
    assert set(metrics) == {"val_loss", "val_dice_crops"} and np.isfinite(metrics["val_loss"])


def test_cmb_validation_detector_runs_on_the_model_device() -> None:
    net = OnMeta(lambda x: torch.zeros(x.shape[0]))
    det = TrainingDetector(net, CandidateConfig(), batch_size=4)  # type: ignore[arg-type]
    p = det.score(np.zeros((6, 3, 32, 32), np.float32))
    assert set(net.seen) == {META} and len(net.seen) == 2
    assert p.shape == (6,) and np.allclose(p, 0.5)


class KeepsItsWeights(nn.Module):
    """Records where ``fit`` sends it but keeps its parameter on the CPU, so the loss can still be read."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.sent_to: list[torch.device] = []

    def to(self, *args: object, **kwargs: object) -> KeepsItsWeights:  # type: ignore[override]
        self.sent_to.append(torch.device(args[0]))  # type: ignore[arg-type]
        return self


def test_fit_sends_the_model_and_every_batch_to_the_configured_device() -> None:
    net = KeepsItsWeights()
    arrived: list[torch.device] = []

    def batches(epoch: int, size: int | None, g: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        for _ in range(3):
            yield torch.ones(2, 3), torch.zeros(2)

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        arrived.extend(t.device for t in b)
        return (net.w**2).sum()

    fit(net, batches, 3, loss_fn, None, TrainConfig(epochs=2, device="meta", progress=False))
    assert net.sent_to == [META]
    assert arrived == [META] * 12
    assert not torch.equal(net.w.detach(), torch.ones(3))  # the steps happened


def test_fp16_on_cuda_gets_a_grad_scaler_and_bf16_on_cpu_does_not() -> None:
    assert needs_grad_scaler("cuda", amp=True)
    assert needs_grad_scaler(torch.device("cuda:1"), amp=True)
    assert not needs_grad_scaler("cuda", amp=False)
    assert not needs_grad_scaler("cpu", amp=True)
    assert not grad_scaler("cpu", amp=True).is_enabled()
    with warnings.catch_warnings():  # torch warns that CUDA is absent; the configuration is what is checked
        warnings.simplefilter("ignore")
        ctx = autocast("cuda", True)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16
    with autocast("cpu", True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", False):
        assert not torch.is_autocast_enabled("cpu")


def test_a_scaled_step_updates_the_weights_like_an_unscaled_one() -> None:
    """``train_step`` with an enabled GradScaler (the CPU one: the code path is the one CUDA fp16 takes) scales the
    loss, unscales the gradients before the optimiser sees them, and so moves the weights exactly as without it."""
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.ones(8, 1)

    def run(scaler: torch.amp.GradScaler) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        train_step(net, (x, y), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), opt, scaler, torch.device("cpu"), False)
        assert net.weight.grad is not None
        return net.weight.detach().clone(), net.weight.grad.clone()

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    w_scaled, g_scaled = run(scaler)
    w_plain, g_plain = run(torch.amp.GradScaler("cpu", enabled=False))
    assert scaler.get_scale() == 1024.0  # no overflow: the scale stays
    torch.testing.assert_close(g_scaled, g_plain)
    torch.testing.assert_close(w_scaled, w_plain)
