"""Cerebral microbleeds on SWI / T2*: dark-spot candidates, then a five-block CNN that classifies each candidate patch.

The classifier follows the source study (Vaish et al., "Identification of Cerebral Micro-Bleeds using CNN"): five
convolutional blocks of 2-3 3x3 convolutions (zero padding, stride 1) with batch normalisation, each followed by a
stride-2 pooling, then one hidden dense layer and the output. Training augments by flips and rotation. The study's
patch-level accuracy says little about a subject, so this model is judged per subject: sensitivity and false positives.

Pipeline (pure numpy up to the patches): robust intensity normalisation -> brain mask -> candidate dark spots (local
minima of a darkness map, normalised convolution so the brain edge is not "dark") -> 3-slice patches resampled to a
fixed physical size -> CNN probability -> non-maximum merge within ``merge_mm`` -> microbleeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.card import ModelCard
from triage_node.inference.onnxrt import OrtNet, network
from triage_node.inference.precision import autocast
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume


@dataclass(frozen=True)
class CandidateConfig:
    """Candidate detection and patch geometry (mm), stored in the model card so training and inference agree."""

    patch_px: int = 32
    patch_mm: float = 24.0
    slice_offset_mm: float = 2.0
    min_contrast: float = 0.25
    max_candidates: int = 600
    min_separation_mm: float = 4.0
    merge_mm: float = 6.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateConfig:
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Candidates:
    """``centres``: (N, 3) float voxel (z, y, x); ``contrast``: (N,) darkness relative to the local background;
    ``brain``: bool (z, y, x) mask; ``scale``: the normalisation divisor used for the patches."""

    centres: np.ndarray
    contrast: np.ndarray
    brain: np.ndarray
    scale: float


def _gauss_sigma(mm: float, spacing: tuple[float, float, float]) -> list[float]:
    return [mm / s for s in spacing]


def brain_mask(img: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, float]:
    """A brain mask of an SWI magnitude image and the intensity scale (median of brain tissue).

    ``img``: float (z, y, x). Foreground above 30% of the robust tissue level, eroded ~3 mm so the dark skull separates
    brain from scalp, largest component, dilated back and hole-filled. Returns (bool mask, scale).
    """
    pos = img[img > np.percentile(img, 50)]
    level = float(np.median(pos)) if pos.size else 1.0
    fg = img > 0.3 * level
    it = max(1, int(round(3.0 / min(spacing))))
    st = ndimage.generate_binary_structure(3, 1)
    # Erosion by a fixed voxel count: anisotropic slices make this a little larger in z, which is harmless here.
    core = ndimage.binary_erosion(fg, st, iterations=it)
    lab, n = ndimage.label(core)
    if n == 0:
        return fg, level
    sizes = ndimage.sum(core, lab, index=np.arange(1, n + 1))
    core = lab == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_dilation(core, st, iterations=it) & fg
    # Close over ~4 mm so dark spots on the brain surface (juxtacortical bleeds) stay inside the mask.
    ci = max(1, int(round(4.0 / min(spacing))))
    mask = ndimage.binary_closing(np.pad(mask, ci), st, iterations=ci)[ci:-ci, ci:-ci, ci:-ci]
    # The closing can also take in skull (dark on SWI); drop dark components far larger than any microbleed (> 4 ml).
    dark = mask & (ndimage.gaussian_filter(img, [1.0 / s for s in spacing]) < 0.2 * level)
    lab, n = ndimage.label(dark)
    if n:
        vol_ml = np.bincount(lab.ravel()) * float(np.prod(spacing)) / 1000.0
        big = np.flatnonzero(vol_ml > 4.0)
        big = big[big > 0]
        if big.size:
            mask &= ~ndimage.binary_dilation(np.isin(lab, big), st, iterations=1)
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    scale = float(np.median(img[mask])) if mask.any() else level
    return mask, max(scale, 1e-6)


def find_candidates(img: np.ndarray, spacing: tuple[float, float, float], cfg: CandidateConfig) -> Candidates:
    """Dark-spot candidates in an SWI volume (float (z, y, x)); at most ``cfg.max_candidates``, darkest first."""
    img = np.asarray(img, dtype=np.float32)
    mask, scale = brain_mask(img, spacing)
    m = mask.astype(np.float32)
    x = img / scale * m
    eps = 1e-3
    small = ndimage.gaussian_filter(x, _gauss_sigma(0.6, spacing)) / (
        ndimage.gaussian_filter(m, _gauss_sigma(0.6, spacing)) + eps
    )
    bg = ndimage.gaussian_filter(x, _gauss_sigma(5.0, spacing)) / (
        ndimage.gaussian_filter(m, _gauss_sigma(5.0, spacing)) + eps
    )
    dark = np.where(m > 0, (bg - small) / np.maximum(bg, 0.05), 0.0).astype(np.float32)
    inner = ndimage.binary_erosion(mask, iterations=1)
    size = [max(3, int(round(cfg.min_separation_mm / s)) | 1) for s in spacing]
    peaks = (dark == ndimage.maximum_filter(dark, size=size)) & (dark > cfg.min_contrast) & inner
    idx = np.argwhere(peaks)
    vals = dark[peaks]
    # Rank by how round the dark spot is (brighter tissue in most in-plane directions), then by contrast, so that
    # when the cap binds (skull base, air-bone edges) the compact spots survive and the edges go.
    blob = blobness(small, spacing, idx)
    order = np.lexsort((-vals, -np.round(blob, 2)))[: cfg.max_candidates]
    return Candidates(idx[order].astype(np.float64), vals[order].astype(np.float32), mask, scale)


def blobness(small: np.ndarray, spacing: tuple[float, float, float], idx: np.ndarray, n_dir: int = 16) -> np.ndarray:
    """Share of in-plane directions in which the image gets clearly brighter (by 0.25 of the tissue level) within
    2-6 mm of each point. ``small``: normalised, lightly smoothed image (z, y, x); ``idx``: (N, 3) voxels. -> (N,)"""
    if len(idx) == 0:
        return np.zeros(0, dtype=np.float32)
    ang = np.linspace(0, 2 * np.pi, n_dir, endpoint=False)
    radii = np.array([2.0, 3.0, 4.5, 6.0])
    dy = np.sin(ang)[:, None] * radii[None, :] / spacing[1]
    dx = np.cos(ang)[:, None] * radii[None, :] / spacing[2]
    c = idx.astype(np.float64)
    coords = np.stack(
        [
            np.broadcast_to(c[:, 0, None, None], (len(c), n_dir, len(radii))),
            c[:, 1, None, None] + dy[None],
            c[:, 2, None, None] + dx[None],
        ]
    ).reshape(3, -1)
    ring = ndimage.map_coordinates(small, coords, order=1, mode="nearest").reshape(len(c), n_dir, len(radii))
    centre = small[idx[:, 0], idx[:, 1], idx[:, 2]]
    brighter = ring.max(axis=2) - centre[:, None] > 0.25
    return np.asarray(brighter.mean(axis=1), dtype=np.float32)


def extract_patches(
    img: np.ndarray, spacing: tuple[float, float, float], centres: np.ndarray, scale: float, cfg: CandidateConfig
) -> np.ndarray:
    """3-slice patches around ``centres`` (N, 3 voxel z, y, x) resampled to ``patch_mm`` at ``patch_px``.

    Returns float32 (N, 3, patch_px, patch_px): the slices at -offset, 0, +offset mm, divided by ``scale`` and centred
    on 1 (so 0 is tissue level and dark spots are negative).
    """
    n = len(centres)
    p = cfg.patch_px
    if n == 0:
        return np.zeros((0, 3, p, p), dtype=np.float32)
    ax = (np.arange(p) - (p - 1) / 2.0) * (cfg.patch_mm / p)
    dz = np.array([-cfg.slice_offset_mm, 0.0, cfg.slice_offset_mm]) / spacing[0]
    yy = ax[:, None] / spacing[1]
    xx = ax[None, :] / spacing[2]
    c = np.asarray(centres, dtype=np.float64)
    z = c[:, 0, None, None, None] + dz[None, :, None, None] + 0 * yy[None, None]
    y = c[:, 1, None, None, None] + yy[None, None] + 0 * dz[None, :, None, None]
    xg = c[:, 2, None, None, None] + xx[None, None] + 0 * dz[None, :, None, None]
    shape = (n, 3, p, p)
    coords = np.stack([np.broadcast_to(a, shape).ravel() for a in (z, y, xg)])
    vals = ndimage.map_coordinates(np.asarray(img, np.float32), coords, order=1, mode="nearest")
    return np.asarray(vals.reshape(shape) / scale - 1.0, dtype=np.float32)


def patch_radius_mm(patches: np.ndarray, cfg: CandidateConfig) -> np.ndarray:
    """Apparent radius (mm) of the dark spot at the centre of each patch (N, 3, p, p): the equivalent circle of the
    centre slice's connected pixels darker than half the centre's darkness. -> (N,) float."""
    out = np.zeros(len(patches), dtype=np.float64)
    p = cfg.patch_px
    c = p // 2
    px_mm = cfg.patch_mm / p
    for k, patch in enumerate(np.asarray(patches, dtype=np.float32)):
        sl = patch[1]
        v0 = float(sl[c - 1 : c + 1, c - 1 : c + 1].min())
        if v0 >= 0:
            continue
        lab, _ = ndimage.label(sl < v0 / 2.0)
        ids = lab[c - 1 : c + 1, c - 1 : c + 1].ravel()
        ids = ids[ids > 0]
        if ids.size:
            area = float(np.isin(lab, np.unique(ids)).sum())
            out[k] = np.sqrt(area / np.pi) * px_mm
    return out


class CmbNet(nn.Module):
    """The source study's classifier: five conv blocks (2, 2, 3, 3, 3 convs of 3x3, zero padding, stride 1, batch norm,
    ReLU, then 2x2 max pooling with stride 2), one hidden dense layer, one output logit. Input (N, 3, 32, 32)."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 48, 64, 64),
        hidden: int = 64,
        convs: tuple[int, ...] = (2, 2, 3, 3, 3),
        patch_px: int = 32,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(convs) != 5:
            raise ValueError(f"CmbNet needs five blocks: widths={widths}, convs={convs}")
        blocks: list[nn.Module] = []
        cin = in_channels
        for w, k in zip(widths, convs, strict=True):
            layers: list[nn.Module] = []
            for _ in range(k):
                layers += [
                    nn.Conv2d(cin, w, 3, stride=1, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                cin = w
            layers.append(nn.MaxPool2d(2, stride=2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        side = patch_px // 32
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.blocks(x))
        return logits.squeeze(1)


def build_cmb_net(**kw: Any) -> CmbNet:
    return CmbNet(**kw)


def merge_detections(
    centres: np.ndarray,
    probs: np.ndarray,
    spacing: tuple[float, float, float],
    merge_mm: float,
    radii_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum merge: indices of kept detections, most probable first.

    A kept detection suppresses the others closer than ``merge_mm`` or than the sum of the two apparent radii
    (overlapping dark spots), so one large blooming bleed whose dark area holds several local minima counts once.
    ``radii_mm``: apparent radius per detection (or None).
    """
    order = np.argsort(-probs, kind="stable")
    if len(order) == 0:
        return np.zeros(0, dtype=int)
    pts = np.asarray(centres, dtype=np.float64) * np.asarray(spacing)
    dist = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        reach = merge_mm if radii_mm is None else np.maximum(merge_mm, radii_mm[i] + radii_mm)
        suppressed |= dist[i] < reach
    return np.asarray(kept, dtype=int)


def dark_spot(
    img: np.ndarray, spacing: tuple[float, float, float], centre: np.ndarray, scale: float
) -> tuple[np.ndarray, float]:
    """Centre (voxel, float (3,)) and apparent (bloomed) radius (mm) of the dark spot at ``centre``: the connected
    voxels darker than half-way between the spot and the local tissue; centre weighted by darkness."""
    sp = np.asarray(spacing)
    ext = np.ceil(9.0 / sp).astype(int)
    c = np.round(centre).astype(int)
    lo = np.maximum(c - ext, 0)
    hi = np.minimum(c + ext + 1, np.asarray(img.shape))
    box = img[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] / scale
    local = np.clip(c - lo, 0, np.asarray(box.shape) - 1)
    level = float(np.median(box))
    v0 = float(box[tuple(local)])
    thr = 0.5 * (v0 + level)
    lab, _ = ndimage.label(box < thr)
    k = lab[tuple(local)]
    if not k:
        return np.asarray(centre, dtype=np.float64), float(np.min(sp))
    comp = lab == k
    w = np.clip(level - box, 0.0, None) * comp
    refined = np.asarray(ndimage.center_of_mass(w)) + lo if w.sum() > 0 else np.asarray(centre, dtype=np.float64)
    n = int(comp.sum())
    return refined, float((3.0 * n * float(np.prod(sp)) / (4.0 * np.pi)) ** (1.0 / 3.0))


def estimate_radius_mm(img: np.ndarray, spacing: tuple[float, float, float], centre: np.ndarray, scale: float) -> float:
    """Apparent (bloomed) radius of the dark spot at ``centre`` (see :func:`dark_spot`)."""
    return dark_spot(img, spacing, centre, scale)[1]


@dataclass
class CmbDetector:
    """The detection logic with a network in hand (used by the analyzer, training evaluation and tests)."""

    net: CmbNet | OrtNet  # OrtNet: the int8 export (models.precision: int8)
    cfg: CandidateConfig
    threshold: float = 0.5
    batch_size: int = 128
    precision: str = "fp32"  # resolved: fp32 | bf16 | int8
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the network's weights are

    def score(self, patches: np.ndarray) -> np.ndarray:
        """CNN probabilities for patches (N, 3, p, p) -> (N,) float32."""
        self.net.eval()
        out = []
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for i in range(0, len(patches), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(patches[i : i + self.batch_size]))
                logits = self.net(batch.to(self.device))
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def candidates(
        self, img: np.ndarray, spacing: tuple[float, float, float]
    ) -> tuple[Candidates, np.ndarray, np.ndarray]:
        """All candidates, their CNN probabilities and patches (before thresholding and merging)."""
        cands = find_candidates(img, spacing, self.cfg)
        patches = extract_patches(img, spacing, cands.centres, cands.scale, self.cfg)
        return cands, self.score(patches), patches

    def select(
        self,
        cands: Candidates,
        probs: np.ndarray,
        spacing: tuple[float, float, float],
        threshold: float | None = None,
        patches: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Centres (K, 3 voxel) and probabilities (K,) at or above the threshold, merged (size-aware with patches)."""
        thr = self.threshold if threshold is None else threshold
        sel = probs >= thr
        centres, p = cands.centres[sel], probs[sel]
        radii = patch_radius_mm(patches[sel], self.cfg) if patches is not None else None
        keep = merge_detections(centres, p, spacing, self.cfg.merge_mm, radii)
        return centres[keep].reshape(-1, 3), p[keep]


class CmbAnalyzer(CardAnalyzer):
    """Microbleed analyzer for a ``models/cmb`` card: ``analyze(volume)`` on an SWI / T2* magnitude Volume."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        from safetensors.torch import load_file

        super().__init__(card, threads, device, precision)
        net = build_cmb_net(**dict(card.architecture.get("params", {})))
        net.load_state_dict(load_file(str(card.weights_path)))
        cfg = CandidateConfig.from_dict(dict(card.input.get("candidates", {})))
        self.detector = CmbDetector(
            network(card, net.eval().to(self.device), self.precision, threads), cfg,
            float(card.thresholds.get("microbleed", 0.5)), precision=self.precision, device=self.device,
        )

    def analyze(self, volume: Volume) -> ModelOutput:
        return analyze_with(self.detector, volume, self.name, self.version)


def analyze_with(detector: CmbDetector, volume: Volume, name: str, version: str) -> ModelOutput:
    """Run ``detector`` on ``volume`` and build the ``microbleed`` finding and sphere mask."""
    t0 = time.perf_counter()
    img = np.asarray(volume.pixels, dtype=np.float32)
    cands, all_probs, patches = detector.candidates(img, volume.spacing)
    centres, probs = detector.select(cands, all_probs, volume.spacing, patches=patches)
    mask = np.zeros(img.shape, dtype=bool)
    sp = np.asarray(volume.spacing)
    refined = [dark_spot(img, volume.spacing, c, cands.scale) for c in centres]
    centres = np.asarray([rc for rc, _ in refined], dtype=np.float64).reshape(-1, 3)
    radii = np.asarray([r for _, r in refined], dtype=np.float64)
    # Two detections far enough apart to survive the merge can settle on the same dark spot once refined: merge
    # again on the refined centres, so one microbleed is never counted twice.
    keep = merge_detections(centres, probs, volume.spacing, detector.cfg.merge_mm, radii)
    centres, probs, radii = centres[keep].reshape(-1, 3), probs[keep], radii[keep]
    for c, r in zip(centres, radii, strict=True):
        ext = np.ceil(r / sp).astype(int) + 1
        lo = np.maximum(np.round(c).astype(int) - ext, 0)
        hi = np.minimum(np.round(c).astype(int) + ext + 1, np.asarray(img.shape))
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d2 = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= d2 <= r * r
    positions: tuple[tuple[float, float, float], ...] = (
        tuple((float(p[0]), float(p[1]), float(p[2])) for p in volume.voxel_to_patient(centres)) if len(centres) else ()
    )
    key = tuple(dict.fromkeys(int(round(c[0])) for c in centres))  # centres come highest probability first
    finding = Finding(
        label="microbleed",
        present=len(centres) > 0,
        probability=float(np.clip(all_probs.max(), 0.0, 1.0)) if len(all_probs) else 0.0,
        model=name,
        model_version=version,
        count=len(centres),
        key_slices=key,
        positions=positions,
    )
    return ModelOutput(
        model=name,
        model_version=version,
        findings=(finding,),
        masks={"microbleed": mask},
        seconds=time.perf_counter() - t0,
    )
