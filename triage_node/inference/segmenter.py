"""The crop-grid segmenter analyzer (Kalmutskiy & Berikov 2021) for hemorrhage extent on CT (and infarcts on MR).

Per slice: resample to ``input.size`` (square), cut into a 4 x 4 grid of crops, run the network on each crop and on its
horizontal flip (TTA, averaged), zero the segmentation of crops whose classifier gate is below ``gate_threshold``,
reassemble and resample back. Per volume: threshold, keep the largest 3-D connected component (``max_components``)
and drop it when its largest in-plane cross-section is under ``min_area_mm2`` (the study's 1200 px at its resolution,
expressed in mm^2 here) or its through-plane extent under ``min_extent_mm`` (0 when the card has none).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.card import ModelCard
from triage_node.inference.cropgrid import keep_components
from triage_node.inference.nets import build_segmenter
from triage_node.inference.onnxrt import network
from triage_node.inference.precision import autocast
from triage_node.inference.slices import noise_limit, square_pad, window_resize, within_noise
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume

log = logging.getLogger(__name__)


def grid_crops(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * n * n, C, H / n, W / n), row-major per image (torch twin of cropgrid.cut_grid)."""
    b, c, h, w = x.shape
    t = x.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b * n * n, c, h // n, w // n)


def grid_join(crops: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`grid_crops`: (B * n * n, C, h, w) -> (B, C, n * h, n * w)."""
    bnn, c, h, w = crops.shape
    t = crops.reshape(bnn // (n * n), n, n, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(bnn // (n * n), c, n * h, n * w)


def head_voxels(px: np.ndarray) -> np.ndarray:
    """The voxels of an MR volume that belong to the head: above a threshold halfway (in log) between the background
    level and the bright tissue level, found from the volume's own histogram (works with a noisy or a zeroed
    background alike)."""
    sample = px[:: max(1, px.shape[0] // 16)].ravel()
    sample = sample[sample > 0]
    if sample.size == 0:
        return sample
    hi = float(np.percentile(sample, 98.0))
    lo = float(np.percentile(sample, 20.0))
    thr = np.sqrt(max(lo, hi * 1e-3) * hi) * 0.5 if hi > 0 else 0.0
    return px[px > thr]


def normalise(pixels: np.ndarray, kind: str, size: int) -> torch.Tensor:
    """Volume pixels (z, y, x) -> network input (z, C, size, size).

    ``ct_windows``: brain/subdural/bone windows of HU (3 channels). ``zscore``: MR intensities standardised over the
    non-zero voxels of the volume, mapped to roughly [0, 1] (1 channel); it moves with how much background the series
    holds (noise or stored zeros). ``robust``: MR intensities centred on the median of the head's voxels and scaled by
    their 5th-95th percentile range, so neither the background, the gain nor a bright artefact moves it (1 channel).
    """
    if kind == "ct_windows":
        return window_resize(pixels, size)
    if kind == "robust":
        px = np.asarray(pixels, np.float32)
        fg = head_voxels(px)
        if fg.size:
            med = float(np.median(fg))
            lo, hi = np.percentile(fg, [5.0, 95.0])
            scale = max(float(hi - lo), 1e-6)
        else:
            med, scale = 0.0, 1.0
        z = ((square_pad(px, 0.0) - med) / scale) / 3.0 + 0.35
        x = torch.from_numpy(z.clip(0, 1).astype(np.float32))[:, None]
        return F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x
    if kind == "zscore":
        px = np.asarray(pixels, np.float32)
        fg = px[px > 0]
        mu, sd = (float(fg.mean()), float(fg.std()) + 1e-6) if fg.size else (0.0, 1.0)
        x = torch.from_numpy(((square_pad(px, 0.0) - mu) / sd / 6.0 + 0.5).clip(0, 1))[:, None]
        return F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x
    raise ValueError(f"input.kind must be 'ct_windows', 'zscore' or 'robust', got {kind!r}")


class CropGridSegmenter(CardAnalyzer):
    """Analyzer for a crop-grid segmentation model card."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(card, threads, device, precision)
        arch = dict(card.architecture)
        self.kind = str(card.input.get("kind", "ct_windows"))
        self.size = int(card.input["size"])
        post = dict(card.postprocess)
        self.grid = int(post.get("grid", 4))
        self.tta = bool(post.get("flip_tta", True))
        self.min_area_mm2 = float(post.get("min_area_mm2", 0.0))
        self.max_components = int(post.get("max_components", 1))
        self.min_extent_mm = float(post.get("min_extent_mm", 0.0))
        self.label = str(post.get("finding_label", "hemorrhage"))
        self.gate_threshold = float(card.thresholds.get("gate", 0.5))
        self.seg_threshold = float(card.thresholds.get("segmentation", 0.5))
        # CT only: the noisiest series (HU at the input size) the network was trained on; a noisier one is smoothed
        # back to it first (slices.match_noise), as the ich analyzer does. Absent: nothing is smoothed.
        self.noise_limit = noise_limit(card.input) if self.kind == "ct_windows" else None
        self.batch = 8  # slices per forward pass (x 16 crops)
        torch.set_flush_denormal(True)  # see IchAnalyzer: denormals slow CPU inference several-fold
        net = build_segmenter(int(arch["in_channels"]), int(arch.get("base", 16)))
        net.load_state_dict(load_file(str(card.weights_path)))
        self.net = network(card, net.eval().to(self.device), self.precision, threads)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crops = grid_crops(x, self.grid)
        # Crops that are all air (every channel 0 after normalisation) cannot hold a lesion: skip the network there
        # (a third to a half of a head slice's grid), and report segmentation 0 and gate 0 for them.
        active = crops.amax(dim=(1, 2, 3)) > 0.0
        seg_p = torch.zeros(crops.shape[0], 1, *crops.shape[2:])
        cls_p = torch.zeros(crops.shape[0])
        if active.any():
            a = crops[active].to(self.device)
            seg, cls = self.net(a)
            s, c = torch.sigmoid(seg.float()), torch.sigmoid(cls.float())
            if self.tta:
                seg_f, cls_f = self.net(a.flip(-1))
                s = (s + torch.sigmoid(seg_f.float()).flip(-1)) / 2
                c = (c + torch.sigmoid(cls_f.float())) / 2
            seg_p[active], cls_p[active] = s.cpu(), c.cpu()
        gated = seg_p * (cls_p >= self.gate_threshold).float()[:, None, None, None]
        return grid_join(gated, self.grid)[:, 0], cls_p.reshape(x.shape[0], self.grid * self.grid)

    def probabilities(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gated segmentation probability float32 (z, y, x) aligned with ``pixels`` and gate probabilities (z, n*n)."""
        z, h, w = pixels.shape
        pixels = within_noise(pixels, self.size, self.noise_limit, self.name)
        x = normalise(pixels, self.kind, self.size)
        segs, gates = [], []
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for i in range(0, z, self.batch):
                s, g = self._forward(x[i : i + self.batch])
                segs.append(s)
                gates.append(g)
        seg = torch.cat(segs)[:, None]
        s = max(h, w)
        if s != self.size:
            seg = F.interpolate(seg, size=(s, s), mode="bilinear", align_corners=False)
        y0, x0 = (s - h) // 2, (s - w) // 2
        return seg[:, 0, y0 : y0 + h, x0 : x0 + w].numpy(), torch.cat(gates).numpy()

    def segment(
        self,
        pixels: np.ndarray,
        spacing: tuple[float, float, float],
        accept: Callable[[np.ndarray], bool] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Post-processed mask bool (z, y, x) and the gate probability backing it (max over the crops it touches).
        ``accept``: a test each candidate component must pass before the largest are kept (:func:`keep_components`)."""
        prob, gates = self.probabilities(pixels)
        mask = keep_components(
            prob >= self.seg_threshold, spacing, self.min_area_mm2, self.max_components, self.min_extent_mm, accept
        )
        z, h, w = pixels.shape
        if mask.any():
            s = max(h, w)
            y0, x0 = (s - h) // 2, (s - w) // 2
            cell = s / self.grid
            zz, yy, xx = np.nonzero(mask)
            crop = ((yy + y0) // cell).astype(int) * self.grid + ((xx + x0) // cell).astype(int)
            gate = float(gates[zz, np.clip(crop, 0, self.grid * self.grid - 1)].max())
        else:
            gate = float(gates.max()) if gates.size else 0.0
        return mask, gate

    def analyze(self, volume: Volume) -> ModelOutput:
        t0 = time.monotonic()
        mask, gate = self.segment(volume.pixels, volume.spacing)
        present = bool(mask.any())
        per_slice = mask.sum(axis=(1, 2))
        order = np.argsort(-per_slice, kind="stable")
        finding = Finding(
            label=self.label,
            present=present,
            probability=float(np.clip(gate, 0.0, 1.0)),
            model=self.name,
            model_version=self.version,
            volume_ml=round(float(mask.sum()) * volume.voxel_volume_ml, 2) if present else 0.0,
            laterality=laterality(volume, mask) if present else None,
            key_slices=tuple(int(i) for i in order if per_slice[i] > 0),
            positions=(_xyz(volume.voxel_to_patient(np.argwhere(mask).mean(axis=0))[0]),)
            if present
            else (),
        )
        return ModelOutput(self.name, self.version, (finding,), masks={self.label: mask},
                           seconds=time.monotonic() - t0)


def _xyz(p: np.ndarray) -> tuple[float, float, float]:
    return float(p[0]), float(p[1]), float(p[2])


def laterality(volume: Volume, mask: np.ndarray) -> str | None:
    """``left`` | ``right`` | ``bilateral`` from the mask's voxels in patient coordinates (LPS: +x is patient left).

    The midline is the x (patient) coordinate of the head's centre on the mask's slices (pixels above -200, i.e.
    not air). Bilateral when each side holds at least a fifth of the mask.
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    head = np.argwhere(volume.pixels[zs] > -200)
    if len(head) == 0:
        return None
    head[:, 0] = zs[head[:, 0]]
    mid_x = float(volume.voxel_to_patient(head.mean(axis=0))[0, 0])
    pts = volume.voxel_to_patient(np.argwhere(mask))[:, 0]
    left = float((pts > mid_x).mean())
    if 0.2 <= left <= 0.8:
        return "bilateral"
    return "left" if left > 0.5 else "right"
