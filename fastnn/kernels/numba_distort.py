"""Elastic and affine distortion of one training image, computed as its batch is gathered.

The Numba twin of fastnn/augment.py (its docstring has the equations), one
sample at a time; numba_shared.gather_row calls ``distort_row`` when the
epoch's Batches carry a distortion (the last five fields of Batches are
``Distort``'s). Per sample:

1. 784 hashes (SplitMix64's mix of a counter), each giving both noise values
   of a pixel: a loop of 64-bit integer arithmetic that vectorises;
2. the two noise fields smoothed by the separable Gaussian: four passes down
   the columns of a field stored with R rows of zeros above and below it,
   each a few sweeps of four taps over the output rows they reach, one
   contiguous loop each with no edge cases (vectorised). The pass along the
   rows is a pass down the columns of the transposed field: no pass has a
   28-wide inner loop;
3. the source position of every output pixel and its top-left neighbour
   (vectorised), then one bilinear sample per pixel. The weights are tent
   functions, max(0, 1 - |X - column|), of a neighbour pair clamped inside
   the frame: a neighbour outside it gets weight 0, so no read needs a bounds
   check or a border of zeros.

Nothing is allocated: every buffer is a piece of the calling thread's row of
``Distort.scratch`` (``scratch_layout``), whose borders of zeros are never
written after the row is allocated.
"""

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from fastnn import augment, config
from fastnn.augment import CENTRE, GOLDEN, LOW24, MIX1, MIX2, SIDE, STEP
from fastnn.kernels.numba_intrinsics import prefetch

N_PIXELS = SIDE * SIDE
# Pixel p' = 28 x + y of a transposed field (the order the smoothing leaves it in):
# its x - 13.5 and y - 13.5
_T = np.arange(N_PIXELS)
XC_T, YC_T = _T // SIDE - CENTRE, _T % SIDE - CENTRE


class Distort(NamedTuple):
    """An epoch's distortion as the kernels see it (made from an augment.Distortion);
    numba_shared.Batches carries these fields, flat, as its last five."""

    key: np.uint64  # the epoch's key
    taps: np.ndarray  # (2R + 1,) Gaussian taps of the params' dtype; (0,) = no distortion
    alpha: float  # of the params' dtype
    ranges: np.ndarray  # (3,) float64: largest rotation (radians), scale change, shear
    scratch: np.ndarray  # (T, scratch_layout(R)[-1]) params' dtype, zeros: a row per thread


@njit(**config.JIT)
def scratch_layout(R):
    # offsets of the pieces of a scratch row, and its length: two noise fields with R
    # zero rows above and below (28 + 2R rows of 28 each), the first pass's output, the
    # two fields transposed, and the image (784 each)
    padded = SIDE * (SIDE + 2 * R)
    a, b = 0, padded
    tmp = 2 * padded
    fxt, fyt = tmp + N_PIXELS, tmp + 2 * N_PIXELS
    img = tmp + 3 * N_PIXELS
    return a, b, tmp, fxt, fyt, img, img + N_PIXELS


def kernel_args(d, dtype):
    """augment.Distortion d (or None: off) -> the kernels' Distort for params of dtype."""
    dt = np.dtype(dtype).type
    if d is None:
        return Distort(np.uint64(0), np.zeros(0, dt), dt(0), np.zeros(3), np.zeros((0, 0), dt))
    augment.check(d)
    taps = augment.gaussian_taps(d.sigma).astype(dt)
    # distort_row picks its scratch row by numba.get_thread_id(), which is below
    # get_num_threads() <= max_threads(). Called here from Python, it also loads the
    # threading layer that defines it, which cached code otherwise finds only once a
    # parallel kernel has run.
    numba.get_thread_id()
    size = scratch_layout(len(taps) // 2)[-1]
    return Distort(np.uint64(d.key), taps, dt(d.alpha),
                   np.array([math.radians(d.rotate), d.scale, d.shear]),
                   np.zeros((config.max_threads(), size), dt))


@njit(**config.JIT)
def mix(z):
    # z: uint64 -> uint64, SplitMix64's finaliser (augment.mix), wrapping arithmetic
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(**config.JIT)
def _uniform(bits, dt):
    # a 24-bit integer (uint64) -> U = bits 2^-23 - 1 in [-1, 1) of type dt, exactly;
    # through int32, whose conversion to float vectorises (uint64's does not on AVX2)
    return dt(np.int32(bits)) * dt(STEP) - dt(1)


@njit(**config.JIT)
def _noise(k, ux, uy):
    # k: uint64 the sample's key -> ux, uy: (784,) its uniform noise, pixel p from hash p
    dt = ux.dtype.type
    for p in range(N_PIXELS):
        h = mix(k + np.uint64(p + 1) * GOLDEN)
        ux[p] = _uniform(h >> np.uint64(40), dt)
        uy[p] = _uniform((h >> np.uint64(16)) & LOW24, dt)


@njit(**config.JIT)
def _rows_from(padded, r):
    # the 784 values of a padded field from its row r on (r = R: the field itself)
    return padded[SIDE * r : SIDE * r + N_PIXELS]


@njit(**config.JIT)
def _smooth_down(padded, taps, dst):
    # padded: (28 (28 + 2R),) a 28x28 field with R rows of zeros above and below;
    # taps: (2R + 1,) symmetric -> dst: (784,), dst[y, x] = sum_k taps[k] field[y + k - R, x]
    # Each sweep is one loop (views indexed from 0: no negative-index wraparound, so it
    # vectorises) that adds four taps' terms, over the outputs the first of them reaches:
    # tap +d (row y + d) only rows y <= 27 - d, tap -d only y >= d. The zero rows are
    # there for the other three taps of a sweep; skipping what is zero for all four
    # saves about a fifth of the loads at sigma 4, more at larger sigma.
    R = taps.shape[0] // 2
    mid = _rows_from(padded, R)
    g = taps[R]
    for i in range(N_PIXELS):
        dst[i] = g * mid[i]
    d = 1
    while d <= R:
        n = SIDE * (SIDE - d)  # the outputs that taps +-d reach
        lo = N_PIXELS - n
        up = dst[lo:]  # rows d.., which tap -d reaches
        if d + 3 <= R:
            g1, g2, g3, g4 = taps[R + d], taps[R + d + 1], taps[R + d + 2], taps[R + d + 3]
            b1, b2 = _rows_from(padded, R + d), _rows_from(padded, R + d + 1)
            b3, b4 = _rows_from(padded, R + d + 2), _rows_from(padded, R + d + 3)
            for i in range(n):
                dst[i] += (g1 * b1[i] + g2 * b2[i]) + (g3 * b3[i] + g4 * b4[i])
            a1, a2 = _rows_from(padded, R - d)[lo:], _rows_from(padded, R - d - 1)[lo:]
            a3, a4 = _rows_from(padded, R - d - 2)[lo:], _rows_from(padded, R - d - 3)[lo:]
            for i in range(n):
                up[i] += (g1 * a1[i] + g2 * a2[i]) + (g3 * a3[i] + g4 * a4[i])
            d += 4
        else:  # the last R mod 4 taps, one a sweep
            g1, b1, a1 = taps[R + d], _rows_from(padded, R + d), _rows_from(padded, R - d)[lo:]
            for i in range(n):
                dst[i] += g1 * b1[i]
            for i in range(n):
                up[i] += g1 * a1[i]
            d += 1


@njit(**config.JIT)
def _transpose(src, dst):
    # src, dst: (784,) 28x28 row-major; dst[x, y] = src[y, x]
    for y in range(SIDE):
        for x in range(SIDE):
            dst[x * SIDE + y] = src[y * SIDE + x]


@njit(**config.JIT)
def _field_t(padded, R, taps, tmp, out):
    # padded: a field with R zero rows above and below (as _smooth_down) -> out: (784,)
    # the smoothed field transposed, out[x * 28 + y] = (G * field)[y, x]; tmp: (784,)
    # scratch; the field's rows in padded are overwritten
    _smooth_down(padded, taps, tmp)  # down the columns
    _transpose(tmp, padded[SIDE * R : SIDE * R + N_PIXELS])
    _smooth_down(padded, taps, out)  # down the columns of the transpose: along the rows


@njit(**config.JIT)
def _affine(k, ranges):
    # the sample's M = s R(a) [[1, e], [0, 1]] (augment.affine_maps), float64
    h0 = mix(k + np.uint64(N_PIXELS + 1) * GOLDEN)
    h1 = mix(k + np.uint64(N_PIXELS + 2) * GOLDEN)
    f8 = np.float64
    a = ranges[0] * _uniform(h0 >> np.uint64(40), f8)
    s = 1.0 + ranges[1] * _uniform((h0 >> np.uint64(16)) & LOW24, f8)
    e = ranges[2] * _uniform(h1 >> np.uint64(40), f8)
    cos, sin = np.cos(a), np.sin(a)
    return s * cos, s * (cos * e - sin), s * sin, s * (sin * e + cos)


@njit(**config.JIT)
def distort_row(batches, s, out):
    # batches: numba_shared.Batches with a distortion -> out: (784,) the image of order
    # position s (training sample j = order[s]), distorted and shifted, times scale
    dt = out.dtype.type
    j = batches.order[s]
    row = batches.images[j]  # (784,) uint8
    # The image is read last: its lines load while the fields are computed (the
    # fused epochs prefetch it a tile ahead too, but a lone gather does not)
    for i in range(0, N_PIXELS, 64):
        prefetch(row, i)
    prefetch(row, N_PIXELS - 1)
    R = batches.taps.shape[0] // 2
    a, b, t, ox, oy, im, end = scratch_layout(R)
    work = batches.scratch[numba.get_thread_id()]
    mid = SIDE * R  # where a padded field's own rows start
    ux, uy = work[a + mid : a + mid + N_PIXELS], work[b + mid : b + mid + N_PIXELS]
    tmp, fxt, fyt = work[t:ox], work[ox:oy], work[oy:im]
    img = work[im:end]
    k = mix(batches.key + np.uint64(j + 1) * GOLDEN)
    _noise(k, ux, uy)
    _field_t(work[a:b], R, batches.taps, tmp, fxt)  # fxt, fyt: the fields, transposed
    _field_t(work[b:t], R, batches.taps, tmp, fyt)
    scale = batches.scale
    for p in range(N_PIXELS):  # the image, scaled
        img[p] = dt(row[p]) * scale
    m00, m01, m10, m11 = _affine(k, batches.ranges)
    m00, m01, m10, m11 = dt(m00), dt(m01), dt(m10), dt(m11)
    alpha, centre = batches.alpha, dt(CENTRE)
    tx = ty = dt(0)
    if batches.shifts.shape[0] > 0:
        ty, tx = dt(batches.shifts[s, 0]), dt(batches.shifts[s, 1])
    # First pass (vectorised), pixel by pixel of the transposed fields: the source
    # position (X, Y), clipped to [-2, 29] (beyond -1 and 28 it reads only zeros: the
    # clip changes nothing and keeps the floor small); the top-left neighbour (bx, by),
    # floor clamped to [0, 26] so that all four neighbours are pixels, and the position
    # relative to it, fx = X - bx and fy = Y - by in [-2, 3], into fxt and fyt (read
    # before written); the neighbour's index (exact as a float) into tmp.
    zero, one, two, lo, hi, top = dt(0), dt(1), dt(2), dt(-2), dt(SIDE + 1), dt(SIDE - 2)
    for p in range(N_PIXELS):
        xc, yc = dt(XC_T[p]), dt(YC_T[p])
        X = centre + (m00 * xc + m01 * yc) + alpha * fxt[p] - tx
        Y = centre + (m10 * xc + m11 * yc) + alpha * fyt[p] - ty
        X, Y = min(max(X, lo), hi), min(max(Y, lo), hi)
        bx, by = min(max(np.floor(X), zero), top), min(max(np.floor(Y), zero), top)
        fxt[p], fyt[p] = X - bx, Y - by  # exact
        tmp[p] = by * dt(SIDE) + bx
    # Second pass, down the output's columns: the four neighbours, weighted by tents,
    # 1 - |f| and 1 - |f - 1| clipped at 0 (0 for a neighbour outside the frame, where
    # the floor was clamped), written so that inside the frame they are the reference's
    # 1 - f and f exactly. Scalar: the four neighbours' loads depend on the data (about
    # 1.5 us of the ~6 us an image costs at sigma 5; computing the weights here or in
    # the first pass measured the same, and so did gathering first and mixing after,
    # vectorised).
    for x in range(SIDE):
        for y in range(SIDE):
            p = x * SIDE + y
            fx, fy, q = fxt[p], fyt[p], int(tmp[p])
            wl, wr = max(zero, min(one - fx, one + fx)), max(zero, min(fx, two - fx))
            wt, wb = max(zero, min(one - fy, one + fy)), max(zero, min(fy, two - fy))
            out[y * SIDE + x] = (wt * (wl * img[q] + wr * img[q + 1])
                                 + wb * (wl * img[q + SIDE] + wr * img[q + SIDE + 1]))
