"""The ich analyzer: per-slice hemorrhage probabilities (any + five subtypes), series aggregation, Grad-CAM maps."""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.card import ModelCard
from triage_node.inference.nets import build_classifier, gradcam_layer
from triage_node.inference.onnxrt import network
from triage_node.inference.precision import autocast
from triage_node.inference.slices import context_rows, noise_limit, window_resize, with_context, within_noise
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume

log = logging.getLogger(__name__)


def aggregate(p: np.ndarray, how: str = "top2_mean") -> np.ndarray:
    """Series-level probability per class from slice probabilities (z, C) -> (C,).

    ``max``: the most confident slice. ``top2_mean``: the mean of the two most confident slices, less sensitive to
    one noisy slice in a long negative series while a real bleed usually spans several slices.
    """
    if p.shape[0] == 0:
        return np.zeros(p.shape[1], np.float32)
    if how == "max":
        return np.asarray(p.max(axis=0))
    if how.startswith("top") and how.endswith("_mean"):
        k = min(int(how[3:-5]), p.shape[0])
        return np.asarray(np.sort(p, axis=0)[-k:].mean(axis=0))
    raise ValueError(f"aggregation must be 'max' or 'topK_mean', got {how!r}")


def key_slices(p: np.ndarray, threshold: float) -> tuple[int, ...]:
    """Slices whose probability reaches ``threshold``, most confident first. ``p``: (z,)."""
    idx = np.flatnonzero(p >= threshold)
    return tuple(int(i) for i in idx[np.argsort(-p[idx], kind="stable")])


class IchAnalyzer(CardAnalyzer):
    """Runs the ich classifier on a head CT Volume (HU)."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(card, threads, device, precision)
        arch = dict(card.architecture)
        self.arch = str(arch["net"])
        self.size = int(card.input["size"])
        self.context = int(card.input.get("context", 0))
        self.classes = card.classes
        if not self.classes or self.classes[0] != "any_hemorrhage":
            raise ValueError(f"ich card {card.name}: the first class must be any_hemorrhage, got {self.classes[:1]}")
        self.thresholds = np.array([card.thresholds.get(c, 0.5) for c in self.classes], np.float32)
        self.aggregation = str(card.postprocess.get("aggregation", "top2_mean"))
        self.gradcam_max_slices = int(card.postprocess.get("gradcam_max_slices", 12))
        # The noisiest series (HU at the input size, slices.noise_hu) the network was trained on; a noisier one is
        # smoothed back to it (slices.match_noise). Absent on cards written before ich 2.4.0: nothing is smoothed.
        self.noise_limit = noise_limit(card.input)
        self.batch = 32
        # Denormal floats in trained weights and activations slow CPU inference several-fold; flush them to zero.
        torch.set_flush_denormal(True)
        net = build_classifier(self.arch, int(arch["in_channels"]), int(arch["num_classes"]), float(arch["width"]))
        net.load_state_dict(load_file(str(card.weights_path)))
        self.torch_net = net.eval().to(self.device)
        self.net = network(card, self.torch_net, self.precision, threads)
        self._cam: object | None = None

    def _gradcam(self) -> object:
        """One GradCAM wrapper, built on a private copy of the network: monai's CAM keeps forward/backward hooks on
        the module it wraps for its lifetime, which would slow every later forward pass of ``self.net``."""
        if self._cam is None:
            from monai.visualize import GradCAM

            self._cam = GradCAM(nn_module=copy.deepcopy(self.torch_net), target_layers=gradcam_layer(self.arch))
        return self._cam

    def prepared(self, hu: np.ndarray) -> np.ndarray:
        """``hu`` brought within the noise the network was trained on (``input.noise_hu_max``; unchanged if none)."""
        return within_noise(hu, self.size, self.noise_limit, self.name)

    def inputs(self, hu: np.ndarray) -> torch.Tensor:
        """HU (z, y, x) -> network input (z, C, size, size)."""
        return with_context(window_resize(self.prepared(hu), self.size), self.context)

    def slice_probabilities(self, hu: np.ndarray, prepared: bool = False) -> np.ndarray:
        """Sigmoid probabilities float32 (z, 6) for each slice of ``hu`` (z, y, x); ``prepared``: ``hu`` already went
        through :meth:`prepared`."""
        # The 2.5-D stack is built per batch: a long series never holds it whole.
        win = window_resize(hu if prepared else self.prepared(hu), self.size)
        out = []
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for i in range(0, win.shape[0], self.batch):
                x = context_rows(win, torch.arange(i, min(i + self.batch, win.shape[0])), self.context)
                out.append(torch.sigmoid(self.net(x.to(self.device))).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)

    def gradcam(self, hu: np.ndarray, slices: tuple[int, ...]) -> np.ndarray:
        """Grad-CAM of ``any_hemorrhage`` on ``slices``: float32 (z, y, x) in [0, 1], zero on other slices. ``hu``:
        as the network saw it (:meth:`prepared`)."""
        z, h, w = hu.shape
        heat = np.zeros((z, h, w), np.float32)
        if not slices:
            return heat
        idx = list(slices)
        x = context_rows(window_resize(hu, self.size), torch.tensor(idx), self.context).to(self.device)
        cam = self._gradcam()
        with torch.enable_grad():
            maps = cam(x=x, class_idx=0)  # type: ignore[operator]  # (n, 1, size, size), each scaled to [0, 1]
        s = max(h, w)
        maps = F.interpolate(maps.detach().float().cpu(), size=(s, s), mode="bilinear", align_corners=False)
        y0, x0 = (s - h) // 2, (s - w) // 2
        heat[idx] = maps[:, 0, y0 : y0 + h, x0 : x0 + w].clamp(0, 1).numpy()
        return heat

    def analyze(self, volume: Volume) -> ModelOutput:
        t0 = time.monotonic()
        hu = self.prepared(volume.pixels)
        p = self.slice_probabilities(hu, prepared=True)
        series = aggregate(p, self.aggregation)
        findings = []
        any_present = bool(series[0] >= self.thresholds[0])
        for i, label in enumerate(self.classes):
            # A subtype qualifies the any-hemorrhage flag: shown present only on a series that is flagged, so a
            # normal head never carries a hemorrhage subtype (its probability is still recorded).
            present = bool(series[i] >= self.thresholds[i]) and any_present
            findings.append(
                Finding(
                    label=label,
                    present=present,
                    probability=float(np.clip(series[i], 0.0, 1.0)),
                    model=self.name,
                    model_version=self.version,
                    key_slices=key_slices(p[:, i], float(self.thresholds[i])) if present else (),
                )
            )
        heatmaps: dict[str, np.ndarray] = {}
        if findings[0].present:
            heatmaps["any_hemorrhage"] = self.gradcam(hu, findings[0].key_slices[: self.gradcam_max_slices])
        log.debug("ich: %d slices in %.2fs", p.shape[0], time.monotonic() - t0)
        return ModelOutput(self.name, self.version, tuple(findings), heatmaps=heatmaps, seconds=time.monotonic() - t0)
