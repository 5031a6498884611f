"""Elastic and affine distortion of one training image, computed as its batch is gathered.

The Numba twin of fastnn/augment.py (its docstring has the equations), one
sample at a time; numba_shared.gather_row calls ``distort_row`` when the
epoch's Batches carry a distortion (the last five fields of Batches are
``Distort``'s). Per sample:

1. 784 hashes (SplitMix64's mix of a counter), each giving both noise values
   of a pixel (plus 112 for the unused slots of rows of 32): a loop of 64-bit
   integer arithmetic that vectorises. The noise is stored transposed;
2. the two noise fields smoothed by the separable Gaussian: four passes down
   the columns of a field stored between rows of zeros, each a few sweeps
   over the output rows their taps reach, one contiguous loop each with no
   edge cases (vectorised); a sweep loads four input rows and adds each to
   two output rows, 8 taps for 5 loads and 2 stores (``_smooth_down``). The
   first pass, down the columns of the transposed noise, smooths along x; the
   field is transposed back and the second smooths along y (the reference's
   order): no pass has a 28-wide inner loop. Fields are stored in rows of 32
   (ROW) values, the last 4 of no pixel: every row starts on a 64-byte line,
   and sweeps over whole rows so aligned ran ~15% faster than over rows of
   28, whose vector loads mostly straddle two lines;
3. the source position of every output pixel and its top-left neighbour
   (vectorised); the four neighbours' bytes, read as two pairs (the one
   scalar loop); their bilinear mix (vectorised). The weights are tent
   functions, max(0, 1 - |X - column|), of a neighbour pair clamped inside
   the frame: a neighbour outside it gets weight 0, so no read needs a bounds
   check or a border of zeros.

Nothing is allocated: every buffer is a piece of the calling thread's row of
``Distort.scratch`` (``scratch_layout``; rows and pieces start on 64-byte
lines), whose borders of zeros are never written after the row is allocated.

No fast-math here (config.JIT_EXACT): with it, the distorted pixels of a process
that compiled these functions differed from those of one that loaded them from
Numba's cache (9% of 2,000 digits' pixels, by up to 2.4e-6: fast-math lets LLVM
contract and reorder the arithmetic differently in each build), so a run's first,
cold-cache training differed from the same run repeated. Without it the bits do
not depend on the build (tested).
"""

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from fastnn import augment, config
from fastnn.augment import CENTRE, GOLDEN, LOW24, MIX1, MIX2, SIDE, STEP
from fastnn.kernels.numba_intrinsics import copy_pair, prefetch, transpose16
from fastnn.model import CACHE_LINE, aligned_zeros

N_PIXELS = SIDE * SIDE
ROW = 32  # values a field's row is stored in: its 28 pixels, then 4 of none
N_SLOTS = SIDE * ROW
PAD = 6  # zero rows above and below a noise field: as far as a sweep reads beyond it
OUT_SLOTS = (SIDE + 2) * ROW  # a smoothing's output: a junk row, the 28, a junk row
TMP_SLOTS = (SIDE + 5) * ROW  # the first pass's output, then 3 rows the transpose reads
LINE = CACHE_LINE  # bytes: where the scratch rows and their pieces start


class Distort(NamedTuple):
    """An epoch's distortion as the kernels see it (made from an augment.Distortion);
    numba_shared.Batches carries these fields, flat, as its last five."""

    key: np.uint64  # the epoch's key
    taps: np.ndarray  # (2R + 1,) Gaussian taps of the params' dtype; (0,) = no distortion
    alpha: float  # of the params' dtype
    ranges: np.ndarray  # (3,) float64: largest rotation (radians), scale change, shear
    scratch: np.ndarray  # (T, scratch_layout(R)[-1]) params' dtype, zeros: a row per thread


@njit(**config.JIT_EXACT)
def scratch_layout():
    # offsets of the pieces of a scratch row, and its length: two noise fields between
    # PAD zero rows (28 + 2 PAD rows of 32 each); the first pass's output (33 rows of
    # 32: _smooth_down's 30 and 3 of zeros for the transpose's last block to read);
    # the two smoothed fields (30 rows of 32). All multiples of 16 values: each piece
    # starts on a line if the row does.
    padded = ROW * (SIDE + 2 * PAD)
    a, b = 0, padded
    tmp = 2 * padded
    fx, fy = tmp + TMP_SLOTS, tmp + TMP_SLOTS + OUT_SLOTS
    return a, b, tmp, fx, fy, fy + OUT_SLOTS


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
    size = scratch_layout()[-1]
    return Distort(np.uint64(d.key), taps, dt(d.alpha),
                   np.array([math.radians(d.rotate), d.scale, d.shear]),
                   aligned_zeros((config.max_threads(), size), dt))


@njit(**config.JIT_EXACT)
def mix(z):
    # z: uint64 -> uint64, SplitMix64's finaliser (augment.mix), wrapping arithmetic
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(**config.JIT_EXACT)
def _uniform(bits, dt):
    # a 24-bit integer (uint64) -> U = bits 2^-23 - 1 in [-1, 1) of type dt, exactly;
    # through int32, whose conversion to float vectorises (uint64's does not on AVX2)
    return dt(np.int32(bits)) * dt(STEP) - dt(1)


@njit(**config.JIT_EXACT)
def _noise(k, ux, uy):
    # k: uint64 the sample's key -> ux, uy: (896,) its uniform noise, transposed in rows
    # of 32: pixel p = 28 y + x from hash p into slot 32 x + y (slots y > 27 get hashes
    # 785.. that no pixel uses, which smooth into slots never read: cheaper than a
    # branch). Along a row x the counter p + 1 = x + 1 + 28 y grows by 28 a slot: an
    # addition, not a multiply (0.33 against 0.43 us for a loop over slots computing p).
    dt = ux.dtype.type
    step = np.uint64(SIDE) * GOLDEN
    for x in range(SIDE):
        first = k + np.uint64(x + 1) * GOLDEN
        u, v = ux[x * ROW : (x + 1) * ROW], uy[x * ROW : (x + 1) * ROW]
        for y in range(ROW):
            h = mix(first + np.uint64(y) * step)
            u[y] = _uniform(h >> np.uint64(40), dt)
            v[y] = _uniform((h >> np.uint64(16)) & LOW24, dt)


@njit(**config.JIT_EXACT)
def _tap(taps, k):
    # taps: (2R + 1,) -> the tap at offset k, 0 beyond R
    R = taps.shape[0] // 2
    return taps[R + k] if abs(k) <= R else taps.dtype.type(0)


@njit(**config.JIT_EXACT)
def _smooth_down(padded, taps, dst):
    # padded: (32 (28 + 2 PAD),) a field of 28 rows of 32 between PAD rows of zeros;
    # taps: (2R + 1,) symmetric -> dst: (32 x 30,), its row y + 1 the output row y,
    # out[y, x] = sum_k taps[k] field[y + k - R, x] (dst rows 0 and 29: junk).
    # Each sweep is one loop over output rows y (views indexed from 0: no negative-index
    # wraparound, so it vectorises) that loads four input rows, two apart, and adds
    # each to row y with one tap and to row y + 1 with the next: 8 taps a sweep, 8
    # multiply-adds for 5 loads and 2 stores (sweeps adding four rows to one, 6 memory
    # operations for 4 multiply-adds, over rows of 28, took ~1.5x as long, transposes
    # included: 3.6-3.9 us against 2.5 for an image's two fields). Row y + 1's terms
    # are stored at i + 32 and loaded back as row y + 1 becomes row y, 32 values later:
    # a dependence LLVM sees, so it vectorises the loop with vectors up to 32 values
    # wide, which is all we need. Each sweep runs over the output rows its taps reach,
    # no further, so the zero rows above and below the field need only be as many as
    # one sweep reads beyond (6).
    for i in range(ROW):
        dst[i] = 0.0
        dst[(SIDE + 1) * ROW + i] = 0.0
    # taps 0..7, 8..15, ...: sweep d adds taps d, d + 2, d + 4, d + 6 to row y, taps
    # d - 1, d + 1, d + 3, d + 5 to row y + 1, from input rows y + d + 2j, for output
    # rows y in [-1, 27 - d]; the first sweep sets row y + 1 (row y was set before)
    d = 1
    while d - 1 <= taps.shape[0] // 2:
        g0, g2, g4, g6 = _tap(taps, d), _tap(taps, d + 2), _tap(taps, d + 4), _tap(taps, d + 6)
        h0, h2, h4, h6 = _tap(taps, d - 1), _tap(taps, d + 1), _tap(taps, d + 3), _tap(taps, d + 5)
        r = PAD - 1 + d  # input row y + d for y = -1
        v0, v2 = padded[ROW * r :], padded[ROW * (r + 2) :]
        v4, v6 = padded[ROW * (r + 4) :], padded[ROW * (r + 6) :]
        n = ROW * (SIDE + 1 - d)
        if d == 1:
            for i in range(n):
                a, b, c, e = v0[i], v2[i], v4[i], v6[i]
                dst[i] += (g0 * a + g2 * b) + (g4 * c + g6 * e)
                dst[i + ROW] = (h0 * a + h2 * b) + (h4 * c + h6 * e)
        else:
            for i in range(n):
                a, b, c, e = v0[i], v2[i], v4[i], v6[i]
                dst[i] += (g0 * a + g2 * b) + (g4 * c + g6 * e)
                dst[i + ROW] += (h0 * a + h2 * b) + (h4 * c + h6 * e)
        d += 8
    # taps -1..-8, -9..-16, ...: sweep d adds taps -d, -(d + 2), .. to row y and
    # -(d + 1), -(d + 3), .. to row y + 1, from input rows y - d - 2j, for y in [d, 27]
    d = 1
    while d <= taps.shape[0] // 2:
        g0, g2 = _tap(taps, -d), _tap(taps, -d - 2)
        g4, g6 = _tap(taps, -d - 4), _tap(taps, -d - 6)
        h0, h2 = _tap(taps, -d - 1), _tap(taps, -d - 3)
        h4, h6 = _tap(taps, -d - 5), _tap(taps, -d - 7)
        v0, v2 = padded[ROW * PAD :], padded[ROW * (PAD - 2) :]  # input rows 0, -2, ..
        v4, v6 = padded[ROW * (PAD - 4) :], padded[ROW * (PAD - 6) :]  # for y = d
        o = dst[ROW * (d + 1) :]
        for i in range(ROW * (SIDE - d)):
            a, b, c, e = v0[i], v2[i], v4[i], v6[i]
            o[i] += (g0 * a + g2 * b) + (g4 * c + g6 * e)
            o[i + ROW] += (h0 * a + h2 * b) + (h4 * c + h6 * e)
        d += 8


@njit(**config.JIT_EXACT)
def _transpose(src, dst):
    # src: (32 x 32,), dst: (896,) 28x28 in rows of 32; dst[x, y] = src[y, x] for x, y
    # < 28, as four 16x16 blocks in registers (src rows and columns 28-31 are read;
    # they land in dst's unused columns, or in no dst row at all)
    H = 16
    transpose16(src, 0, ROW, dst, 0, ROW, H)
    transpose16(src, H, ROW, dst, H * ROW, ROW, SIDE - H)
    transpose16(src, H * ROW, ROW, dst, H, ROW, H)
    transpose16(src, H * ROW + H, ROW, dst, H * ROW + H, ROW, SIDE - H)


@njit(**config.JIT_EXACT)
def _field(padded, taps, tmp, out):
    # padded: a field stored transposed, between zero rows (as _smooth_down) -> out:
    # (32 x 30,) the smoothed field from its row 1 on, out[32 (y + 1) + x] = (G * field)
    # [y, x]; tmp: (32 x 33,) scratch; the field's rows in padded are overwritten. Along
    # x, then along y, as the reference.
    _smooth_down(padded, taps, tmp)  # down the transposed field's columns: along x
    _transpose(tmp[ROW:], padded[ROW * PAD : ROW * PAD + N_SLOTS])
    _smooth_down(padded, taps, out)  # down the columns: along y


@njit(**config.JIT_EXACT)
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


@njit(**config.JIT_EXACT)
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
    a, b, t, ox, oy, end = scratch_layout()
    work = batches.scratch[numba.get_thread_id()]
    mid = ROW * PAD  # where a padded field's own rows start
    ux, uy = work[a + mid : a + mid + N_SLOTS], work[b + mid : b + mid + N_SLOTS]
    tmp = work[t:ox]
    k = mix(batches.key + np.uint64(j + 1) * GOLDEN)
    _noise(k, ux, uy)
    _field(work[a:b], batches.taps, tmp, work[ox:oy])
    _field(work[b:t], batches.taps, tmp, work[oy:end])
    # the fields (from the outputs' row 1); idx: the neighbours' indices, in tmp
    fx_, fy_ = work[ox + ROW : ox + ROW + N_SLOTS], work[oy + ROW : oy + ROW + N_SLOTS]
    idx = tmp.view(np.int32)[:N_SLOTS]
    m00, m01, m10, m11 = _affine(k, batches.ranges)
    m00, m01, m10, m11 = dt(m00), dt(m01), dt(m10), dt(m11)
    alpha, centre = batches.alpha, dt(CENTRE)
    tx = ty = dt(0)
    if batches.shifts.shape[0] > 0:
        ty, tx = dt(batches.shifts[s, 0]), dt(batches.shifts[s, 1])
    # First pass (vectorised), slot by slot of the fields: the source position (X, Y),
    # clipped to [-2, 29] (beyond -1 and 28 it reads only zeros: the clip changes
    # nothing and keeps the floor small); the top-left neighbour (bx, by), floor
    # clamped to [0, 26] so that all four neighbours are pixels, and the position
    # relative to it, fx = X - bx and fy = Y - by in [-2, 3], into fx_ and fy_ (read
    # before written); the neighbour's index into idx.
    zero, one, two, lo, hi, top = dt(0), dt(1), dt(2), dt(-2), dt(SIDE + 1), dt(SIDE - 2)
    for y in range(SIDE):
        yc = dt(y) - centre
        for x in range(ROW):  # x > 27: no pixel, a position computed and never read
            q, xc = y * ROW + x, dt(x) - centre
            X = centre + (m00 * xc + m01 * yc) + alpha * fx_[q] - tx
            Y = centre + (m10 * xc + m11 * yc) + alpha * fy_[q] - ty
            X, Y = min(max(X, lo), hi), min(max(Y, lo), hi)
            bx, by = min(max(np.floor(X), zero), top), min(max(np.floor(Y), zero), top)
            fx_[q], fy_[q] = X - bx, Y - by  # exact
            idx[q] = np.int32(by * dt(SIDE) + bx)
    # Second pass (scalar: the reads depend on the data): each pixel's neighbours as
    # two pairs of bytes of the image, top left and right into upper[2 q : 2 q + 2],
    # bottom into lower[..], over the first noise field's own rows (free now; not its
    # rows of zeros around). A pair is one load and one store (copy_pair): with the
    # next pass, 2x faster than the four scalar reads, weighted and summed, that
    # this loop used to be.
    upper = ux.view(np.uint8)[: 2 * N_SLOTS]
    lower = ux.view(np.uint8)[2 * N_SLOTS : 4 * N_SLOTS]
    for y in range(SIDE):
        for x in range(SIDE):
            q = y * ROW + x
            c = idx[q]
            copy_pair(upper, 2 * q, row, c)
            copy_pair(lower, 2 * q, row, c + SIDE)
    # Third pass (vectorised): each pair read as one 16-bit number (left + 256 right:
    # x86-64 is little-endian), the neighbours weighted by tents, 1 - |f| and
    # 1 - |f - 1| clipped at 0 (0 for a neighbour outside the frame, where the floor
    # was clamped), written so that inside the frame they are the reference's 1 - f
    # and f exactly. Rows of 32 slots: row y writes 4 values too many, which row y + 1
    # then overwrites (the last row writes 28); 32 iterations vectorise with no
    # remainder, and the unused slots hold finite values (fractions in [-2, 3], any
    # pair of bytes).
    pairs_up, pairs_down = upper.view(np.uint16), lower.view(np.uint16)
    scale, byte = batches.scale, np.int32(255)
    for y in range(SIDE):
        o = out[y * SIDE :]
        for x in range(ROW if y < SIDE - 1 else SIDE):
            q = y * ROW + x
            fx, fy = fx_[q], fy_[q]
            u, d = np.int32(pairs_up[q]), np.int32(pairs_down[q])
            wl, wr = max(zero, min(one - fx, one + fx)), max(zero, min(fx, two - fx))
            wt, wb = max(zero, min(one - fy, one + fy)), max(zero, min(fy, two - fy))
            o[x] = scale * (wt * (wl * dt(u & byte) + wr * dt(u >> 8))
                            + wb * (wl * dt(d & byte) + wr * dt(d >> 8)))
