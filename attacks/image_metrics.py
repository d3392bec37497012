"""Image similarity scores: PSNR and SSIM (torchmetrics when installed, else our own)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]

try:  # a well-kept implementation when available
    from torchmetrics.functional.image import peak_signal_noise_ratio as _tm_psnr
    from torchmetrics.functional.image import structural_similarity_index_measure as _tm_ssim
except ImportError:  # pragma: no cover - exercised where torchmetrics is absent
    _tm_psnr = _tm_ssim = None


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`(H, W)`, `(C, H, W)` or `(N, C, H, W)` -> float64 `(N, C, H, W)`."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(torch.float64)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _range(reference: torch.Tensor, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    span = float(reference.max() - reference.min())
    return span if span > 0 else 1.0


def _prepare(
    image, reference, data_range: float | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Both images as (1, C, H, W) batches of the same shape, and the data range."""
    x, ref = _as_batch(image), _as_batch(reference)
    if x.shape != ref.shape:
        raise ValueError(f"image {tuple(x.shape)} and reference {tuple(ref.shape)} differ")
    return x, ref, _range(ref, data_range)


def psnr(
    image: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    data_range: float | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB; `data_range` defaults to the reference's max - min."""
    x, ref, rng = _prepare(image, reference, data_range)
    if _tm_psnr is not None:
        return float(_tm_psnr(x, ref, data_range=rng))
    mse = float(((x - ref) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(rng**2 / mse)


def ssim(
    image: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    data_range: float | None = None,
) -> float:
    """Structural similarity (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), mean over
    the image; `data_range` defaults to the reference's max - min."""
    x, ref, rng = _prepare(image, reference, data_range)
    if _tm_ssim is not None:
        return float(_tm_ssim(x, ref, data_range=rng))
    return _ssim(x, ref, rng)


def _ssim(x: torch.Tensor, y: torch.Tensor, rng: float) -> float:
    """Own SSIM (same constants and window as torchmetrics' default; 'valid' region)."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    c = x.shape[1]
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())
