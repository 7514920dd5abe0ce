"""Scattering-network features (Bruna & Mallat 2013), the hand-crafted front end of Tramer & Boneh (2021).

Why this is in the DP package: DP-SGD pays for every trained parameter in noise, so a model that learns less
does better at a fixed epsilon.  A scattering transform is a fixed, data-independent cascade of Morlet wavelet
convolutions and complex moduli; computing it costs no privacy, and a linear model on its output beat
end-to-end CNNs under DP in Tramer & Boneh's "Differentially Private Learning Needs Better Features" (ICLR
2021): 89.7% on Fashion-MNIST at epsilon = 3 against 86.0% for their best CNN.

The transform with `J` scales and `L` orientations maps an image to

* order 0: ``x * phi`` (a Gaussian low-pass at scale ``2**J``),
* order 1: ``|x * psi_{j,l}| * phi`` for every scale ``j < J`` and orientation ``l < L``,
* order 2: ``||x * psi_{j1,l1}| * psi_{j2,l2}| * phi`` for ``j1 < j2 < J``,

each subsampled by ``2**J``: ``1 + J*L + L*L*J*(J-1)/2`` channels (81 for J=2, L=8) of size ``H/2**J x W/2**J``.
The Morlet wavelets use the usual parameters (width ``0.8 * 2**j``, frequency ``3*pi/4 / 2**j``, slant ``4/L``);
images are reflect-padded by ``2**(J+1)`` pixels and convolved circularly in the Fourier domain.

Example:
    >>> import numpy as np
    >>> scattering2d(np.zeros((2, 28, 28), np.float32)).shape
    (2, 81, 7, 7)
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

__all__ = ["group_normalize", "morlet_filter_bank", "num_channels", "scattering2d"]


def num_channels(J: int, L: int) -> int:
    """Number of scattering channels for `J` scales and `L` orientations (orders 0, 1 and 2)."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter on a `size` x `size` periodic grid (its neighbouring periods folded in), unnormalised."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    coords = np.arange(size) - size // 2
    out = np.zeros((size, size), np.complex128)
    # Fold the periods next door in, so the filter is a true periodic kernel (matters at the largest scale).
    for dx in (-size, 0, size):
        for dy in (-size, 0, size):
            x = (coords + dx)[:, None]
            y = (coords + dy)[None, :]
            quad = curv[0, 0] * x * x + (curv[0, 1] + curv[1, 0]) * x * y + curv[1, 1] * y * y
            out += np.exp(-quad + 1j * xi * (x * math.cos(theta) + y * math.sin(theta)))
    out /= 2 * math.pi * sigma * sigma / slant
    # Centre -> index 0, so that multiplying spectra is convolution without a shift.
    return np.fft.ifftshift(out)


@functools.lru_cache(maxsize=8)
def morlet_filter_bank(size: int, J: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Fourier transforms of the wavelets and the low-pass for `size` x `size` periodic images.

    Returns:
        ``(psi, phi)``: psi of shape ``(J, L, size, size)`` (complex), phi of shape ``(size, size)`` (real).
        Every wavelet has zero mean (``psi[j, l, 0, 0] == 0`` up to rounding); phi has unit mean.
    """
    slant = 4.0 / L
    psi = np.empty((J, L, size, size), np.complex128)
    for j in range(J):
        sigma = 0.8 * 2**j
        xi = 3.0 * math.pi / 4.0 / 2**j
        for l in range(L):
            theta = (L - 1 - l) * math.pi / L
            wave = _gabor(size, sigma, theta, xi, slant)
            envelope = _gabor(size, sigma, theta, 0.0, slant)
            # A Morlet wavelet is a Gabor filter minus the multiple of its envelope that makes its mean zero.
            morlet = wave - (wave.sum() / envelope.sum()) * envelope
            psi[j, l] = np.fft.fft2(morlet)
    phi = np.fft.fft2(_gabor(size, 0.8 * 2**J, 0.0, 0.0, 1.0)).real
    return psi, phi


def _fold(spectrum: np.ndarray, step: int) -> np.ndarray:
    """Sum of the spectrum's aliases on the grid subsampled by `step` (what spatial subsampling does to it)."""
    *lead, m, n = spectrum.shape
    return spectrum.reshape(*lead, step, m // step, step, n // step).sum(axis=(-4, -2))


def _lowpass_subsample(spectrum: np.ndarray, phi: np.ndarray, step: int) -> np.ndarray:
    """Real part of ``ifft2(spectrum * phi)[..., ::step, ::step]``, via aliasing the spectrum (cheaper)."""
    return scipy.fft.ifft2(_fold(spectrum * phi, step) / (step * step), workers=-1).real


def scattering2d(images, J: int = 2, L: int = 8, *, batch_size: int = 256) -> np.ndarray:
    """Scattering coefficients of grey-scale images.

    Order 1 is computed at full resolution; order 2 at the resolution of its second wavelet (subsampled by
    ``2**j2`` before the modulus, as is usual: the wavelet has little energy above that band), in single
    precision.

    Args:
        images: array of shape ``(n, H, W)`` (or ``(n, H, W, 1)``), float; H and W multiples of ``2**J``.
        J: number of scales, 1 to 4.
        L: number of orientations, 1 to 16.
        batch_size: images transformed together (memory: about ``batch_size * L * (H + 2**(J+2))**2 * 8`` bytes).

    Returns:
        float32 array ``(n, num_channels(J, L), H // 2**J, W // 2**J)``, channels ordered order 0, order 1
        (scale-major), order 2 (by j1, l1, j2, l2).

    Raises:
        TypeError: `images` is not numeric, or J/L/batch_size are not ints.
        ValueError: wrong rank, sizes that 2**J does not divide, non-finite pixels, J or L out of range.
    """
    for name, value, low, high in (("J", J, 1, 4), ("L", L, 1, 16), ("batch_size", batch_size, 1, 1 << 20)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"scattering2d: argument `{name}` must be an int, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"scattering2d: argument `{name}` must be in [{low}, {high}], got {value}")
    x = np.asarray(images)
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise TypeError(f"scattering2d: argument `images` must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"scattering2d: argument `images` must have shape (n, H, W) or (n, H, W, 1), got {x.shape}")
    n, h, w = x.shape
    step = 2**J
    if h != w or h % step:
        raise ValueError(
            f"scattering2d: argument `images` must be square with a side divisible by 2**J = {step}, got {h}x{w}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("scattering2d: argument `images` holds NaN or infinite values")
    pad = 2 * step
    size = h + 2 * pad
    psi64, phi64 = morlet_filter_bank(size, J, L)
    psi, phi = psi64.astype(np.complex64), phi64.astype(np.float32)
    # The low-pass on the grid subsampled by 2**j: its spectrum's aliases summed (unit mean is kept).
    phi_at = {j: _fold(phi, 2**j).astype(np.float32) for j in range(J)}
    out_side = h // step
    crop = slice(pad // step, pad // step + out_side)
    out = np.empty((n, num_channels(J, L), out_side, out_side), np.float32)
    for start in range(0, n, batch_size):
        batch = np.pad(x[start:start + batch_size].astype(np.float32), ((0, 0), (pad, pad), (pad, pad)),
                       mode="reflect")
        spectrum = scipy.fft.fft2(batch, workers=-1)
        channels = [_lowpass_subsample(spectrum, phi, step)]
        first = {}
        for j1 in range(J):
            u1 = np.abs(scipy.fft.ifft2(spectrum[:, None] * psi[j1][None], workers=-1))  # (b, L, s, s)
            first[j1] = scipy.fft.fft2(u1, workers=-1)
            channels.extend(np.moveaxis(_lowpass_subsample(first[j1], phi, step), 1, 0))
        for j1 in range(J):
            for l1 in range(L):
                for j2 in range(j1 + 1, J):
                    down = 2**j2
                    wave = _fold(first[j1][:, l1, None] * psi[j2][None], down) / (down * down)
                    u2_hat = scipy.fft.fft2(np.abs(scipy.fft.ifft2(wave, workers=-1)), workers=-1)
                    s2 = _lowpass_subsample(u2_hat, phi_at[j2], step // down)
                    channels.extend(np.moveaxis(s2, 1, 0))
        stacked = np.stack(channels, axis=1)[:, :, crop, crop]
        out[start:start + len(batch)] = stacked
    return out


def group_normalize(features: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    """Per-example normalisation of channel groups (as GroupNorm without learned scale): mean 0, variance 1.

    Each example is normalised with its own statistics only, so this costs no privacy (Tramer & Boneh
    normalise scattering features this way before the linear model).

    Args:
        features: ``(n, C, H, W)``; C must be divisible by `groups`.
        groups: number of channel groups.
        eps: added to the variance.
    """
    f = np.asarray(features, np.float32)
    if f.ndim != 4:
        raise ValueError(f"group_normalize: argument `features` must have shape (n, C, H, W), got {f.shape}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 or f.shape[1] % groups:
        raise ValueError(f"group_normalize: argument `groups` must be a positive divisor of C = {f.shape[1]}, "
                         f"got {groups!r}")
    n, c, h, w = f.shape
    g = f.reshape(n, groups, -1)
    g = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
    return g.reshape(n, c, h, w)
