"""Parallel-beam CT in torch: forward projection (rotate and sum), Poisson counts, filtered back-projection.

scikit-image's ``radon`` + ``iradon`` take ~0.2 s of CPU for one 256 x 256 slice at 180 views; this batched version
takes ~0.03-0.05 s per slice on an idle machine (rotation by ``grid_sample`` for the projection, one gather per
pixel and view for the back-projection), which keeps a 40-slice head series at a few seconds.

Images are in *pixel units*: a value is the linear attenuation coefficient times the pixel size, so a projection is a
dimensionless line integral.

Geometry: the image's pixel centres sit at ``index - (n - 1) / 2``; a ray at angle theta and detector coordinate t
(``t = u cos(theta) + v sin(theta)`` for column offset u and row offset v) sums the image along its direction. Only the
inscribed circle is imaged; outside it the reconstruction is undefined (set to padding by the caller).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "hamming")


def circle_mask(n: int) -> torch.Tensor:
    c = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) ** 2
    return (c[:, None] + c[None, :]) <= ((n - 1) / 2.0) ** 2


def angles(n_views: int) -> torch.Tensor:
    return torch.arange(n_views, dtype=torch.float64) * (math.pi / n_views)


UPSAMPLE = 4  # filtered projections are linearly upsampled so back-projection needs one gather per pixel and view


@functools.lru_cache(maxsize=4)
def _pixel_offsets(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices and (u, v) offsets from the centre of the pixels inside the inscribed circle."""
    inside = circle_mask(n).reshape(-1)
    flat = torch.nonzero(inside).reshape(-1)
    c = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return flat, u.reshape(-1)[flat], v.reshape(-1)[flat]


def forward(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Line integrals of ``images`` (B, n, n) at angles ``theta`` (A,) -> sinograms (B, A, n) float32.

    Ray-driven by rotation: for each view the batch is resampled (bilinear) onto the rotated grid and summed along
    the rays, as scikit-image's ``radon`` does for one image (and agreeing with it to interpolation error).
    """
    b, n, _ = images.shape
    lin = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) / (n / 2.0)
    gv, gu = torch.meshgrid(lin, lin, indexing="ij")  # rows (v), columns (u)
    x = (images * circle_mask(n)).float()[:, None]
    out = torch.empty(b, len(theta), n, dtype=torch.float32)
    base = torch.stack([gu, gv, -gv, gu], dim=-1)  # (n, n, 4)
    for i, a in enumerate(theta.tolist()):
        c, s = math.cos(a), math.sin(a)
        # Output column t, row w sample the image at u = t cos - w sin, v = t sin + w cos; summing over w gives P(t).
        grid = (base[..., :2] * c + base[..., 2:] * s)[None].expand(b, -1, -1, -1)
        rot = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[:, i] = rot[:, 0].sum(dim=1)
    return out


def add_poisson_noise(
    sino: torch.Tensor, photons: float, generator: torch.Generator, electronic: float = 0.0
) -> torch.Tensor:
    """Counts ~ Poisson(photons * exp(-p)) (+ Gaussian electronic noise), then back to line integrals."""
    expected = photons * torch.exp(-sino.double())
    counts = torch.poisson(expected, generator=generator)
    if electronic > 0:
        counts = counts + electronic * torch.randn(counts.shape, generator=generator, dtype=counts.dtype)
    return (-torch.log(counts.clamp(min=1.0) / photons)).float()


def ramp_filter(size: int, name: str) -> torch.Tensor:
    """The frequency response (size,) of the Kak-Slaney spatial ramp with an apodising window ``name``."""
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    k = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * k) ** 2
    resp = 2.0 * np.real(np.fft.fft(h))  # ~ 2 |f| for f in cycles per pixel
    f = np.fft.fftfreq(size)
    if name == "shepp-logan":
        resp *= np.sinc(f)
    elif name == "cosine":
        resp *= np.cos(np.pi * f)
    elif name == "hann":
        resp *= 0.5 * (1.0 + np.cos(2.0 * np.pi * f))
    elif name == "hamming":
        resp *= 0.54 + 0.46 * np.cos(2.0 * np.pi * f)
    return torch.from_numpy(resp)


def filtered_backprojection(sino: torch.Tensor, theta: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
    """Reconstruct (B, n, n) float32 from sinograms (B, A, n) taken at ``theta`` (A,) over [0, pi); zero outside the
    inscribed circle."""
    b, a, n = sino.shape
    size = max(64, 2 ** int(math.ceil(math.log2(2 * n))))
    spec = torch.fft.fft(F.pad(sino.double(), (0, size - n)), dim=-1) * ramp_filter(size, filter_name)
    q = torch.real(torch.fft.ifft(spec, dim=-1))[..., :n].float()  # (B, A, n)
    # Linear interpolation at UPSAMPLE x the detector sampling, then nearest lookup (error < 1/8 bin).
    fine = F.interpolate(q.reshape(b * a, 1, n), scale_factor=UPSAMPLE, mode="linear", align_corners=False)
    fine = fine.reshape(b, a, n * UPSAMPLE).transpose(0, 1).contiguous()  # (A, B, n * UPSAMPLE)
    flat, u, v = _pixel_offsets(n)
    acc = torch.zeros(b, flat.numel(), dtype=torch.float32)
    shift = UPSAMPLE * (n - 1) / 2.0 + (UPSAMPLE - 1) / 2.0
    for i, ang in enumerate(theta.tolist()):
        t = (u * (UPSAMPLE * math.cos(ang)) + v * (UPSAMPLE * math.sin(ang)) + shift).round_().long()
        acc += fine[i].index_select(1, t.clamp_(0, n * UPSAMPLE - 1))
    rec = torch.zeros(b, n * n, dtype=torch.float32)
    rec[:, flat] = acc * (math.pi / (2.0 * a))
    return rec.reshape(b, n, n)
