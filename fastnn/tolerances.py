"""How close a backend must be to the reference: one table for tests and --compare.

A value ``a`` agrees with the reference ``r`` when, elementwise,

    |a - r| <= atol + rtol * |r|,   with atol = rtol * max|r|

(atol scales with the array's own magnitude, so entries that cancel to
near zero are judged against the size of the array, not against themselves).
Where a caller knows, for each element, the sum of the magnitudes of the
terms it adds up (``magnitude``), rtol times that is added to the bound: a
sum's rounding is relative to its terms, and when a whole array's terms
cancel (the gradient of a batch whose every sample is confidently right) the
array's own size says nothing about it. ``gradient_magnitudes`` gives them
for a batch's gradients, which the tests and ``check_backend`` judge so.

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

This module is the one agreement checker: the tests (``assert_agree``),
``--compare`` (``row``), the benchmark report and asv (``check_backend``,
which checks a backend or a peer against the reference before it is timed)
all judge agreement here, by the same rule. The rule has two exceptions,
both element-wise: a batch's gradients are compared on the samples whose
hidden pre-activations are away from the ReLU kink (``away_from_kinks``),
and a predicted label may differ at a near-tie of the two largest logits.
"""

import numpy as np

from fastnn.augment import radius

KERNEL_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
# A batch's loss is a mean of log(sum_c exp(z_c - max z)) - (z_y - max z): the log of a
# sum of at least 1, whose rounding is absolute, about an ulp of 1, however small the
# loss. One confidently right sample (float64, max|Z| 39): a loss of 8.61e-12, the
# reference and numba 0.8e-16 and 1.4e-16 away from log1p's, on either side. So the
# loss is judged with a ``magnitude`` of 1 (its terms' size) besides its own.
LOSS_MAGNITUDE = 1.0
# Parameters after a few hundred SGD steps through identical batches.
TRAJECTORY_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


def rtol_for(dtype, trajectory=False, scale=1.0):
    table = TRAJECTORY_RTOL if trajectory else KERNEL_RTOL
    return table[np.dtype(dtype)] * scale


def logit_scale(Z):
    """max(1, max|Z|): the factor for tolerances of softmax outputs and the loss."""
    return max(1.0, float(np.max(np.abs(Z)))) if np.size(Z) else 1.0


def worst_ratio(a, r, rtol, magnitude=None):
    """max over elements of |a - r| / (atol + rtol |r| [+ rtol magnitude]); <= 1 means
    agreement. magnitude: like r, each element's sum of |terms| (or None)."""
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
    if magnitude is not None:
        bound = bound + rtol * np.asarray(magnitude, dtype=np.float64)
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


def assert_agree(a, r, dtype, what="", trajectory=False, scale=1.0, magnitude=None):
    rtol = rtol_for(dtype, trajectory, scale)
    ratio = worst_ratio(a, r, rtol, magnitude)
    if not ratio <= 1.0:
        abs_diff, rel_diff = differences(a, r)
        raise AssertionError(
            f"{what}: backend disagrees with reference: max |a - r| = {abs_diff:.3g} "
            f"({rel_diff:.3g} of max|r|), worst element at {ratio:.3g}x the tolerance "
            f"(rtol {rtol:g}, {np.dtype(dtype).name})"
        )


def row(quantity, a, r, dtype, trajectory=False, scale=1.0, magnitude=None):
    """One compared quantity: {quantity, max_abs, max_rel, rtol, ok}."""
    rtol = rtol_for(dtype, trajectory, scale)
    max_abs, max_rel = differences(a, r)
    return dict(quantity=quantity, max_abs=max_abs, max_rel=max_rel, rtol=rtol,
                ok=bool(worst_ratio(a, r, rtol, magnitude) <= 1.0))


def gradient_magnitudes(params, X, y):
    """For each gradient element, the sum of the magnitudes of the terms that make it,
    in float64: backpropagation with every factor replaced by its absolute value and
    the output deltas P - Y by (P + Y) / m. Rounding errors of a gradient are relative
    to these, not to the gradient itself: where the terms cancel (a confidently right
    sample's P_y - 1 is ~1e-9, from a P_y rounded to float32's 6e-8 near 1), two
    correct float32 computations differ by far more than rtol times their result.
    Returns [(|dW|, |db|), ...] like params.
    """
    params = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in params]
    acts = [np.asarray(X, np.float64)]
    for i, (W, b) in enumerate(params):
        z = acts[-1] @ W.T + b
        acts.append(z if i == len(params) - 1 else np.maximum(z, 0.0))
    z = acts[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(z)), np.asarray(y)] += 1.0
    d = p / len(z)
    out = []
    for i in range(len(params) - 1, -1, -1):
        a = acts[i]
        out.append((d.T @ np.abs(a), d.sum(axis=0)))
        if i > 0:
            d = (d @ np.abs(params[i][0])) * (a > 0)
    return out[::-1]


# A float32 hidden pre-activation this close to zero may land on either side of
# the ReLU in two correct float32 computations (a 784-term dot product rounds by
# ~1e-7 here): the two backward passes then differ by a whole sample's share of
# that unit's gradient row, and both are right (seen: |Z| = 5.3e-7 at 784-59-10,
# batch 187, dW1 off by 500x the tolerance). float64 rounds 1e9 times finer.
KINK_MARGIN = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 0.0}


def away_from_kinks(params, X):
    """(m,) bool: the samples of X whose every hidden pre-activation, computed in
    float64, is farther than KINK_MARGIN from 0."""
    A = np.asarray(X, np.float64)
    margin = np.full(len(A), np.inf)
    for W, b in params[:-1]:
        Z = A @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        margin = np.minimum(margin, np.abs(Z).min(axis=1, initial=np.inf))
        A = np.maximum(Z, 0.0)
    return margin > KINK_MARGIN[np.dtype(params[0][0].dtype)]


def _flat(pairs):
    return [a for pair in pairs for a in pair]


def _names(params):
    return [f"{w}{i + 1}" for i in range(len(params)) for w in ("W", "b")]


def batch_rows(backend, params, X, y, keep_kinks=False):
    """Rows for one batch X, y (float of the params' dtype, int64), the samples near a
    ReLU kink left out (``keep_kinks``: every sample judged, for batches known to lie
    away from kinks or exactly on them, as the tests' are): the probabilities and the
    loss (rtol scaled by the logits' size, the loss with LOSS_MAGNITUDE) and every
    gradient (against its terms' magnitudes), the backend's against the reference's."""
    from fastnn.kernels import REFERENCE, get_kernel

    ref = get_kernel(REFERENCE)
    dtype = params[0][0].dtype
    if not keep_kinks:
        keep = away_from_kinks(params, X)
        X, y = X[keep], y[keep]
    scale = logit_scale(ref.logits(params, X))
    rows = [row("probabilities", backend.forward(params, X), ref.forward(params, X), dtype,
                scale=scale)]
    (loss, grads), (loss_ref, grads_ref) = (b.loss_and_grads(params, X, y)
                                            for b in (backend, ref))
    rows.append(row("loss", loss, loss_ref, dtype, scale=scale, magnitude=LOSS_MAGNITUDE))
    return rows + [row(f"d{n}", g, r, dtype, magnitude=size)
                   for n, g, r, size in zip(_names(params), _flat(grads), _flat(grads_ref),
                                            _flat(gradient_magnitudes(params, X, y)))]


def check_backend(backend, params, X, y, images, labels, order, batch_size, lr,
                  test_images):
    """Rows for everything a backend (or a peer) must agree with the reference on.

    The batch X, y: ``batch_rows``. Training: ``train_epoch`` over ``order``
    from copies of params, plain SGD at ``lr``: the mean loss and every
    parameter after (trajectory rtol). Inference: ``predict`` on test_images,
    whose labels must equal the reference's except at near-ties (max_abs
    holds how many differ).
    """
    from fastnn.kernels import REFERENCE, get_kernel
    from fastnn.model import copy_params

    ref = get_kernel(REFERENCE)
    dtype = params[0][0].dtype
    rows = batch_rows(backend, params, X, y)
    trained = []
    for b in (backend, ref):
        p = copy_params(params)
        trained.append((b.train_epoch(p, images, labels, order, batch_size, lr)[0], p))
    (loss, p), (loss_ref, p_ref) = trained
    steps = -(-len(order) // batch_size)
    rows.append(row(f"mean loss over {steps} steps", loss, loss_ref, dtype, trajectory=True))
    rows += params_rows(p, p_ref, steps, dtype)
    rows.append(_predict_row(backend.predict(params, test_images),
                             ref.predict(params, test_images), params, test_images))
    return rows


def params_rows(params, ref_params, steps, dtype):
    """Rows for every parameter after ``steps`` training steps through the same
    batches, against the reference's (trajectory rtol)."""
    return [row(f"{n} after {steps} steps", a, r, dtype, trajectory=True)
            for n, a, r in zip(_names(params), _flat(params), _flat(ref_params))]


def _predict_row(labels, ref_labels, params, images):
    """Predicted labels against the reference's: a label may differ only where the
    reference's two largest logits are within 100 rtol x max(1, |logits|) (a near-tie,
    which the summation order may break either way)."""
    from fastnn.kernels import REFERENCE, get_kernel
    from fastnn.kernels.numpy_ref import to_float

    dtype = params[0][0].dtype
    differ = np.flatnonzero(np.asarray(labels) != np.asarray(ref_labels))
    ok = True
    if differ.size:
        Z = get_kernel(REFERENCE).logits(params, to_float(images[differ], dtype))
        top2 = np.sort(Z.astype(np.float64), axis=1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        ok = bool(np.all(gap <= 100 * rtol_for(dtype) * np.maximum(1.0, np.abs(Z).max(axis=1))))
    return dict(quantity="predicted labels", max_abs=float(differ.size),
                max_rel=differ.size / max(len(images), 1), rtol=0.0, ok=ok)


def images_row(images, ref_images, dtype, distort):
    """Augmented images against the reference's: {quantity, max_abs, max_rel, atol, ok},
    an absolute bound for intensities in [0, 1] (distortion_atol for a distortion, an
    augment.Distortion; 0 for integer shifts alone, which are exact)."""
    atol = distortion_atol(dtype, distort.alpha, distort.sigma) if distort is not None else 0.0
    max_abs, max_rel = differences(images, ref_images)
    return dict(quantity="augmented images", max_abs=max_abs, max_rel=max_rel, atol=atol,
                ok=bool(max_abs <= atol))


def bound(r):
    """A row's bound as text: its atol (images_row) or its rtol."""
    return f"atol {r['atol']:g}" if "atol" in r else f"rtol {r['rtol']:g}"


def assert_rows(rows, what):
    """Raise AssertionError naming every row that disagrees."""
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise AssertionError(f"{what} disagrees with the reference: " + "; ".join(
            f"{r['quantity']} max |a - r| = {r['max_abs']:.3g} ({r['max_rel']:.3g} of "
            f"max|r|, {bound(r)})" for r in bad))


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
