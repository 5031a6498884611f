"""How close a backend must be to the reference: one table for tests and --compare.

A value ``a`` agrees with the reference ``r`` when, elementwise,

    |a - r| <= atol + rtol * |r|,   with atol = rtol * max|r|

(atol scales with the array's own magnitude, so entries that cancel to
near zero are judged against the size of the array, not against themselves).

Why these numbers: the backends compute the same sums in a different order
(BLAS blocks vs per-sample loops, FMA contraction), so they differ by a few
roundings per reduction. A 784-term float64 dot product carries relative
error up to ~784 * 1.1e-16 ~ 1e-13 in the worst case; float32's unit
roundoff is 6e-8, so ~1e-5 leaves room for a few hundred terms' worth.
Training trajectories compound those differences over every step, so they
get their own, looser bound.

Probabilities and the loss are functions of the logits Z, whose rounding
error grows with |Z| (an ulp of a float32 logit of 150 is 1.5e-5): for them
rtol is multiplied by ``logit_scale(Z) = max(1, max|Z|)``.
"""

import numpy as np

from fastnn.augment import radius

KERNEL_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
# Parameters after a few hundred SGD steps through identical batches.
TRAJECTORY_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


def rtol_for(dtype, trajectory=False, scale=1.0):
    table = TRAJECTORY_RTOL if trajectory else KERNEL_RTOL
    return table[np.dtype(dtype)] * scale


def logit_scale(Z):
    """max(1, max|Z|): the factor for tolerances of softmax outputs and the loss."""
    return max(1.0, float(np.max(np.abs(Z)))) if np.size(Z) else 1.0


def worst_ratio(a, r, rtol):
    """max over elements of |a - r| / (atol + rtol |r|); <= 1 means agreement."""
    a = np.asarray(a, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {r.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(r))):
        return np.inf
    if a.size == 0:
        return 0.0
    scale = np.max(np.abs(r))
    bound = rtol * scale + rtol * np.abs(r)
    diff = np.abs(a - r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / bound)
    return float(np.max(ratio))


def differences(a, r):
    """(max absolute difference, max difference relative to max|r|)."""
    a = np.asarray(a, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    diff = float(np.max(np.abs(a - r))) if a.size else 0.0
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    return diff, (diff / scale if scale > 0 else diff)


def assert_agree(a, r, dtype, what="", trajectory=False, scale=1.0):
    rtol = rtol_for(dtype, trajectory, scale)
    ratio = worst_ratio(a, r, rtol)
    if not ratio <= 1.0:
        abs_diff, rel_diff = differences(a, r)
        raise AssertionError(
            f"{what}: backend disagrees with reference: max |a - r| = {abs_diff:.3g} "
            f"({rel_diff:.3g} of max|r|), worst element at {ratio:.3g}x the tolerance "
            f"(rtol {rtol:g}, {np.dtype(dtype).name})"
        )


def distortion_atol(dtype, alpha, sigma):
    """Largest |a - r| allowed between two backends' distorted images (fastnn.augment),
    whose pixels are intensities in [0, 1].

    Both draw bit-identical noise and use identical taps, so they differ only by
    rounding (unit roundoff u of dtype), bounded to first order per backend:
    the field, two passes of 2R + 1 taps (summing to 1) over noise in [-1, 1),
    errs by <= 2 (2R + 2) u, times alpha; the affine part (entries within a few
    u, applied to offsets up to 27 px) and the ~6 roundings of the position sum
    (magnitudes up to 30 + alpha + a 28-px shift) add <= (alpha + 480) u more.
    The bilinear sample is continuous and 1-Lipschitz in each coordinate for
    intensities in [0, 1], so a position error e moves it by <= 2 e, plus ~9
    roundings of its own. Two backends: twice that. For alpha 34, sigma 4 this
    is 5.9e-4 in float32 and 1.1e-12 in float64; differences seen are ~100x
    smaller (4e-6 and 7e-15), while any wrong tap, hash bit or coordinate
    moves pixels by 1e-2 or more.
    """
    u = float(np.finfo(dtype).eps) / 2
    e_pos = (alpha * (4 * radius(sigma) + 11) + 480) * u
    return 2 * (2 * e_pos + 9 * u)
