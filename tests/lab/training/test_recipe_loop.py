"""The training loop's recipe features on tiny networks: initialising from a checkpoint, AdamW with weight decay and
the one-cycle schedule, seeded determinism, the progress bar, and checkpoints that resume exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from triage_lab.training.augment import AugmentConfig, augment
from triage_lab.training.loop import TrainConfig, fit, load_init, make_optimizer

Batch = tuple[torch.Tensor, ...]


class Tiny(nn.Module):
    """Conv + batch norm + dropout + linear head: every kind of state a checkpoint has to carry."""

    def __init__(self, n_out: int = 6, extra: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4, n_out)
        self.extra = nn.Linear(n_out, n_out) if extra else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
        out = self.head(h)
        return self.extra(out) if self.extra is not None else out


def _tiny(seed: int = 0, **kw: object) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(**kw)  # type: ignore[arg-type]


X = torch.rand(24, 3, 12, 12, generator=torch.Generator().manual_seed(5))
Y = (X.mean(dim=(1, 2, 3)) > 0.5).float()[:, None].repeat(1, 6)


def batches(epoch: int, size: int | None, g: torch.Generator) -> Iterator[Batch]:
    """Shuffled and augmented from ``g``, as the real batch makers are."""
    perm = torch.randperm(len(X), generator=g)
    for i in range(0, len(X), 6):
        x, _ = augment(X[perm[i : i + 6]], AugmentConfig(), g)
        yield x, Y[perm[i : i + 6]]


def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(m(b[0]).float(), b[1])


def validate(m: nn.Module) -> dict[str, float]:
    with torch.inference_mode():
        return {"val_loss": float(loss_fn(m, (X, Y)))}


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"epochs": 2, "lr": 1e-2, "seed": 1, "progress": False, "amp": False}
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- initialising from a checkpoint (--init-from)


def test_load_init_copies_matching_tensors_and_reports_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _tiny(0, n_out=4)
    save_file(src.state_dict(), str(tmp_path / "src.safetensors"))
    dst = _tiny(1, n_out=6, extra=True)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="triage_lab.training.loop"):
        rep = load_init(dst, tmp_path / "src.safetensors")
    assert set(rep.copied) == {
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    }
    assert set(rep.shape_mismatch) == {"head.weight", "head.bias"}
    assert set(rep.missing) == {"extra.weight", "extra.bias"}
    now = dst.state_dict()
    for k in rep.copied:
        assert torch.equal(now[k], src.state_dict()[k])
    for k in rep.shape_mismatch + rep.missing:
        assert torch.equal(now[k], before[k]), k  # skipped tensors keep their own init
    assert "head.weight" in caplog.text and "skipped for their shape" in caplog.text


def test_load_init_reads_training_checkpoints_and_refuses_an_unrelated_file(tmp_path: Path) -> None:
    src = _tiny(0)
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "last.pt")
    dst = _tiny(1)
    assert len(load_init(dst, tmp_path / "last.pt").copied) == len(src.state_dict())
    assert _equal(dst.state_dict(), src.state_dict())
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no tensor matches"):
        load_init(dst, tmp_path / "other.safetensors")


def test_fit_initialises_from_cfg_init_from(tmp_path: Path) -> None:
    src = _tiny(0, n_out=4)
    save_file(src.state_dict(), str(tmp_path / "src.safetensors"))
    dst = _tiny(1)
    head = dst.head.weight.detach().clone()
    _, best = fit(
        dst, lambda e, s, g: iter(()), 0, loss_fn, None, _cfg(epochs=1, init_from=tmp_path / "src.safetensors")
    )
    assert torch.equal(best["conv.weight"], src.conv.weight.detach())
    assert torch.equal(best["head.weight"], head)


# --- AdamW, weight decay, one-cycle


def test_adamw_with_weight_decay_and_one_cycle_are_configured() -> None:
    net = _tiny()
    net.conv.weight.requires_grad_(False)  # frozen parameters stay out of the optimiser
    opt, sched = make_optimizer(net, TrainConfig(lr=3e-3), total_steps=40)
    assert type(opt) is torch.optim.AdamW
    (group,) = opt.param_groups
    assert group["weight_decay"] == 0.01 and TrainConfig().weight_decay == 0.01
    assert len(group["params"]) == len(list(net.parameters())) - 1
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 40
    assert group["max_lr"] == 3e-3 and group["lr"] == pytest.approx(3e-3 / 25)
    _, none = make_optimizer(net, TrainConfig(lr=3e-3, one_cycle=False), total_steps=40)
    assert none is None


def test_the_learning_rate_follows_one_cycle_through_fit() -> None:
    hist, _ = fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=4, lr=1e-2))
    # 16 steps, peak a quarter of the way: the end of epoch 1 is just past the top, the last step near zero.
    assert hist.lr[0] == pytest.approx(1e-2, rel=0.05)
    assert hist.lr[0] > hist.lr[1] > hist.lr[2] > hist.lr[3]
    assert hist.lr[3] < 1e-2 / 50
    flat, _ = fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=2, lr=1e-2, one_cycle=False))
    assert flat.lr == [1e-2, 1e-2]


def test_cli_defaults_are_adamw_decay_001_and_one_cycle(tmp_path: Path) -> None:
    import argparse

    from triage_lab.training.ct_commands import _train_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cfg = _train_config(parser.parse_args(["train", "ich", "--out", str(tmp_path)]))
    assert cfg.weight_decay == 0.01 and cfg.one_cycle and cfg.amp
    cfg = _train_config(
        parser.parse_args(
            [
                "train",
                "ich",
                "--out",
                str(tmp_path),
                "--weight-decay",
                "0.05",
                "--no-one-cycle",
                "--resume",
                "--init-from",
                "x.safetensors",
            ]
        )
    )
    assert cfg.weight_decay == 0.05 and not cfg.one_cycle and cfg.resume and cfg.init_from == Path("x.safetensors")


# --- determinism


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        _, best = fit(_tiny(0), batches, 4, loss_fn, validate, _cfg(seed=seed))
        return best

    a, b, c = run(1), run(1), run(2)
    assert _equal(a, b)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])


# --- progress bar


def test_progress_true_draws_a_tqdm_bar_on_stderr_and_false_draws_none(capsys: pytest.CaptureFixture[str]) -> None:
    fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=1, progress=True))
    out = capsys.readouterr()
    assert "epoch 1/1" in out.err and "4/4" in out.err and "loss=" in out.err
    assert "epoch 1 train_loss" in out.out  # the per-epoch line goes to stdout either way
    fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=1, progress=False))
    out = capsys.readouterr()
    assert out.err == ""
    assert "epoch 1 train_loss" in out.out


# --- checkpoints and resume


def test_a_checkpoint_is_written_every_epoch_and_resuming_continues_exactly(tmp_path: Path) -> None:
    straight_hist, straight = fit(
        _tiny(0), batches, 4, loss_fn, validate, _cfg(epochs=3, checkpoint_dir=tmp_path / "a")
    )
    last = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and _equal(last["best"], straight)
    assert {"model", "optimizer", "scheduler", "scaler", "generator", "torch_rng", "history"} <= set(last)

    def crashes_in_epoch_3(epoch: int, size: int | None, g: torch.Generator) -> Iterator[Batch]:
        if epoch == 2:
            raise RuntimeError("power cut")
        return batches(epoch, size, g)

    cfg = _cfg(epochs=3, checkpoint_dir=tmp_path / "b")
    with pytest.raises(RuntimeError, match="power cut"):
        fit(_tiny(0), crashes_in_epoch_3, 4, loss_fn, validate, cfg)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    # A fresh process would build a fresh network: the checkpoint brings back weights, optimiser, schedule and RNG.
    resumed_hist, resumed = fit(
        _tiny(7), batches, 4, loss_fn, validate, TrainConfig(**{**cfg.__dict__, "resume": True})
    )
    assert _equal(resumed, straight)
    assert resumed_hist.train_loss == straight_hist.train_loss and resumed_hist.lr == straight_hist.lr
    assert resumed_hist.val == straight_hist.val


def test_resume_refuses_a_missing_or_mismatched_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(_tiny(), batches, 4, loss_fn, None, _cfg(checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(_tiny(), batches, 4, loss_fn, None, _cfg(resume=True))
    fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=1, checkpoint_dir=tmp_path))
    with pytest.raises(ValueError, match="4 steps in all, this run has 8"):
        fit(_tiny(), batches, 4, loss_fn, None, _cfg(epochs=2, checkpoint_dir=tmp_path, resume=True))
    assert np.isfinite(torch.load(tmp_path / "last.pt", weights_only=True)["history"]["train_loss"][0])


def test_a_deadline_stops_training_after_the_epoch_that_reaches_it_and_keeps_the_best() -> None:
    import time

    hist, best = fit(_tiny(), batches, 4, loss_fn, validate, _cfg(epochs=5, deadline=time.monotonic()))
    assert len(hist.train_loss) == 1  # the first epoch runs; the next would pass the deadline
    assert best and set(best) == set(_tiny().state_dict())
    hist, _ = fit(_tiny(), batches, 4, loss_fn, validate, _cfg(epochs=3, deadline=time.monotonic() + 3600))
    assert len(hist.train_loss) == 3
