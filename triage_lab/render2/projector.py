"""Parallel-beam CT in torch: forward projection (rotate and sum), Poisson counts, filtered back-projection.

scikit-image's ``radon`` + ``iradon`` take ~0.2 s for one 256 x 256 slice on this project's CPUs; this batched version
takes ~0.05 s per slice, which keeps a 40-slice head series at a couple of seconds. Images are in *pixel units*:
a value is the linear attenuation coefficient times the pixel size, so a projection is a dimensionless line integral.

Geometry: the image's pixel centres sit at ``index - (n - 1) / 2``; a ray at angle theta and detector coordinate t
(``t = u cos(theta) + v sin(theta)`` for column offset u and row offset v) sums the image along its direction. Only the
inscribed circle is imaged; outside it the reconstruction is undefined (set to padding by the caller).
"""

from __future__ import annotations

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


def forward(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Line integrals of ``images`` (B, n, n) at angles ``theta`` (A,) -> sinograms (B, A, n) float32."""
    b, n, _ = images.shape
    lin = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) / (n / 2.0)
    gv, gu = torch.meshgrid(lin, lin, indexing="ij")  # rows (v), columns (u)
    x = (images * circle_mask(n)).float()[:, None]
    out = torch.empty(b, len(theta), n, dtype=torch.float32)
    for i, a in enumerate(theta.tolist()):
        c, s = math.cos(a), math.sin(a)
        # Output column t, row w sample the image at u = t cos - w sin, v = t sin + w cos; summing over w gives P(t).
        grid = torch.stack([c * gu - s * gv, s * gu + c * gv], dim=-1)[None].expand(b, -1, -1, -1)
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
    """Reconstruct (B, n, n) float32 from sinograms (B, A, n) taken at ``theta`` (A,) over [0, pi)."""
    b, a, n = sino.shape
    size = max(64, 2 ** int(math.ceil(math.log2(2 * n))))
    spec = torch.fft.fft(F.pad(sino.double(), (0, size - n)), dim=-1) * ramp_filter(size, filter_name)
    q = torch.real(torch.fft.ifft(spec, dim=-1))[..., :n].float()  # (B, A, n)
    q = F.pad(q, (0, 1))  # a zero bin past the end for the linear interpolation
    c = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    rec = torch.zeros(b, n * n, dtype=torch.float32)
    for i, ang in enumerate(theta.tolist()):
        t = u * math.cos(ang) + v * math.sin(ang) + (n - 1) / 2.0
        i0 = t.floor().clamp(-1, n - 1)
        w = (t - i0).clamp(0.0, 1.0)
        i0l = i0.long()
        lo = torch.where(i0l >= 0, i0l, torch.full_like(i0l, n))  # index n is the zero bin
        hi = torch.where(i0l + 1 <= n - 1, i0l + 1, torch.full_like(i0l, n))
        row = q[:, i]
        rec += row[:, lo] * (1.0 - w) + row[:, hi] * w
    rec *= math.pi / (2.0 * a)
    return rec.reshape(b, n, n)
