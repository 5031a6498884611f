"""Network parameters: initialisation, validation, and .npz checkpoints.

``params`` is a list of ``(W, b)`` tuples, first layer first, with ``W`` of
shape ``(out, in)`` and ``b`` of shape ``(out,)`` (the seed's ``W[1]`` is
10 x 784). Grads share that structure. The params this module makes are
``Params``: the same list, whose arrays are views into one flat vector that
the fused kernels update directly.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from fastnn import files, memory

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


CACHE_LINE = 64  # bytes


def aligned_zeros(shape, dtype):
    """Zeros whose first element starts a CACHE_LINE-byte line (NumPy promises 16 bytes)
    and whose last is followed by a line of nothing: rows whose bytes are whole lines
    start lines, and two threads that write either side of such a boundary, or one
    here and one in another array, never write the same line."""
    n, item = math.prod(shape) if np.ndim(shape) else int(shape), np.dtype(dtype).itemsize
    raw = np.zeros(n + 2 * CACHE_LINE // item, dtype)
    skip = (-raw.ctypes.data % CACHE_LINE) // item
    return raw[skip : skip + n].reshape(shape)


def empty_params(sizes, dtype=np.float32, fill=None):
    """Params of a net with layer widths ``sizes``: zeros, or all ``fill``, aligned (the
    split strategy's threads write W0's rows in parts)."""
    theta = aligned_zeros(n_params(sizes), np.dtype(dtype))
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


# ---------------------------------------------------------------------- checkpoints
#
# A checkpoint is an ordinary .npz (np.load reads it without fastnn): the header
# arrays format_version, sizes, dtype and meta (JSON text), the layers W<i>, b<i>
# and the optimizer state S<k>_W<i>, S<k>_b<i>. Reading trusts none of it: each
# member's .npy header (dtype, shape, hence size) is checked before its data is
# read, the layers' sizes come from `sizes` and must fit in memory, members that
# are not asked for are never decompressed, and every value must be finite.

REMEDY = "pass a checkpoint written by python -m fastnn.train --save PATH"
MAX_LAYERS = 1000  # widths in `sizes`: far more than anyone trains, a bound on reading it
MAX_META_CHARS = 2**24  # JSON of the metadata: the history of ~80,000 epochs
MAX_STATE_SLOTS = 2  # optimizer state arrays per parameter (Adam's m and v)



def save(path, params, meta=None, state=None) -> None:
    """Write params, JSON-able meta and optimizer state to ``path`` (.npz) atomically.

    ``state`` is a list of slots shaped like params (an optimizer's momentum,
    Adam's m and v), or None. The file is written as files.write_output writes
    every output (a symlink's target replaced, a device written into).
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
    files.write_output(path, lambda f: np.savez(f, **arrays))


def load(path):
    """Read a checkpoint written by save(); return (params, meta) or raise ModelError."""
    params, meta, _ = load_checkpoint(path)
    return params, meta


def _bad(path, problem):
    return ModelError(f"{path}: {problem}; {REMEDY}")


def _read_array(z, path, key, max_bytes, kinds, shape=None, dtype=None):
    """Member ``key`` of the open archive ``z`` as an owned, C-contiguous array, or None
    when it is absent. Its .npy header is checked first: a dtype of one of ``kinds``
    (never objects, so never a pickle), ``shape`` and ``dtype`` when given, and a size of
    at most ``max_bytes``; only then is its data read."""
    try:
        info = z.getinfo(key + ".npy")
    except KeyError:
        return None
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            found_shape, fortran, found_dtype = read_header(f)
            if found_dtype.hasobject or found_dtype.kind not in kinds:
                raise _bad(path, f"{key} holds {found_dtype} values, which a fastnn "
                                 "checkpoint never does")
            if (shape is not None and found_shape != shape) or (
                    dtype is not None and found_dtype != np.dtype(dtype)):
                want = f"{shape or found_shape} {np.dtype(dtype) if dtype else found_dtype}"
                raise _bad(path, f"{key} is {found_shape} {found_dtype}, expected {want}")
            nbytes = math.prod(found_shape) * found_dtype.itemsize
            if nbytes > max_bytes:
                raise _bad(path, f"{key} declares {nbytes:,} bytes, more than it can hold "
                                 f"({max_bytes:,} at most)")
            raw = f.read(nbytes)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        raise _bad(path, f"a damaged or truncated checkpoint ({key}: {e})") from None
    if len(raw) != nbytes:
        raise _bad(path, f"a damaged or truncated checkpoint ({key} ends after "
                         f"{len(raw):,} of its {nbytes:,} bytes)")
    array = np.frombuffer(raw, found_dtype).reshape(found_shape, order="F" if fortran else "C")
    return np.array(array, order="C")  # owned and writable: training updates it in place


def _check_finite(path, what, array):
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ModelError(f"{path}: {what} holds {bad:,} NaN or infinite value"
                         f"{'s' * (bad > 1)}, so the model computes nothing useful; retrain "
                         "it (python -m fastnn.train never saves a diverged run: this file "
                         "was damaged, edited or written by other code)")


def _header(z, path):
    """(format version, layer sizes, dtype name, meta text) of an open checkpoint."""
    missing = [k for k in ("format_version", "sizes", "dtype", "meta")
               if k + ".npy" not in z.namelist()]
    if missing:
        raise _bad(path, f"not a fastnn checkpoint (missing {', '.join(missing)})")
    version = _read_array(z, path, "format_version", 8, "iu", shape=())
    if int(version) != FORMAT_VERSION:
        version = int(version)
        raise ModelError(
            f"{path}: checkpoint format {version}, this fastnn reads format {FORMAT_VERSION}; "
            + ("it was written by a newer fastnn: upgrade fastnn to read it"
               if version > FORMAT_VERSION else REMEDY))
    sizes = _read_array(z, path, "sizes", 8 * (MAX_LAYERS + 2), "iu")
    sizes = [int(s) for s in sizes.ravel()] if sizes.ndim == 1 else []
    dtype = str(_read_array(z, path, "dtype", 4 * 16, "U", shape=()))
    meta = str(_read_array(z, path, "meta", 4 * MAX_META_CHARS, "U", shape=()))
    if (dtype not in DTYPES or len(sizes) < 2 or sizes[0] != N_INPUTS
            or sizes[-1] != N_CLASSES or min(sizes) < 1):
        raise _bad(path, f"bad header (sizes {sizes}, dtype {dtype}): a net is "
                         f"{N_INPUTS}-...-{N_CLASSES} in float32 or float64")
    return sizes, dtype, meta


def load_checkpoint(path):
    """Read a checkpoint written by save(); return (params, meta, state) or raise ModelError.

    The layers and the optimizer state are read only once the header says they fit in
    memory; NaN or infinite values anywhere are refused.
    """
    path = os.fspath(path)
    try:
        f = files.open_regular(path, memory.available_bytes(), "a checkpoint")
    except files.FileError as e:
        raise ModelError(f"{path}: {e.problem}; {e.remedy_or(REMEDY)}") from None
    with f:
        try:
            z = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise _bad(path, "not a fastnn checkpoint (not an .npz archive)") from None
        with z:
            sizes, dtype, meta_text = _header(z, path)
            slots = 0
            while f"S{slots}_W0.npy" in z.namelist():
                slots += 1
            if slots > MAX_STATE_SLOTS:
                raise _bad(path, f"{slots} optimizer state slots, more than any optimizer "
                                 f"keeps ({MAX_STATE_SLOTS})")
            itemsize = np.dtype(dtype).itemsize
            too_big = memory.too_large(n_params(sizes) * itemsize * (1 + slots),
                                       f"its {'-'.join(map(str, sizes))} net")
            if too_big:
                raise ModelError(f"{path}: {too_big}; it cannot be loaded here")
            params = _layers(z, path, sizes, dtype, "")
            state = [_layers(z, path, sizes, dtype, f"S{k}_") for k in range(slots)]
    try:
        meta = json.loads(meta_text)
    except (ValueError, RecursionError):
        raise _bad(path, "its metadata is not valid JSON") from None
    return flat_params(params), meta, state


def _layers(z, path, sizes, dtype, prefix):
    """[(W, b), ...] of the layers (prefix "") or of one optimizer state slot ("S<k>_")."""
    what = "optimizer state of layer" if prefix else "layer"
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        pair = []
        for name, shape in (("W", (fan_out, fan_in)), ("b", (fan_out,))):
            array = _read_array(z, path, f"{prefix}{name}{i}",
                                math.prod(shape) * np.dtype(dtype).itemsize, "f", shape, dtype)
            if array is None:
                raise _bad(path, f"{what} {i} is missing ({prefix}{name}{i})")
            _check_finite(path, f"{what} {i}'s {name}", array)
            pair.append(array)
        out.append(tuple(pair))
    return out
