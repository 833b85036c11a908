"""Network shapes with tiny random weights."""

from __future__ import annotations

import pytest
import torch

from triage_node.inference.nets import build_classifier, build_segmenter


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121"])
def test_classifier_output_shape(arch: str) -> None:
    net = build_classifier(arch, in_channels=9, num_classes=6, width=0.125).eval()
    with torch.inference_mode():
        assert net(torch.rand(2, 9, 64, 64)).shape == (2, 6)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_classifier("vgg", 3, 6)


def test_segmenter_shapes() -> None:
    net = build_segmenter(in_channels=3, base=4).eval()
    with torch.inference_mode():
        seg, cls = net(torch.rand(5, 3, 64, 64))
    assert seg.shape == (5, 1, 64, 64)
    assert cls.shape == (5,)
