"""Reference kernels: readable, vectorised NumPy. Clear, not fast.

Each line is one of the README's equations (the original script's), written
for a batch of rows (X is (m, 784), W is (out, in)):

    Z1 = X W1^T + b1      A1 = ReLU(Z1)
    Z2 = A1 W2^T + b2     P  = softmax(Z2)
    L  = -(1/m) sum log P[y]

    d2 = (P - Y) / m      dW2 = d2^T A1      db2 = sum d2
    d1 = (d2 W2) * [Z1 > 0]
                          dW1 = d1^T X       db1 = sum d1
    W <- W - lr dW        b <- b - lr db

Deeper nets repeat the hidden-layer lines. Each equation is one small
function below; ``numba_layers`` has a twin of each, by the same name. The
fast backends must match this module to the tolerances in
fastnn/tolerances.py.
"""

import numpy as np

from fastnn import augment

PIXEL_SCALE = 1.0 / 255.0  # uint8 pixels -> [0, 1], applied as one multiply


def to_float(images, dtype):
    # images: (m, 784) uint8 -> (m, 784) dtype in [0, 1]
    return images.astype(dtype) * np.dtype(dtype).type(PIXEL_SCALE)


def shift_images(images, shifts):
    # images: (m, 784) uint8 28x28; shifts: (m, 2) int (dy, dx) -> (m, 784) uint8,
    # each image moved down dy and right dx pixels, zeros shifted in
    m = len(images)
    r = np.arange(28)
    src_r = r[None, :] - shifts[:, :1]  # (m, 28): the source row of each output row
    src_c = r[None, :] - shifts[:, 1:]
    inside = ((src_r >= 0) & (src_r < 28))[:, :, None] & ((src_c >= 0) & (src_c < 28))[:, None, :]
    pixels = images.reshape(m, 28, 28)[np.arange(m)[:, None, None],
                                       np.clip(src_r, 0, 27)[:, :, None],
                                       np.clip(src_c, 0, 27)[:, None, :]]
    return np.where(inside, pixels, 0).astype(np.uint8).reshape(m, 784)


def gather(images, order, dtype, shifts=None, distort=None):
    """images[order] as training sees them: (len(order), 784) of dtype in [0, 1].

    shifts (len(order), 2) int moves each image by (dy, dx) pixels; distort, a
    fastnn.augment.Distortion, resamples each through its elastic and affine map
    (the shift included in the same resampling; fastnn/augment.py)."""
    batch = images[order]
    if distort is not None:
        return augment.distort(to_float(batch, dtype), order, distort, shifts)
    if shifts is not None:
        batch = shift_images(batch, shifts)
    return to_float(batch, dtype)


# ---------------------------------------------------------------- one function per equation
# numba_layers has a twin of each, by the same name, as explicit loops.


def linear_forward(X, W, b):
    # X: (m, n_in)  W: (n_out, n_in)  b: (n_out,)  ->  Z: (m, n_out)
    return X @ W.T + b  # Z = X W^T + b


def relu_forward(Z):
    # Z: (m, n) -> A: (m, n)
    return np.maximum(Z, 0)  # A = ReLU(Z)


def softmax_xent_forward(Z, y):
    # Z: (m, k) logits, y: (m,) int64 -> P: (m, k) probabilities, losses: (m,) -log P[y]
    shifted = Z - Z.max(axis=1, keepdims=True)  # subtract the row max: exp never overflows
    E = np.exp(shifted)
    S = E.sum(axis=1, keepdims=True)
    # -log P[y] = log sum exp(z) - z[y], computed from the shifted logits: no log(0)
    return E / S, np.log(S[:, 0]) - shifted[np.arange(len(y)), y]


def softmax_xent_backward(P, y):
    # P: (m, k), y: (m,) -> dZ: (m, k)
    # backward of L = -(1/m) sum log P[y]:  d_last = (P - Y) / m
    m = P.shape[0]
    Y = np.zeros_like(P)
    Y[np.arange(m), y] = 1
    return (P - Y) / P.dtype.type(m)


def linear_backward(dZ, X, W, want_dX=True):
    # dZ: (m, n_out)  X: (m, n_in)  W: (n_out, n_in) -> dW (n_out, n_in), db (n_out,),
    # dX (m, n_in) or None
    # backward of Z = X W^T + b:  dW = dZ^T X,  db = sum over rows of dZ,  dX = dZ W
    return dZ.T @ X, dZ.sum(axis=0), (dZ @ W if want_dX else None)


def relu_backward(dA, A):
    # dA, A: (m, n) -> dZ: (m, n)
    # backward of A = ReLU(Z):  dZ = dA * [Z > 0]  ([Z > 0] == [A > 0])
    return dA * (A > 0)


def sgd_update(w, g, lr):
    # w, g: one parameter array and its gradient;  w <- w - lr g, in place
    w -= lr * g


# ---------------------------------------------------------------- the network


def _forward_all(params, X):
    """Return the activations [X, A1, ..., Z_last]: what backward needs."""
    acts = [X]
    for i, (W, b) in enumerate(params):
        Z = linear_forward(acts[-1], W, b)
        acts.append(Z if i == len(params) - 1 else relu_forward(Z))
    return acts


def activations(params, X):
    """X (m, 784) -> [A1, ..., A_{L-1}, Z_L]: every hidden layer's ReLU output, then the
    logits."""
    return _forward_all(params, X)[1:]


def logits(params, X):
    """X (m, 784) -> Z (m, 10), the last layer's pre-softmax values."""
    return _forward_all(params, X)[-1]


def forward(params, X):
    """X (m, 784) -> P (m, 10) softmax probabilities."""
    Z = logits(params, X)
    return softmax_xent_forward(Z, np.zeros(len(Z), np.int64))[0]


def _loss_grads_probs(params, X, y):
    acts = _forward_all(params, X)
    P, losses = softmax_xent_forward(acts[-1], y)
    delta = softmax_xent_backward(P, y)
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):
        dW, db, dA = linear_backward(delta, acts[i], params[i][0], want_dX=i > 0)
        grads[i] = (dW, db)
        if i > 0:
            delta = relu_backward(dA, acts[i])
    return float(np.mean(losses)), grads, P


def loss_and_grads(params, X, y):
    """Mean cross-entropy over the batch and its gradients [(dW, db), ...]."""
    loss, grads, _ = _loss_grads_probs(params, X, y)
    return loss, grads


def sgd_step(params, grads, lr):
    """W <- W - lr dW, b <- b - lr db, in place."""
    lr = params[0][0].dtype.type(lr)
    for (W, b), (dW, db) in zip(params, grads):
        sgd_update(W, dW, lr)
        sgd_update(b, db, lr)


def apply_update(params, grads, lr, opt):
    """One step of the optimizer ``opt`` (fastnn.optim.Optimizer), in place."""
    dt = params[0][0].dtype.type
    state = opt.ensure_state(params)
    opt.step += 1
    lr = dt(lr)
    mu, b1, b2, eps, wd = opt.hyper(params[0][0].dtype)
    one = dt(1)
    # Adam's bias corrections 1 - beta^t, computed in float64 from the dtype's beta
    c1, c2 = dt(1 - float(b1) ** opt.step), dt(1 - float(b2) ** opt.step)
    for i, (pair, gpair) in enumerate(zip(params, grads)):
        for j in (0, 1):
            w, g = pair[j], gpair[j]
            if wd != 0:
                g = g + wd * w  # L2 weight decay
            if opt.name == "sgd":
                w -= lr * g
            elif opt.name == "momentum":
                v = state[0][i][j]
                v[...] = mu * v + g
                w -= lr * v
            else:
                m, v = state[0][i][j], state[1][i][j]
                m[...] = b1 * m + (one - b1) * g
                v[...] = b2 * v + (one - b2) * g * g
                w -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


def train_epoch(params, images, labels, order, batch_size, lr, opt=None, shifts=None,
                distort=None):
    """Minibatch training over ``order``, updating params in place.

    images: (n, 784) uint8, labels: (n,) int64, order: (k,) int64 sample
    indices; consecutive runs of batch_size (the last may be shorter) form
    the batches. ``opt`` is a fastnn.optim.Optimizer (None: plain SGD); its
    state and step count advance in place. Augmentation: ``shifts`` (k, 2), if
    given, moves sample order[i] by shifts[i] = (dy, dx) pixels; ``distort``, a
    fastnn.augment.Distortion, distorts every sample (see ``gather``). Returns
    (mean loss, accuracy) over the samples seen, each measured before its
    batch's update.
    """
    dtype = params[0][0].dtype
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        X = gather(images, idx, dtype, None if shifts is None else
                   shifts[start : start + batch_size], distort)
        y = labels[idx]
        loss, grads, P = _loss_grads_probs(params, X, y)
        if opt is None:
            sgd_step(params, grads, lr)
        else:
            apply_update(params, grads, lr, opt)
        loss_sum += loss * len(idx)
        correct += int((P.argmax(axis=1) == y).sum())
    return loss_sum / len(order), correct / len(order)


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64."""
    dtype = params[0][0].dtype
    out = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), chunk):
        X = to_float(images[start : start + chunk], dtype)
        out[start : start + chunk] = _forward_all(params, X)[-1].argmax(axis=1)
    return out


def warmup(sizes, dtype, batch_size=None, moved=False):
    """Nothing to compile; return the compile time in seconds."""
    return 0.0
