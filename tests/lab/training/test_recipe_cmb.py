"""The microbleed model's transfer-learning variant: ``--transfer-from`` copies the source network's tensors and
``--freeze-blocks N`` keeps the first N conv blocks (weights and batch-norm statistics) fixed while the rest trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from triage_lab.training.loop import TrainConfig, fit
from triage_lab.training.mr_cmb import CmbRecipe, PatchSet, balanced_batches, cmb_net_for
from triage_node.inference.cmb import build_cmb_net

WIDTHS = (4, 4, 8, 8, 8)


def _patches(n: int = 64) -> PatchSet:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (n, 3, 32, 32)).astype(np.float32)
    y = (np.arange(n) % 4 == 0).astype(np.float32)
    x[y > 0, :, 13:19, 13:19] -= 1.5
    return PatchSet(torch.from_numpy(x).half(), torch.from_numpy(y))


def _source(tmp_path: Path) -> dict[str, torch.Tensor]:
    """A 'pretrained' network: random weights and non-default batch-norm statistics, saved as safetensors."""
    torch.manual_seed(11)
    src = build_cmb_net(widths=WIDTHS)
    for mod in src.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "source.safetensors"))
    return state


def _loss(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).float(), b[1])


def test_transfer_from_copies_the_source_network(tmp_path: Path) -> None:
    src = _source(tmp_path)
    net = cmb_net_for(CmbRecipe(widths=WIDTHS, transfer_from=tmp_path / "source.safetensors"), seed=3)
    assert all(torch.equal(v, src[k]) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())  # nothing frozen without --freeze-blocks
    plain = cmb_net_for(CmbRecipe(widths=WIDTHS), seed=3)
    assert not torch.equal(plain.blocks[0][0].weight, net.blocks[0][0].weight)


def test_frozen_blocks_keep_their_weights_and_statistics_while_the_rest_trains(tmp_path: Path) -> None:
    src = _source(tmp_path)
    recipe = CmbRecipe(widths=WIDTHS, transfer_from=tmp_path / "source.safetensors", freeze_blocks=2)
    net = cmb_net_for(recipe, seed=0)
    frozen = ("blocks.0.", "blocks.1.")
    assert all(not p.requires_grad for k, p in net.named_parameters() if k.startswith(frozen))
    hist, _ = fit(
        net,
        balanced_batches(_patches(), 16, 0.25, augment=True),
        4,
        _loss,
        None,
        TrainConfig(epochs=2, lr=1e-2, progress=False, amp=False),
    )
    assert all(np.isfinite(hist.train_loss))
    after = net.state_dict()
    for k, v in after.items():
        if k.startswith(frozen):
            assert torch.equal(v, src[k]), f"{k} changed although its block is frozen"
    trained = [k for k in after if not k.startswith(frozen) and after[k].is_floating_point()]
    changed = [k for k in trained if not torch.equal(after[k], src[k])]
    assert set(changed) == set(trained), f"unchanged outside the frozen blocks: {set(trained) - set(changed)}"
