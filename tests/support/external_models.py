"""Small real models of each outside format, built at test time: a MONAI UNet trained for a few seconds to outline
bright blood in a phantom head, exported to TorchScript and to ONNX and written as a MONAI bundle (``configs/
inference.json`` with its ``network_def``, ``configs/metadata.json``, ``models/model.pt``), each with its model card.

The UNet reads two channels (brain window 40/80 and a -1000..2000 HU range that tells skull from blood) at 64 x 64 and
gives two softmax channels (background, lesion).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from triage_lab.synth.phantom import phantom_head
from triage_node.inference.external import sha256_path

SIZE = 64
UNET_ARGS: dict[str, Any] = {
    "spatial_dims": 2, "in_channels": 2, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2],
    "num_res_units": 1,
}
CHANNELS = [{"window": [40, 80]}, {"range": [-1000, 2000]}]
CODE = {"scheme": "SCT", "value": "50960005", "meaning": "Hemorrhage"}


def _inputs(hu: np.ndarray) -> np.ndarray:
    """HU (n, y, x) -> (n, 2, y, x) exactly as the card's input.channels make them."""
    brain = np.clip((hu - 0.0) / 80.0, 0, 1)
    wide = np.clip((hu + 1000.0) / 3000.0, 0, 1)
    return np.stack([brain, wide], axis=1).astype(np.float32)


@functools.cache
def _head() -> np.ndarray:
    return phantom_head(24, SIZE)[0]


def training_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    head = _head()
    zs = rng.integers(0, 24, n)
    hu = head[zs].copy()
    mask = np.zeros(hu.shape, np.int64)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        if rng.random() < 0.25:
            continue
        cy, cx = rng.integers(20, 44, 2)
        ry, rx = rng.uniform(2, 6, 2)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        blob &= hu[i] > 0  # inside the brain
        hu[i][blob] = rng.uniform(60, 90)
        mask[i][blob] = 1
    return torch.from_numpy(_inputs(hu)), torch.from_numpy(mask)


@functools.cache
def train_unet(steps: int = 40, seed: int = 0, out_channels: int = 2) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(**{**UNET_ARGS, "out_channels": out_channels})
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    weight = torch.tensor([1.0, 4.0] + [1.0] * (out_channels - 2))
    net.train()
    for _ in range(steps):
        x, y = training_batch(rng, 12)
        loss = torch.nn.functional.cross_entropy(net(x), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def card(name: str, fmt: str, weights: str, folder: Path, **over: Any) -> dict[str, Any]:
    """A segmenter card for the UNet; ``over`` replaces top-level keys."""
    d: dict[str, Any] = {
        "name": name,
        "version": "0.1-test",
        "manufacturer": "triage-node tests",
        "kind": "segmenter",
        "format": fmt,
        "weights": weights,
        "sha256": sha256_path(folder / weights),
        "intended_use": "end-to-end tests of models from outside; not for clinical use",
        "accepts": {"modalities": ["CT"], "pipelines": ["ct_head"], "min_slices": 3},
        "input": {"dims": 2, "size": [SIZE, SIZE], "fit": "resize", "channels": CHANNELS},
        "output": {"activation": "softmax"},
        "labels": [
            {"name": "background"},
            {"name": f"{name}_bleed", "threshold": 0.5, "priority": "urgent", "code": CODE,
             "phrase": "hemorrhage (outside model)"},
        ],
        "postprocess": {"max_components": 0, "min_volume_ml": 0.01},
    }
    d.update(over)
    return d


def write_card(folder: Path, d: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def export_torchscript(net: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(copy.deepcopy(net).eval()), str(path))


def export_onnx(net: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 2, SIZE, SIZE)
    torch.onnx.export(
        copy.deepcopy(net).eval(), (x,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["pred"], dynamic_axes={"image": {0: "n"}, "pred": {0: "n"}},
    )


def write_bundle(net: torch.nn.Module, folder: Path, unet_args: dict[str, Any] | None = None) -> None:
    """A MONAI bundle: configs/metadata.json (network_data_format), configs/inference.json (network_def as a
    ``_target_`` config) and models/model.pt (the state dict)."""
    args = dict(unet_args or UNET_ARGS)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    meta = {
        "version": "0.1.0",
        "monai_version": "1.4.0",
        "name": "triage-node test bleed UNet",
        "task": "bright blood in a phantom head",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": args["in_channels"],
                                 "spatial_shape": [SIZE, SIZE], "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": args["out_channels"],
                                 "spatial_shape": [SIZE, SIZE], "dtype": "float32"}},
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", **args},
        "network": "$@network_def.to(@device)",
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.save(net.state_dict(), str(folder / "models" / "model.pt"))


def bleed_series_hu(seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 12-slice phantom head at 128 px with a 75 HU bleed on slices 4-7 (as tests/web/test_daemon.py)."""
    hu, spacing = phantom_head(12, 128)
    hu[4:8, 40:52, 72:85] = 75.0
    return hu, spacing


def build_all(models_dir: Path) -> dict[str, Path]:
    """The trained UNet as ``ext_ts`` (TorchScript), ``ext_onnx`` (ONNX) and ``ext_bundle`` (MONAI bundle) under
    ``models_dir``; returns name -> card path."""
    net = train_unet()
    export_torchscript(net, models_dir / "ext_ts" / "unet.ts")
    export_onnx(net, models_dir / "ext_onnx" / "unet.onnx")
    write_bundle(net, models_dir / "ext_bundle" / "bundle")
    return {
        "ext_ts": write_card(models_dir / "ext_ts", card("ext_ts", "torchscript", "unet.ts", models_dir / "ext_ts")),
        "ext_onnx": write_card(models_dir / "ext_onnx", card("ext_onnx", "onnx", "unet.onnx", models_dir / "ext_onnx")),
        "ext_bundle": write_card(
            models_dir / "ext_bundle", card("ext_bundle", "monai_bundle", "bundle", models_dir / "ext_bundle")
        ),
    }


def volume_of(hu: np.ndarray, spacing: tuple[float, float, float], modality: str = "CT") -> Any:
    from triage_node.preprocess.volume import Volume

    return Volume(
        pixels=np.asarray(hu, np.float32), spacing=spacing, origin=(-120.0, -120.0, 0.0),
        row_direction=(1.0, 0.0, 0.0), col_direction=(0.0, 1.0, 0.0),
        sop_instance_uids=tuple(f"1.2.826.0.1.3680043.8.498.{i + 1}" for i in range(hu.shape[0])), modality=modality,
    )
