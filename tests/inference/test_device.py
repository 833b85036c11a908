"""models.device on a machine without a GPU: every shipped analyzer puts its network's parameters and every input
it feeds the network on the configured device (checked on torch's ``meta`` device, where nothing is computed); a
CUDA device on a torch without CUDA stops the start with a clean reason; ``auto`` means bf16 on a GPU with native
bf16; the TF32 policy is explicit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from triage_node.inference import precision
from triage_node.inference.errors import ModelLoadError
from triage_node.inference.registry import _analyzer_class, load_analyzers, read_card
from triage_node.preprocess.volume import Volume

# SQLite only: the subject is the device check at start, not the database
ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
META = torch.device("meta")


class Reached(Exception):
    """Raised by the hook at the first network call: the devices are recorded, nothing is computed."""


@pytest.fixture
def first_forward() -> Iterator[dict[str, Any]]:
    """Records, at the first top-level module call, the devices of its parameters and of its tensor inputs."""
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen["module"] = type(module).__name__
        seen["params"] = {p.device for p in module.parameters()}
        seen["inputs"] = {a.device for a in args if isinstance(a, torch.Tensor)}
        raise Reached

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _head(modality: str = "CT") -> Volume:
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    sl = np.where(r < 50, 35.0, -1000.0) if modality == "CT" else np.where(r < 50, 600.0, 0.0)
    hu = np.repeat(sl[None], 8, axis=0).astype(np.float32)
    hu[3:5, 40:55, 70:85] = 75.0 if modality == "CT" else 900.0
    return Volume(hu, (5.0, 0.9, 0.9), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                  tuple(f"1.2.3.{i}" for i in range(8)), modality)


@pytest.mark.parametrize("name", ["ich", "ct_segmenter", "infarct", "cmb"])
def test_every_analyzer_runs_its_network_on_the_configured_device(name: str, first_forward: dict[str, Any]) -> None:
    card = read_card(MODELS, name)
    analyzer = _analyzer_class(card)(card, threads=1, device="meta", precision="fp32")
    with pytest.raises(Reached):
        if name == "cmb":  # the network sees candidate patches; score them directly (a phantom has no microbleeds)
            p = analyzer.detector.cfg.patch_px
            analyzer.detector.score(np.random.default_rng(0).random((4, 3, p, p), dtype=np.float32))
        else:
            analyzer.analyze(_head("MR" if name == "infarct" else "CT"))
    assert first_forward["params"] == {META}, first_forward
    assert first_forward["inputs"] == {META}, first_forward


def test_a_cuda_device_without_cuda_is_a_clean_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="models.device is 'cuda'") as info:
        load_analyzers(MODELS, ["ich"], device="cuda")
    assert ("built without CUDA" in str(info.value)) or ("no CUDA GPU is visible" in str(info.value))
    with pytest.raises(ModelLoadError, match="not a torch device"):
        load_analyzers(MODELS, ["ich"], device="gpu0")


def test_serve_with_a_cuda_device_it_does_not_have_says_cannot_start(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {
        "PATH": "/usr/bin:/bin",
        "TRIAGE_NODE__MODELS__DEVICE": "cuda",
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["ich"], "mr_swi": [], "mr_dwi": []}),
        "TRIAGE_NODE__STORAGE__DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "TRIAGE_NODE__STORAGE__SPOOL_DIR": str(tmp_path / "spool"),
        "TRIAGE_NODE__WEB__ENABLED": "false",
    }
    res = subprocess.run([sys.executable, "-m", "triage_node.cli", "serve", "--config", str(ROOT / "config.yaml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "cannot start: models.device is 'cuda' but this torch" in res.stderr
    assert "Traceback" not in res.stderr


def test_auto_precision_is_bf16_on_a_gpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_bf16", lambda: True)
    assert precision.resolve("auto", "cuda") == "bf16"
    assert precision.resolve("auto", "cuda:1") == "bf16"
    assert precision.resolve("fp32", "cuda") == "fp32"
    monkeypatch.setattr(precision, "cuda_bf16", lambda: False)  # e.g. a T4 or V100
    assert precision.resolve("auto", "cuda") == "fp32"
    assert precision.resolve("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        precision.resolve("int8", "cuda")


def test_the_tf32_policy_is_set_explicitly_when_models_load() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        load_analyzers(MODELS, ["ich"], device="cpu", precision="fp32")
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])
