"""Network parameters: initialisation, validation, and .npz checkpoints.

``params`` is a list of ``(W, b)`` tuples, first layer first, with ``W`` of
shape ``(out, in)`` and ``b`` of shape ``(out,)`` (the seed's ``W[1]`` is
10 x 784). Grads share that structure. The params this module makes are
``Params``: the same list, whose arrays are views into one flat vector that
the fused kernels update directly.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import NamedTuple

import numpy as np

N_INPUTS = 784
N_CLASSES = 10
FORMAT_VERSION = 1
DTYPES = {"float32": np.float32, "float64": np.float64}
INITS = ("he", "uniform")


class ModelError(Exception):
    """A checkpoint or parameter list that cannot be used."""


def layer_sizes(hidden) -> list[int]:
    """784, the hidden widths, 10."""
    return [N_INPUTS, *[int(h) for h in hidden], N_CLASSES]


class FlatNet(NamedTuple):
    """What the fused Numba kernels take for a network: the flat vector and its layout."""

    theta: np.ndarray  # (P,) every parameter, layer by layer: W row-major, then b
    sizes: np.ndarray  # (L+1,) int64 layer widths, 784 first
    woff: np.ndarray  # (L,) int64: layer l's W starts at theta[woff[l]]
    boff: np.ndarray  # (L,) int64: layer l's b starts at theta[boff[l]]


class Params(list):
    """A network's parameters, [(W, b), ...], stored as views into one flat vector.

    The fused kernels update ``theta`` as one array (and lay the gradient and
    the optimizer's state out the same way), while everything else reads and
    writes the familiar per-layer (W, b) arrays: both are the same memory.
    Made by ``empty_params``, ``init_params``, ``flat_params`` (a copy of any
    list of pairs) and ``copy_params``; checkpoints load as Params too.
    """

    def __init__(self, theta, sizes):
        sizes = np.asarray(sizes, np.int64)
        woff, boff, pairs, pos = [], [], [], 0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            W = theta[pos : pos + fan_out * fan_in].reshape(fan_out, fan_in)
            b = theta[pos + W.size : pos + W.size + fan_out]
            woff.append(pos)
            boff.append(pos + W.size)
            pos += W.size + fan_out
            pairs.append((W, b))
        if pos != theta.size:
            raise ModelError(f"a flat vector of {theta.size} values does not hold a "
                             f"{'-'.join(map(str, sizes))} net ({pos} parameters)")
        super().__init__(pairs)
        self.flat = FlatNet(theta, sizes, np.array(woff, np.int64), np.array(boff, np.int64))

    @property
    def theta(self):
        return self.flat.theta


def n_params(sizes) -> int:
    """How many weights and biases a net with these layer widths has."""
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def empty_params(sizes, dtype=np.float32, fill=None):
    """Params of a net with layer widths ``sizes``: uninitialised, or all ``fill``."""
    theta = np.empty(n_params(sizes), np.dtype(dtype))
    if fill is not None:
        theta.fill(fill)
    return Params(theta, sizes)


def flat_params(pairs):
    """A Params copy of any list of (W, b) pairs (checked first)."""
    check_params(pairs, contiguous=False)
    params = empty_params(sizes_of(pairs), pairs[0][0].dtype)
    for (W, b), (W_src, b_src) in zip(params, pairs):
        W[...] = W_src
        b[...] = b_src
    return params


def init_params(sizes, seed=0, dtype=np.float32, init="he"):
    """Random parameters for a net with layer widths ``sizes``.

    "he": W ~ N(0, 2/fan_in), b = 0 (suits ReLU). "uniform": W, b ~ U(-0.5, 0.5),
    the original script's ``np.random.rand(...) - 0.5``.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    rng = np.random.default_rng(seed)
    params = empty_params(sizes, dtype)
    for W, b in params:
        fan_out, fan_in = W.shape
        if init == "he":
            W[...] = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            b[...] = 0
        else:
            W[...] = rng.random((fan_out, fan_in)) - 0.5
            b[...] = rng.random(fan_out) - 0.5
    return params


def sizes_of(params) -> list[int]:
    return [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]


def check_params(params, contiguous=True) -> None:
    """Raise ModelError unless params is a chain of (W, b) of one float dtype
    (C-contiguous, unless ``contiguous`` is False)."""
    if not params:
        raise ModelError("the network has no layers")
    dtype = params[0][0].dtype
    if dtype not in (np.float32, np.float64):
        raise ModelError(f"parameters must be float32 or float64, not {dtype}")
    fan_in = params[0][0].shape[1]
    for i, (W, b) in enumerate(params):
        if W.ndim != 2 or b.ndim != 1 or W.shape != (b.shape[0], fan_in):
            raise ModelError(
                f"layer {i}: W {W.shape} and b {b.shape} do not fit an input of width {fan_in}"
            )
        if W.dtype != dtype or b.dtype != dtype:
            raise ModelError(f"layer {i}: dtype {W.dtype}/{b.dtype} differs from {dtype}")
        if contiguous and not (W.flags.c_contiguous and b.flags.c_contiguous):
            raise ModelError(f"layer {i}: arrays must be C-contiguous")
        fan_in = W.shape[0]


def copy_params(params):
    """A flat (Params) copy of params."""
    return flat_params(params)


def atomic_write(path, write) -> None:
    """Call write(file) on a temp file beside path, fsync, then rename over path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it 0600; give the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save(path, params, meta=None, state=None) -> None:
    """Write params, JSON-able meta and optimizer state to ``path`` (.npz) atomically.

    ``state`` is a list of slots shaped like params (an optimizer's momentum,
    Adam's m and v), or None.
    """
    check_params(params)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "sizes": np.array(sizes_of(params), dtype=np.int64),
        "dtype": np.array(str(params[0][0].dtype)),
        "meta": np.array(json.dumps(meta or {})),
    }
    for i, (W, b) in enumerate(params):
        arrays[f"W{i}"] = W
        arrays[f"b{i}"] = b
    for k, slot in enumerate(state or []):
        for i, (W, b) in enumerate(slot):
            arrays[f"S{k}_W{i}"] = W
            arrays[f"S{k}_b{i}"] = b
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path):
    """Read a checkpoint written by save(); return (params, meta) or raise ModelError."""
    params, meta, _ = load_checkpoint(path)
    return params, meta


REMEDY = "pass a checkpoint written by python -m fastnn.train --save PATH"


def load_checkpoint(path):
    """Read a checkpoint written by save(); return (params, meta, state)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file; {REMEDY}")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not a checkpoint file; {REMEDY}")
    if not zipfile.is_zipfile(path):  # before np.load, whose message talks of pickles
        raise ModelError(f"{path}: not a fastnn checkpoint (not an .npz archive); {REMEDY}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/np errors: truncated or damaged archive
        raise ModelError(f"{path}: a damaged or truncated checkpoint ({e}); {REMEDY}") from None
    missing = {"format_version", "sizes", "dtype", "meta"} - data.keys()
    if missing:
        raise ModelError(f"{path}: not a fastnn checkpoint (missing "
                         f"{', '.join(sorted(missing))}); {REMEDY}")
    version = int(data["format_version"])
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format {version}, this fastnn reads format {FORMAT_VERSION}; "
            + ("it was written by a newer fastnn: upgrade fastnn to read it"
               if version > FORMAT_VERSION else REMEDY)
        )
    sizes = [int(s) for s in data["sizes"]]
    dtype = str(data["dtype"])
    if dtype not in DTYPES or len(sizes) < 2 or sizes[0] != N_INPUTS or sizes[-1] != N_CLASSES:
        raise ModelError(f"{path}: bad header (sizes {sizes}, dtype {dtype}); {REMEDY}")
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W, b = data.get(f"W{i}"), data.get(f"b{i}")
        if W is None or b is None:
            raise ModelError(f"{path}: layer {i} is missing; {REMEDY}")
        if (W.shape != (fan_out, fan_in) or b.shape != (fan_out,) or W.dtype != dtype
                or b.dtype != dtype):
            raise ModelError(
                f"{path}: layer {i} has W {W.shape} {W.dtype}, b {b.shape} {b.dtype}; "
                f"expected W ({fan_out}, {fan_in}) {dtype}, b ({fan_out},) {dtype}; {REMEDY}"
            )
        params.append((np.ascontiguousarray(W), np.ascontiguousarray(b)))
    state = []
    while f"S{len(state)}_W0" in data:
        k = len(state)
        slot = [(data.get(f"S{k}_W{i}"), data.get(f"S{k}_b{i}")) for i in range(len(params))]
        for i, ((W, b), (sW, sb)) in enumerate(zip(params, slot)):
            if sW is None or sb is None or sW.shape != W.shape or sb.shape != b.shape \
                    or sW.dtype != W.dtype or sb.dtype != b.dtype:
                raise ModelError(f"{path}: optimizer state {k} of layer {i} is missing or "
                                 f"does not match the layer; {REMEDY}")
        state.append([(np.ascontiguousarray(W), np.ascontiguousarray(b)) for W, b in slot])
    try:
        meta = json.loads(str(data["meta"]))
    except ValueError:
        raise ModelError(f"{path}: its metadata is not valid JSON; {REMEDY}") from None
    return flat_params(params), meta, state
