"""Slow, obviously-correct helpers for the tests, named after what they check.

In the style of stumpy's tests/naive.py: nothing here is fast or clever. Each
function is the textbook definition, in float64, so a test can lean on it
without having to trust the code under test.
"""

import math

import numpy as np

PIXEL_SCALE = 1.0 / 255.0


def cross_entropy_loss(params, X, y):
    """Mean cross-entropy of the net, one sample at a time, in float64.

    For each row x: a = x; a = max(W a + b, 0) for every hidden layer;
    z = W a + b for the last; loss = log sum_c exp(z_c) - z_y, with the row
    max taken out before exp (log-sum-exp), summed with math.fsum.
    """
    params = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in params]
    losses = []
    for x, label in zip(np.asarray(X, np.float64), y):
        a = x
        for i, (W, b) in enumerate(params):
            z = np.array([math.fsum(W[o] * a) + b[o] for o in range(W.shape[0])])
            a = z if i == len(params) - 1 else np.maximum(z, 0.0)
        mx = max(a)
        lse = mx + math.log(math.fsum(math.exp(v - mx) for v in a))
        losses.append(lse - a[int(label)])
    return math.fsum(losses) / len(losses)


def preactivations(params, X):
    """The hidden layers' Z = A W^T + b (before ReLU), in float64, as a list."""
    a = np.asarray(X, np.float64)
    out = []
    for W, b in params[:-1]:
        z = a @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        out.append(z)
        a = np.maximum(z, 0.0)
    return out


def logits(params, X):
    """The last layer's Z = A W^T + b, in float64."""
    a = np.asarray(X, np.float64)
    for i, (W, b) in enumerate(params):
        z = a @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        a = z if i == len(params) - 1 else np.maximum(z, 0.0)
    return a


def min_distance_to_relu_kink(params, X):
    """min |Z| over every hidden pre-activation: how far the batch is from a ReLU kink.

    A central difference that steps across Z = 0 measures the average of two
    slopes, not the derivative; a gradient check is only meaningful when this
    is well above the step size.
    """
    zs = preactivations(params, X)
    return min(float(np.min(np.abs(z))) for z in zs) if zs else math.inf


def finite_difference_grads(loss_fn, params, eps, entries):
    """Central differences (L(p + eps) - L(p - eps)) / (2 eps) in float64.

    params: [(W, b), ...] float64 arrays, perturbed in place and restored.
    entries: {(layer, "W" | "b"): array of flat indices} to differentiate.
    Returns {(layer, "W" | "b"): array of derivative estimates, same order}.
    """
    out = {}
    for (layer, which), flat_idx in entries.items():
        arr = params[layer][0 if which == "W" else 1]
        assert arr.dtype == np.float64, "finite differences need float64 parameters"
        flat = arr.reshape(-1)  # a view: writes go to the parameter itself
        est = np.empty(len(flat_idx))
        for k, j in enumerate(flat_idx):
            saved = flat[j]
            flat[j] = saved + eps
            up = loss_fn(params)
            flat[j] = saved - eps
            down = loss_fn(params)
            flat[j] = saved
            est[k] = (up - down) / (2.0 * eps)
        out[(layer, which)] = est
    return out


def relative_error(analytic, numeric):
    """max |a - n| / max(max |a|, max |n|): the error relative to the gradient's size.

    Judged against the array's own scale (as tolerances.py does) rather than
    entry by entry, because a finite difference carries an absolute rounding
    error of about 1e-16 |L| / eps that would swamp entries near zero.
    """
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(n))))
    diff = float(np.max(np.abs(a - n)))
    return diff / scale if scale > 0 else diff


def argmax_first(z):
    """Index of the largest entry of each row, the first one on ties (row by row)."""
    out = np.empty(len(z), np.int64)
    for r, row in enumerate(z):
        best = 0
        for c in range(1, len(row)):
            if row[c] > row[best]:
                best = c
        out[r] = best
    return out


def logit_margin(z):
    """Per row: the gap between the largest and second-largest logit."""
    s = np.sort(np.asarray(z, np.float64), axis=1)
    return s[:, -1] - s[:, -2]


def train_epoch_one_sample_at_a_time(params, images, labels, order, batch_size, lr):
    """Minibatch SGD spelled out: per batch, sum per-sample grads, divide by m, step.

    Independent of every backend: grads of one sample come from the
    README's equations written per row, in float64 arithmetic on
    float64 params. Returns (mean loss, accuracy) measured before each
    batch's update, like the kernels' train_epoch.
    """
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        m = len(idx)
        acc = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
        for j in idx:
            x = images[j].astype(np.float64) * PIXEL_SCALE
            acts = [x]
            for i, (W, b) in enumerate(params):
                z = W @ acts[-1] + b
                acts.append(z if i == len(params) - 1 else np.maximum(z, 0.0))
            z = acts[-1]
            p = np.exp(z - z.max())
            p /= p.sum()
            loss_sum += math.log(np.exp(z - z.max()).sum()) - (z[labels[j]] - z.max())
            correct += int(argmax_first(z[None])[0] == labels[j])
            d = p.copy()
            d[labels[j]] -= 1.0
            for i in range(len(params) - 1, -1, -1):
                acc[i][0][...] += np.outer(d, acts[i])
                acc[i][1][...] += d
                if i > 0:
                    d = (params[i][0].T @ d) * (acts[i] > 0)
        for (W, b), (gW, gb) in zip(params, acc):
            W -= lr * gW / m
            b -= lr * gb / m
    return loss_sum / len(order), correct / len(order)


# ---------------------------------------------------------------- distortions (fastnn/augment.py)

MASK64 = 2**64 - 1


def splitmix64_mix(z):
    """SplitMix64's output function on a Python int, mod 2^64 (Steele, Lea, Flood 2014)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def distort_one(image, key, j, alpha, sigma, rotate=0.0, scale=0.0, shear=0.0, shift=(0, 0)):
    """Training sample j's image (784,) in [0, 1], distorted as the README's equations say:
    Python ints for the hashes, a direct 2-D double sum for the Gaussian, math.cos and
    math.sin, the textbook bilinear formula; float64 throughout, one pixel at a time."""
    golden, key, j = 0x9E3779B97F4A7C15, int(key), int(j)  # Python ints: no overflow
    k = splitmix64_mix((key + (j + 1) * golden) & MASK64)
    h = [splitmix64_mix((k + (c + 1) * golden) & MASK64) for c in range(786)]

    def u(bits):
        return bits * 2.0**-23 - 1.0

    ux = [[u(h[28 * y + x] >> 40) for x in range(28)] for y in range(28)]
    uy = [[u((h[28 * y + x] >> 16) & 0xFFFFFF) for x in range(28)] for y in range(28)]
    R = math.ceil(3 * sigma)
    g = [math.exp(-(a * a) / (2 * sigma * sigma)) for a in range(-R, R + 1)]
    norm = math.fsum(g)
    g = [v / norm for v in g]

    def smoothed(field, y, x):  # sum over the square of taps, zeros outside the frame
        return math.fsum(g[a + R] * g[b + R] * field[y + a][x + b]
                         for a in range(-R, R + 1) for b in range(-R, R + 1)
                         if 0 <= y + a < 28 and 0 <= x + b < 28)

    angle = math.radians(rotate) * u(h[784] >> 40)
    s = 1 + scale * u((h[784] >> 16) & 0xFFFFFF)
    e = shear * u(h[785] >> 40)
    c, sn = math.cos(angle), math.sin(angle)
    M = [[s * c, s * (c * e - sn)], [s * sn, s * (sn * e + c)]]
    img = np.asarray(image, np.float64).reshape(28, 28)

    def pixel(y, x):
        return img[y, x] if 0 <= y < 28 and 0 <= x < 28 else 0.0

    out = np.zeros((28, 28))
    for y in range(28):
        for x in range(28):
            X = 13.5 + M[0][0] * (x - 13.5) + M[0][1] * (y - 13.5) + alpha * smoothed(ux, y, x)
            Y = 13.5 + M[1][0] * (x - 13.5) + M[1][1] * (y - 13.5) + alpha * smoothed(uy, y, x)
            X, Y = X - shift[1], Y - shift[0]
            x0, y0 = math.floor(X), math.floor(Y)
            fx, fy = X - x0, Y - y0
            out[y, x] = ((1 - fy) * ((1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1))
                         + fy * ((1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)))
    return out.reshape(784)
