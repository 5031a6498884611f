"""Elastic and affine distortions of training images (Simard, Steinkraus and Platt, 2003).

The reference, in NumPy, one step per equation (README, "Distortions"); the
Numba kernels compute the same thing one sample at a time as each batch is
gathered (kernels/numba_distort.py). For training sample j of an epoch whose
key is K, every random number comes from a counter-based hash, so both
backends draw bit-identical numbers whatever the batch, order or thread:

    k_j    = mix(K + (j + 1) G)                  G = 0x9E3779B97F4A7C15 (SplitMix64)
    h_j,c  = mix(k_j + (c + 1) G)                c = 0 .. 785, uint64 arithmetic mod 2^64
    U(b)   = b 2^-23 - 1                         b: 24 bits of a hash -> [-1, 1), exact
    ux, uy = U(h_j,p bits 40..63), U(h_j,p bits 16..39)     for pixel p = 28 y + x

    dx = alpha G_sigma * ux,   dy = alpha G_sigma * uy      (separable Gaussian, zeros
                                                           outside the 28x28 frame)
    a = rotate U(h_j,784 hi),  s = 1 + scale U(h_j,784 lo),  e = shear U(h_j,785 hi)
    M = s [[cos a, -sin a], [sin a, cos a]] [[1, e], [0, 1]]

    X = 13.5 + M00 (x - 13.5) + M01 (y - 13.5) + dx[y, x] - tx
    Y = 13.5 + M10 (x - 13.5) + M11 (y - 13.5) + dy[y, x] - ty

and output pixel (y, x) is the image sampled bilinearly at (Y, X), zero
outside the frame. (ty, tx) is the sample's --shift, if any: with no
distortion the map is exactly the integer shift of numpy_ref.shift_images.
G_sigma has taps g_k ~ exp(-k^2 / 2 sigma^2) for |k| <= ceil(3 sigma),
normalised to sum 1.
"""

import math
from typing import NamedTuple

import numpy as np

SIDE = 28
CENTRE = (SIDE - 1) / 2  # 13.5: the affine map turns and scales about the frame's centre
N_HASHES = SIDE * SIDE + 2  # one per pixel (ux and uy), two for the affine map
GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment, 2^64 / golden ratio
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
LOW24 = np.uint64(0xFFFFFF)
STEP = 2.0**-23  # U(b) = b STEP - 1: a 24-bit b gives [-1, 1) in steps of 2^-23
MAX_RADIUS = SIDE - 1  # wider taps reach no pixel of the frame (zeros outside)

# The allowed values of each setting, and how messages say them (the command line's
# types check the same ranges). Comparisons are false for NaN, so NaN is refused too.
MAX_ALPHA = 1000.0
MAX_SIGMA = 9.0  # ceil(3 sigma) = 27 = MAX_RADIUS
RANGES = {
    "alpha": (lambda v: 0 <= v <= MAX_ALPHA, f"[0, {MAX_ALPHA:g}]"),
    "sigma": (lambda v: 0 < v <= MAX_SIGMA, f"(0, {MAX_SIGMA:g}]"),
    "rotate": (lambda v: 0 <= v <= 180, "[0, 180] (degrees)"),
    "scale": (lambda v: 0 <= v < 1, "[0, 1)"),
    "shear": (lambda v: 0 <= v <= 1, "[0, 1]"),
}


class Distortion(NamedTuple):
    """What to distort and how much: an epoch's key and the ranges (all off by default)."""

    key: int  # the epoch's 64-bit key, in [0, 2^64)
    alpha: float = 0.0  # elastic strength: pixels of displacement per unit of smoothed noise
    sigma: float = 4.0  # standard deviation of the Gaussian smoothing, pixels
    rotate: float = 0.0  # largest rotation, degrees
    scale: float = 0.0  # largest relative change of size (0.1: 0.9x .. 1.1x)
    shear: float = 0.0  # largest horizontal shear (x moves by shear * y)


def check(d):
    """d, validated: a Distortion with a 64-bit key and every setting in RANGES."""
    if not isinstance(d, Distortion):
        raise TypeError(f"distort must be a fastnn.augment.Distortion, got {type(d).__name__}")
    if not (isinstance(d.key, (int, np.integer)) and 0 <= int(d.key) < 2**64):
        raise ValueError(f"distortion key must be an integer in [0, 2^64), got {d.key!r}")
    for name, (ok, allowed) in RANGES.items():
        if not ok(getattr(d, name)):
            raise ValueError(f"distortion {name} must be in {allowed}, got {getattr(d, name)}")
    return d


def radius(sigma):
    """Half-width of the Gaussian taps: ceil(3 sigma), at most MAX_RADIUS."""
    return min(math.ceil(3 * sigma), MAX_RADIUS)


def gaussian_taps(sigma):
    """(2R + 1,) float64 taps g_k ~ exp(-k^2 / 2 sigma^2), k = -R..R, summing to 1.

    Both backends use these very numbers (cast to the params' dtype)."""
    k = np.arange(-radius(sigma), radius(sigma) + 1, dtype=np.float64)
    g = np.exp(-(k * k) / (2 * sigma * sigma))
    return g / g.sum()


def mix(z):
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a bijection whose
    every output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def hashes(key, samples):
    """samples (m,) sample indices j -> (m, N_HASHES) uint64 h[j, c]."""
    samples = np.asarray(samples, np.int64).astype(np.uint64)
    k = mix(np.uint64(key) + (samples + np.uint64(1)) * GOLDEN)  # (m,) the samples' keys
    c = np.arange(1, N_HASHES + 1, dtype=np.uint64)
    return mix(k[:, None] + c[None, :] * GOLDEN)


def uniform(bits, dtype):
    """24-bit integers (uint64 array) -> U(b) = b 2^-23 - 1 in [-1, 1) of dtype, exactly."""
    return bits.astype(dtype) * dtype(STEP) - dtype(1)


def hi24(h):
    return h >> np.uint64(40)


def lo24(h):
    return (h >> np.uint64(16)) & LOW24


def smooth(U, taps):
    """U (m, 28, 28) -> G * U along x, then along y; zeros outside the frame."""
    R = len(taps) // 2
    for axis in (2, 1):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[axis] = (R, R)
        P = np.pad(U, pad)
        # out[.., i, ..] = sum_k taps[k] P[.., i + k, ..]: the taps slide along the axis
        U = sum(taps[k] * np.take(P, np.arange(k, k + SIDE), axis=axis) for k in range(2 * R + 1))
    return U


def affine_maps(h784, h785, d, dtype):
    """Each sample's M (m, 2, 2): rotation by a, scaling by s, shear e; computed in float64
    (one cos and sin per sample), then cast to dtype."""
    a = math.radians(d.rotate) * uniform(hi24(h784), np.float64)
    s = 1 + d.scale * uniform(lo24(h784), np.float64)
    e = d.shear * uniform(hi24(h785), np.float64)
    cos, sin = np.cos(a), np.sin(a)
    # s R(a) [[1, e], [0, 1]] = s [[cos, cos e - sin], [sin, sin e + cos]]
    M = s[:, None, None] * np.stack([np.stack([cos, cos * e - sin], -1),
                                     np.stack([sin, sin * e + cos], -1)], -2)
    return M.astype(dtype)


def bilinear(X, sy, sx):
    """X (m, 28, 28) sampled at the positions (sy, sx) (m, 28, 28) with bilinear
    interpolation, zeros outside the frame."""
    dt = X.dtype.type
    # anything at or beyond -1 and 28 reads only zeros: clipping there changes nothing,
    # and keeps the floor's conversion to int small
    sy, sx = np.clip(sy, dt(-2), dt(SIDE + 1)), np.clip(sx, dt(-2), dt(SIDE + 1))
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0  # exact: the fractional parts
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    m = np.arange(len(X))[:, None, None]

    def pixel(y, x):  # X[m, y, x], zero outside the frame
        inside = (y >= 0) & (y < SIDE) & (x >= 0) & (x < SIDE)
        return np.where(inside, X[m, np.clip(y, 0, SIDE - 1), np.clip(x, 0, SIDE - 1)], dt(0))

    one = dt(1)
    return ((one - fy) * ((one - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1))
            + fy * ((one - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)))


def distort(X, samples, d, shifts=None):
    """X (m, 784) floats in [0, 1], the images of training samples ``samples`` (m,) ->
    (m, 784) distorted as the module docstring says, same dtype. shifts (m, 2) int
    (dy, dx), if given, translate the images in the same resampling."""
    check(d)
    dt = X.dtype.type
    m = len(X)
    h = hashes(d.key, samples)
    taps = gaussian_taps(d.sigma).astype(dt)
    ux = uniform(hi24(h[:, :-2]), dt).reshape(m, SIDE, SIDE)
    uy = uniform(lo24(h[:, :-2]), dt).reshape(m, SIDE, SIDE)
    dx, dy = dt(d.alpha) * smooth(ux, taps), dt(d.alpha) * smooth(uy, taps)
    M = affine_maps(h[:, -2], h[:, -1], d, dt)
    t = (np.zeros((m, 2), dt) if shifts is None else np.asarray(shifts).astype(dt))
    c = dt(CENTRE)
    r = np.arange(SIDE, dtype=dt) - c
    y, x = r[None, :, None], r[None, None, :]  # (y - 13.5) down the rows, (x - 13.5) across

    def entry(i, j):
        return M[:, i, j][:, None, None]

    sx = c + (entry(0, 0) * x + entry(0, 1) * y) + dx - t[:, 1, None, None]
    sy = c + (entry(1, 0) * x + entry(1, 1) * y) + dy - t[:, 0, None, None]
    return bilinear(X.reshape(m, SIDE, SIDE), sy, sx).reshape(m, SIDE * SIDE)
