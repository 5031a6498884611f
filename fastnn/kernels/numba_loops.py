"""Fast path: the reference network as explicit Numba-jitted loops.

Two layers of code, both checked against ``numpy_ref`` by the agreement tests:

* per-layer kernels (``linear_forward``/``linear_backward``, ``relu_*``,
  ``softmax_xent_*``, ``sgd_update``) over a whole batch, parallel over
  independent rows. ``forward`` and ``loss_and_grads`` are built from them, one
  call per layer, so each equation can be read and tested on its own.
* a fused epoch kernel (``_train_epoch_fused``) that gathers each batch from
  the sample order, scales uint8 pixels, runs forward, backward and the update
  for every batch of the epoch in one compiled call.

The fused kernel works on one flat parameter vector ``theta`` (each layer's W
row-major, then its b): per-thread gradient buffers and the update become
plain loops over one array, whatever the depth of the net. Each batch is cut
into one contiguous slice of samples per thread; every thread sums its
slice's gradients into its own row of ``gbuf`` and the rows are then added in
thread order, so the result depends on the thread count, never on scheduling.

No np.dot/@ here: every product is a loop.
"""

import time

import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels.numpy_ref import PIXEL_SCALE

# ---------------------------------------------------------------- per layer


@njit(**config.JIT_PARALLEL)
def linear_forward(X, W, b, Z):
    # X: (m, n_in)  W: (n_out, n_in)  b: (n_out,)  ->  Z: (m, n_out)
    # Z = X W^T + b
    m, n_in = X.shape
    n_out = W.shape[0]
    for r in prange(m):
        for o in range(n_out):
            s = b[o]
            for i in range(n_in):
                s += X[r, i] * W[o, i]
            Z[r, o] = s


@njit(**config.JIT_PARALLEL)
def linear_backward(dZ, X, W, dX, dW, db, want_dX):
    # dZ: (m, n_out)  X: (m, n_in)  W: (n_out, n_in)
    # -> dW: (n_out, n_in), db: (n_out,), and dX: (m, n_in) when want_dX
    # backward of Z = X W^T + b:  dW = dZ^T X,  db = sum_r dZ,  dX = dZ W
    m, n_in = X.shape
    n_out = W.shape[0]
    zero = W.dtype.type(0)
    for o in prange(n_out):  # each thread owns whole rows of dW: no races
        sb = zero
        for i in range(n_in):
            dW[o, i] = zero
        for r in range(m):
            d = dZ[r, o]
            sb += d
            for i in range(n_in):
                dW[o, i] += d * X[r, i]
        db[o] = sb
    if want_dX:
        for r in prange(m):
            for i in range(n_in):
                dX[r, i] = zero
            for o in range(n_out):
                d = dZ[r, o]
                for i in range(n_in):
                    dX[r, i] += d * W[o, i]


@njit(**config.JIT_PARALLEL)
def relu_forward(Z, A):
    # Z, A: (m, n);  A = max(Z, 0)
    m, n = Z.shape
    zero = Z.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            A[r, i] = Z[r, i] if Z[r, i] > zero else zero


@njit(**config.JIT_PARALLEL)
def relu_backward(dA, A, dZ):
    # dA, A, dZ: (m, n);  backward of A = max(Z, 0): dZ = dA * [Z > 0] ([Z > 0] == [A > 0])
    m, n = A.shape
    zero = A.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            dZ[r, i] = dA[r, i] if A[r, i] > zero else zero


@njit(**config.JIT)
def _softmax_row(z, p):
    # z, p: (k,); p = exp(z - max z) / sum; returns (log sum exp(z - max z), max z)
    k = z.shape[0]
    mx = z[0]
    for c in range(1, k):
        if z[c] > mx:
            mx = z[c]
    s = z.dtype.type(0)
    for c in range(k):
        e = np.exp(z[c] - mx)
        p[c] = e
        s += e
    inv = z.dtype.type(1) / s
    for c in range(k):
        p[c] *= inv
    return np.log(s), mx


@njit(**config.JIT_PARALLEL)
def softmax_xent_forward(Z, y, P, losses):
    # Z: (m, k) logits, y: (m,) int64 -> P: (m, k) probabilities, losses: (m,) per sample
    # -log P[y] = log sum exp(z - max) - (z[y] - max): finite for any finite logits
    m = Z.shape[0]
    for r in prange(m):
        lse, mx = _softmax_row(Z[r], P[r])
        losses[r] = lse - (Z[r, y[r]] - mx)


@njit(**config.JIT_PARALLEL)
def softmax_xent_backward(P, y, dZ):
    # P: (m, k), y: (m,) -> dZ: (m, k);  dZ = (P - Y) / m
    m, k = P.shape
    inv_m = P.dtype.type(1) / P.dtype.type(m)
    for r in prange(m):
        for c in range(k):
            dZ[r, c] = P[r, c] * inv_m
        dZ[r, y[r]] -= inv_m


@njit(**config.JIT_PARALLEL)
def sgd_update(w, g, lr):
    # w, g: (n,) flat views of one parameter and its gradient;  w <- w - lr g
    for i in prange(w.shape[0]):
        w[i] -= lr * g[i]


# ---------------------------------------------------------------- public API (per layer)


def _check_float(params, X):
    dtype = params[0][0].dtype
    if X.dtype != dtype:
        raise TypeError(f"X is {X.dtype}, params are {dtype}: convert X first")
    return np.ascontiguousarray(X)


def _forward_all(params, X):
    acts = [X]  # [X, A1, ..., Z_last]
    for i, (W, b) in enumerate(params):
        Z = np.empty((X.shape[0], W.shape[0]), dtype=X.dtype)
        linear_forward(acts[-1], W, b, Z)
        if i < len(params) - 1:
            relu_forward(Z, Z)  # in place: backward only needs A = ReLU(Z)
        acts.append(Z)
    return acts


def forward(params, X):
    """X (m, 784) -> P (m, 10) softmax probabilities."""
    X = _check_float(params, X)
    Z = _forward_all(params, X)[-1]
    P = np.empty_like(Z)
    softmax_xent_forward(Z, np.zeros(len(Z), np.int64), P, np.empty(len(Z), Z.dtype))
    return P


def loss_and_grads(params, X, y):
    """Mean cross-entropy over the batch and its gradients [(dW, db), ...]."""
    X = _check_float(params, X)
    y = np.ascontiguousarray(y, dtype=np.int64)
    acts = _forward_all(params, X)
    Z = acts[-1]
    P, losses = np.empty_like(Z), np.empty(len(Z), Z.dtype)
    softmax_xent_forward(Z, y, P, losses)
    delta = np.empty_like(P)
    softmax_xent_backward(P, y, delta)
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        dW, db, dX = np.empty_like(W), np.empty_like(b), np.empty_like(acts[i])
        linear_backward(delta, acts[i], W, dX, dW, db, i > 0)
        if i > 0:
            relu_backward(dX, acts[i], dX)
        grads[i] = (dW, db)
        delta = dX
    return float(losses.astype(np.float64).mean()), grads


def sgd_step(params, grads, lr):
    """W <- W - lr dW, b <- b - lr db, in place (per-layer kernel)."""
    lr = params[0][0].dtype.type(lr)
    for (W, b), (dW, db) in zip(params, grads):
        sgd_update(W.reshape(-1), dW.reshape(-1), lr)
        sgd_update(b, db, lr)


# ---------------------------------------------------------------- fused epoch


@njit(**config.JIT)
def _forward_sample(theta, sizes, woff, boff, x, a, aoff):
    # theta: (P,) flat params; sizes: (L+1,); woff, boff: (L,) offsets into theta
    # x: (784,) input row; a: (sum sizes,) activations, layer l at aoff[l]
    # leaves ReLU(Z) of every hidden layer and the last layer's logits in a
    n_layers = sizes.shape[0] - 1
    zero = theta.dtype.type(0)
    for i in range(sizes[0]):
        a[i] = x[i]
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        a_in = a[aoff[layer] : aoff[layer] + n_in]
        for o in range(n_out):
            w = theta[woff[layer] + o * n_in : woff[layer] + (o + 1) * n_in]
            s = theta[boff[layer] + o]
            for i in range(n_in):  # z[o] = W[o, :] . a_in + b[o]
                s += w[i] * a_in[i]
            if layer < n_layers - 1 and s < zero:
                s = zero  # hidden layers: A = ReLU(Z)
            a[aoff[layer + 1] + o] = s


@njit(**config.JIT_PARALLEL)
def _train_epoch_fused(theta, sizes, woff, boff, images, labels, order, batch_size, lr, scale,
                       gbuf, abuf, dbuf, stats):
    # theta: (P,) flat params, updated in place; sizes: (L+1,); woff, boff: (L,)
    # images: (n, 784) uint8; labels: (n,) int64; order: (k,) int64 sample indices
    # gbuf: (T, P) per-thread grads; abuf, dbuf: (T, sum sizes) activations, deltas
    # stats: (T, 2) float64 per-thread loss sum and correct count
    T = gbuf.shape[0]
    k = order.shape[0]
    n_layers = sizes.shape[0] - 1
    n_in0, n_cls = sizes[0], sizes[n_layers]
    aoff = np.zeros(n_layers + 2, np.int64)
    for layer in range(n_layers + 1):
        aoff[layer + 1] = aoff[layer] + sizes[layer]
    zero = theta.dtype.type(0)
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = theta.dtype.type(1) / theta.dtype.type(m)
        for t in prange(T):
            g, a, d = gbuf[t], abuf[t], dbuf[t]
            g[:] = zero
            for s in range(start + (m * t) // T, start + (m * (t + 1)) // T):
                j = order[s]
                for i in range(n_in0):  # gather and scale the uint8 row
                    a[i] = images[j, i] * scale
                _forward_sample(theta, sizes, woff, boff, a, a, aoff)
                # softmax + cross-entropy on the logits, in place in a
                z = a[aoff[n_layers] : aoff[n_layers] + n_cls]
                yj = labels[j]
                best = 0
                for c in range(1, n_cls):
                    if z[c] > z[best]:
                        best = c
                zy = z[yj]
                lse, mx = _softmax_row(z, z)  # z now holds P
                stats[t, 0] += lse - (zy - mx)
                stats[t, 1] += best == yj
                # d_last = (P - Y) / m, stored at d[aoff[L]:]
                dl = d[aoff[n_layers] : aoff[n_layers] + n_cls]
                for c in range(n_cls):
                    dl[c] = z[c] * inv_m
                dl[yj] -= inv_m
                for layer in range(n_layers - 1, -1, -1):
                    n_in, n_out = sizes[layer], sizes[layer + 1]
                    a_in = a[aoff[layer] : aoff[layer] + n_in]
                    d_out = d[aoff[layer + 1] : aoff[layer + 1] + n_out]
                    d_in = d[aoff[layer] : aoff[layer] + n_in]
                    if layer > 0:
                        d_in[:] = zero
                    for o in range(n_out):
                        do = d_out[o]
                        w0 = woff[layer] + o * n_in
                        gw = g[w0 : w0 + n_in]
                        for i in range(n_in):  # dW[o, :] += d[o] * a_in
                            gw[i] += do * a_in[i]
                        g[boff[layer] + o] += do  # db[o] += d[o]
                        if layer > 0:
                            w = theta[w0 : w0 + n_in]
                            for i in range(n_in):  # d_in += d[o] * W[o, :]
                                d_in[i] += do * w[i]
                    if layer > 0:
                        for i in range(n_in):  # d_in *= [Z > 0]
                            if a_in[i] <= zero:
                                d_in[i] = zero
        # the update: sum per-thread grads in thread order, then step
        for p in prange(theta.shape[0]):
            acc = gbuf[0, p]
            for t in range(1, T):
                acc += gbuf[t, p]
            theta[p] -= lr * acc


@njit(**config.JIT_PARALLEL)
def _predict_fused(theta, sizes, woff, boff, images, scale, abuf, out):
    # images: (n, 784) uint8 -> out: (n,) int64 argmax of the logits
    # abuf: (T, sum sizes) per-thread activations
    T = abuf.shape[0]
    n = images.shape[0]
    n_layers = sizes.shape[0] - 1
    aoff = np.zeros(n_layers + 2, np.int64)
    for layer in range(n_layers + 1):
        aoff[layer + 1] = aoff[layer] + sizes[layer]
    for t in prange(T):
        a = abuf[t]
        for j in range((n * t) // T, (n * (t + 1)) // T):
            for i in range(sizes[0]):
                a[i] = images[j, i] * scale
            _forward_sample(theta, sizes, woff, boff, a, a, aoff)
            z = a[aoff[n_layers] :]
            best = 0
            for c in range(1, sizes[n_layers]):
                if z[c] > z[best]:
                    best = c
            out[j] = best


def _pack(params):
    """params -> (theta, sizes, woff, boff): one flat copy plus layer offsets."""
    sizes = np.array([params[0][0].shape[1]] + [W.shape[0] for W, _ in params], np.int64)
    woff, boff, pos = [], [], 0
    for W, b in params:
        woff.append(pos)
        boff.append(pos + W.size)
        pos += W.size + b.size
    theta = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])
    return theta, sizes, np.array(woff, np.int64), np.array(boff, np.int64)


def _unpack(theta, params, woff, boff):
    for (W, b), wo, bo in zip(params, woff, boff):
        W[...] = theta[wo : wo + W.size].reshape(W.shape)
        b[...] = theta[bo : bo + b.size]


def _check_images(images):
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 2:
        raise TypeError(f"images must be (n, 784) uint8, got {images.shape} {images.dtype}")
    return images


def train_epoch(params, images, labels, order, batch_size, lr):
    """Minibatch SGD over ``order``, updating params in place (fused kernel).

    Same contract as numpy_ref.train_epoch: returns (mean loss, accuracy) over
    the samples seen, each measured before its batch's update.
    """
    import numba

    images = _check_images(images)
    labels = np.ascontiguousarray(labels, np.int64)
    order = np.ascontiguousarray(order, np.int64)
    theta, sizes, woff, boff = _pack(params)
    dtype = theta.dtype.type
    T = numba.get_num_threads()
    width = int(sizes.sum())
    gbuf = np.empty((T, theta.size), theta.dtype)
    abuf = np.empty((T, width), theta.dtype)
    dbuf = np.empty((T, width), theta.dtype)
    stats = np.zeros((T, 2))
    _train_epoch_fused(theta, sizes, woff, boff, images, labels, order, int(batch_size),
                       dtype(lr), dtype(PIXEL_SCALE), gbuf, abuf, dbuf, stats)
    _unpack(theta, params, woff, boff)
    k = len(order)
    return float(stats[:, 0].sum() / k), float(stats[:, 1].sum() / k)


def predict(params, images):
    """images (n, 784) uint8 -> predicted labels (n,) int64."""
    import numba

    images = _check_images(images)
    theta, sizes, woff, boff = _pack(params)
    abuf = np.empty((numba.get_num_threads(), int(sizes.sum())), theta.dtype)
    out = np.empty(len(images), np.int64)
    _predict_fused(theta, sizes, woff, boff, images, theta.dtype.type(PIXEL_SCALE), abuf, out)
    return out


def warmup(sizes, dtype):
    """Compile (or load from cache) what training uses; return the seconds it took."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    labels = np.zeros(3, np.int64)
    train_epoch(params, images, labels, np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
