"""The "split" strategy: each lane owns a slice of the first layer's input columns.

The samples strategy cuts a batch's samples into lanes: each lane's gradient
of every weight is added up with the others' after the batch, and every
first-layer weight line crosses between cores (784-10-10 at batch 32 on 2
cores: about 8 us a batch, as long as the batch's work). For a first layer
narrow enough, this one cuts its input columns instead: lane l owns columns
[lo, hi) of the images, of W0, of its gradient and of the optimizer's state,
as panels of its own (copied out of theta and the state when a call starts,
back when it ends: threads that wrote the two halves of one row slowed each
other down, 1.3x on 2 threads where panels gave 1.8x). A batch:

1. each lane gathers its columns of the batch's images and their partial
   first-layer sums (m, n1);
2. a barrier; each lane takes a slice of the batch's samples through the
   layers above: the first layer's output (the lanes' partial sums added in
   lane order, plus b0), forward, softmax and back down to the deltas of the
   first layer's output, and its slice's gradient of b0 and the layers above;
3. a barrier; thread 0 adds the lanes' gradients of b0 and the layers above
   (lane order) and updates them, while each lane takes its columns of W0's
   gradient (all the deltas^T its columns) and updates them.

What crosses cores is the partial sums, the deltas (m x n1 each) and the small
layers' gradients, not W0's; so this pays for narrow first layers and small
batches (numba_epoch.choose). Results depend on the lanes (the machine's thread
count), not on how many threads run.
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from fastnn import config, model
from fastnn.kernels.numba_intrinsics import SYNC_PAD, barrier
from fastnn.kernels.numba_narrow import SOFTMAX_ROWS, narrow_above, narrow_flag, scratch_rows
from fastnn.kernels.numba_regions import on_threads
from fastnn.kernels.numba_shared import (
    OptState,
    apply_rule,
    gather_row,
    layer_offsets,
    layer_params,
    nonzero_bounds,
    prefetch_image,
    scaled_row,
    sum_and_apply,
)
from fastnn.kernels.numba_tiles import (
    SPAN_ALIGN,
    STATS_PAD,
    TILE,
    _blocked_forward,
    _grad_rows,
    _input_and_deltas,
    _rows,
    _scratch,
    _softmax_xent_tile,
    _tile_forward,
    _tile_grad_input,
    tile_buffer_size,
    widen_span,
)


class Work(NamedTuple):
    """Buffers of a split epoch (split_work); C: the widest lane's columns, in vectors."""

    grads: np.ndarray  # (lanes, P + 16) each lane's gradient of b0 and the layers above
    X: np.ndarray  # (lanes, batch, C) each lane's columns of the batch's images
    W: np.ndarray  # (lanes, n1 * C) each lane's columns of W0, (n1, C) row-major
    G: np.ndarray  # (lanes, n1 * C) their gradient
    S: np.ndarray  # (lanes, 2, n1 * C) their optimizer state (momentum, or Adam's 2;
    #                all 2 passed on: the type of opt.state, so one apply_rule compiles)
    part: np.ndarray  # (lanes, batch + 16, n1) partial first-layer sums
    D: np.ndarray  # ((batch + 16) * n1,) deltas of the first layer's output, (batch, n1)
    buf: np.ndarray  # (T, tile_buffer_size + 16) each thread's tile of the layers above
    spans: np.ndarray  # int64 (lanes, batch // 4 + 8, 2) widen_span's, by lane
    stats: np.ndarray  # float64 (STATS_PAD * lanes, 2): lane l's (loss sum, hits) in
    #                    row STATS_PAD * l
    junk_b: np.ndarray  # (T, n1 + 16) a b0 gradient no one reads, per thread
    zeros: np.ndarray  # (n1,) no bias for the partial sums
    rows: np.ndarray  # (T, n_in) a gathered row when shifted or distorted; None: never
    sync: np.ndarray  # int64 (2 * SYNC_PAD,) the barrier
    # numba_narrow.narrow_flag's pair: the kernel is compiled for one of the two paths
    # (_layers_above)
    narrow: object
    wide: object


def plain(work):
    """work for batches that are neither shifted nor distorted (a kernel of its own,
    without that path: see gather_columns)."""
    return work._replace(rows=None)


def split_work(sizes, batch_size, nthreads, lanes, dtype):
    # Every buffer starts a cache line and ends a line away from any other
    # (model.aligned_zeros), panel rows are whole vectors, and 16 spare values end
    # each thread's blocks: no two threads write one line (false sharing cost more
    # than this strategy saves)
    n_in, n1, bs = int(sizes[0]), int(sizes[1]), int(batch_size)
    C = max(hi - lo for lo, hi in (columns(n_in, lanes, lane) for lane in range(lanes)))
    C = -(-C // SPAN_ALIGN) * SPAN_ALIGN
    P = model.n_params(sizes)
    zeros = model.aligned_zeros
    return Work(zeros((lanes, P + 16), dtype), zeros((lanes, bs, C), dtype),
                zeros((lanes, n1 * C), dtype), zeros((lanes, n1 * C), dtype),
                zeros((lanes, 2, n1 * C), dtype), zeros((lanes, bs + 16, n1), dtype),
                zeros((bs + 16) * n1, dtype),
                zeros((nthreads, tile_buffer_size(TILE, sizes) + 16), dtype),
                zeros((lanes, bs // 4 + 8, 2), np.int64),
                zeros((STATS_PAD * lanes, 2), np.float64), zeros((nthreads, n1 + 16), dtype),
                zeros(n1, dtype), zeros((nthreads, n_in), dtype), zeros(2 * SYNC_PAD, np.int64),
                *narrow_flag(sizes, dtype))


@njit(**config.JIT)
def columns(n_in, lanes, lane):
    # lane's input columns [lo, hi): whole vectors (SPAN_ALIGN), lanes in order
    blocks = -(-n_in // SPAN_ALIGN)
    return (SPAN_ALIGN * (blocks * lane // lanes),
            min(n_in, SPAN_ALIGN * (blocks * (lane + 1) // lanes)))


@njit(**config.JIT_LEAF)
def gather_columns(batches, first, m, X, lo, hi, spans, rows, t, pf_lo, pf_hi):
    # X: (>= m, >= hi - lo) <- columns [lo, hi) of gather_row's rows for order
    # positions first..first+m; spans: (>= (m + 3) // 4, 2) <- widen_span's of X's
    # columns; rows: (T, n_in), row t the scratch for a shifted or distorted row, or
    # None for batches neither shifted nor distorted: Numba then drops that path, whose
    # distortion took 10 of the kernel's 38 s of compile time. Starts loading the same
    # columns of order positions [pf_lo, pf_hi) (the next batch), one row per row
    # gathered: in a burst, the prefetches waited for each other (1.3 us a batch)
    n = hi - lo
    plain = True
    if rows is not None:
        plain = batches.taps.shape[0] == 0 and batches.shifts.shape[0] == 0
    for s in range(m):
        if pf_lo + s < pf_hi:
            prefetch_image(batches, pf_lo + s, lo, hi)
        if plain:
            a, b = scaled_row(batches.images[batches.order[first + s]][lo:hi], batches.scale,
                              X[s, :n])
        else:
            a, b = _gather_moved(batches, first + s, rows[t], lo, hi, X[s, :n])
        widen_span(spans, s, a, b, n)
    for s in range(m, pf_hi - pf_lo):
        prefetch_image(batches, pf_lo + s, lo, hi)


@njit(**config.JIT)
def _gather_moved(batches, s, row, lo, hi, out):
    # out: (hi - lo,) <- columns [lo, hi) of gather_row's shifted or distorted row of
    # order position s (row: (n_in,) scratch); returns where out is nonzero. Its own
    # function: inlined into gather_columns' loop, it made the plain gather 2x slower
    gather_row(batches, s, row)
    for i in range(hi - lo):
        out[i] = row[lo + i]
    return nonzero_bounds(out)


@njit(**config.JIT_LEAF)
def _first_layer_out(part, b0, f, ns, Z, relu):
    # part: (lanes, batch, n1) -> Z: (>= ns, n1) = b0 + the lanes' sums for samples
    # f..f+ns, added in lane order (+ ReLU). Lane by lane over a row, not unit by unit
    # over the lanes: LLVM vectorised that reduction over the lanes (two) into 170 KB of
    # IR, compiled again in every kernel that calls this one (~1 s of cold compile). The
    # ReLU written out, not numba_shared.relu_rows: calling it cost 0.7-3.5 s more cold
    # compile in five interleaved pairs on the Zen 4 (the same bits)
    lanes, n1 = part.shape[0], part.shape[2]
    zero = Z.dtype.type(0)
    for s in range(ns):
        z = Z[s]
        for o in range(n1):
            z[o] = b0[o]
        for lane in range(lanes):
            p = part[lane, f + s]
            for o in range(n1):
                z[o] += p[o]
        if relu:
            for o in range(n1):
                z[o] = zero if z[o] < zero else z[o]


@njit(**config.JIT_LEAF)
def _layers_above(net, aoff, buf, part, f, ns, batches, first, inv_m, stats_row, D0, grad,
                  accumulate, no_spans, narrow, wide):
    # samples f..f+ns of the batch starting at order position first - f: the first
    # layer's output from part, the layers above it forward and back -> rows f..f+ns of
    # D0: ((batch + 16) * n1,) flat, the deltas of the first layer's output;
    # stats_row += (loss sum, hits); grad: (P,) laid out like net.theta gets
    # (accumulate: adds) the layers' gradient from layer 1 on and b0's; no_spans: (0, 2)
    # int64 of the lanes' spans' type; narrow, wide: Work's, the layers above transposed
    # (numba_narrow) or row-major (Numba compiles one of the two). One call site and one
    # type per kernel called (views of flat buffers, as in numba_tiles): each more cost
    # seconds of compile time.
    sizes = net.sizes
    L = sizes.shape[0] - 1
    d0 = _rows(D0, 0, 0, f, ns, sizes[1])
    params = net.theta
    _first_layer_out(part, layer_params(params, net, 0)[1], f, ns,
                     _rows(buf, TILE, aoff[1], 0, ns, sizes[1]), L > 1)
    if narrow is not None:
        narrow_above(net, _rows(buf, TILE, aoff[1], 0, ns, sizes[1]), ns, batches, first,
                     inv_m, stats_row, d0, grad, accumulate,
                     _scratch(buf, TILE, aoff, 0, ns, scratch_rows(sizes)))
    if wide is not None:
        for layer in range(1, L):
            W, b = layer_params(params, net, layer)
            _tile_forward(_rows(buf, TILE, aoff[layer], 0, ns, sizes[layer]), ns, W, b,
                          _rows(buf, TILE, aoff[layer + 1], 0, ns, sizes[layer + 1]),
                          layer < L - 1, no_spans)
        top = d0 if L == 1 else _input_and_deltas(buf, TILE, aoff, sizes, L - 1, 0, ns)[1]
        _softmax_xent_tile(_rows(buf, TILE, aoff[L], 0, ns, sizes[L]), ns, batches, first,
                           inv_m, top, stats_row,
                           _scratch(buf, TILE, aoff, 0, ns, sizes[L] + SOFTMAX_ROWS))
        for layer in range(L - 1, 0, -1):
            A, D = _input_and_deltas(buf, TILE, aoff, sizes, layer, 0, ns)
            below = d0 if layer == 1 else _input_and_deltas(buf, TILE, aoff, sizes, layer - 1,
                                                            0, ns)[1]
            _tile_grad_input(D, layer_params(params, net, layer)[0], A, ns, below)
            gW, gb = layer_params(grad, net, layer)
            _grad_rows(D, A, ns, gW, gb, 0, sizes[layer + 1], accumulate, no_spans)
    gb0 = layer_params(grad, net, 0)[1]
    for o in range(sizes[1]):
        acc = d0.dtype.type(0)
        for s in range(ns):
            acc += d0[s, o]
        gb0[o] = gb0[o] + acc if accumulate else acc


@njit(**config.JIT)
def _panels(net, opt, W, S, lanes, nthreads, t, into):
    # theta's W0 and opt.state's part for it -> (into) or <- thread t's lanes' panels W, S
    # (element by element: a slice assignment compiles its shape-mismatch error,
    # string formatting included, ~2 s of the kernel's cold compile)
    n_in, n1 = net.sizes[0], net.sizes[1]
    C = W.shape[1] // n1
    for lane in range(t, lanes, nthreads):
        lo, hi = columns(n_in, lanes, lane)
        for o in range(n1):
            p = net.woff[0] + o * n_in
            for i in range(hi - lo):
                if into:
                    W[lane, o * C + i] = net.theta[p + lo + i]
                else:
                    net.theta[p + lo + i] = W[lane, o * C + i]
                for r in range(opt.state.shape[0]):
                    if into:
                        S[lane, r, o * C + i] = opt.state[r, p + lo + i]
                    else:
                        opt.state[r, p + lo + i] = S[lane, r, o * C + i]


def train_epoch_split(net, opt, batches, work, lr, nthreads):
    # The epoch on nthreads threads at once (numba_regions), two barriers a batch (the
    # module's docstring)
    on_threads(_epoch_thread, nthreads, net, opt, batches, work, lr, nthreads)
    k, batch_size = batches.order.shape[0], batches.batch_size
    opt.step[0] += (k + batch_size - 1) // batch_size


@njit(**config.JIT)
def _epoch_thread(net, opt, batches, work, lr, nthreads, t):
    # Thread t of train_epoch_split: lanes t, t + nthreads, ... The panels of W0 and its
    # state are the lanes' own (W0 lies below theta[above:], which thread 0 updates), so
    # each thread copies its lanes' in and out without waiting for the others.
    (grads, XP, WP, GP, SP, part, D, tbuf, spans, stats, junk_b, zeros, rows, sync,
     narrow, wide) = work
    k, batch_size, lanes = batches.order.shape[0], batches.batch_size, batches.lanes
    n_in, n1 = net.sizes[0], net.sizes[1]
    C = WP.shape[1] // n1
    P = net.theta.shape[0]
    above = net.boff[0]  # b0 and every later layer's params: theta[above:]
    aoff = layer_offsets(net.sizes)
    step0 = opt.step[0]
    dt = net.theta.dtype.type
    buf = tbuf[t]
    # Constants that callees take are passed as np.int64 / np.bool_: a literal argument
    # compiles a specialisation of its own (and of everything the callee calls)
    _panels(net, opt, WP, SP, lanes, nthreads, t, np.bool_(True))
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        step = step0 + start // batch_size + 1
        for lane in range(t, lanes, nthreads):  # 1. the lanes' partial sums
            lo, hi = columns(n_in, lanes, lane)
            gather_columns(batches, start, m, XP[lane], lo, hi, spans[lane], rows, t,
                           min(k, start + batch_size), min(k, start + 2 * batch_size))
            _blocked_forward(XP[lane], m, WP[lane].reshape((n1, C)), zeros, part[lane],
                             spans[lane, : (m + 3) // 4])
        barrier(sync, nthreads)
        for lane in range(t, lanes, nthreads):  # 2. the layers above, by samples
            s_lo, s_hi = (m * lane) // lanes, (m * (lane + 1)) // lanes
            for f in range(s_lo, s_hi, TILE):
                _layers_above(net, aoff, buf, part, f, min(TILE, s_hi - f), batches,
                              start + f, dt(1) / dt(m), stats[STATS_PAD * lane], D,
                              grads[lane], f > s_lo, spans[lane, :0], narrow, wide)
            if s_lo == s_hi:  # no samples: nothing to add
                grads[lane, above:] = 0
        barrier(sync, nthreads)
        if t == 0:  # their update (and b0's), the lanes' gradients added in lane order
            sum_and_apply(net.theta, grads, above, P, lr, opt, step)
        for lane in range(t, lanes, nthreads):  # 3. the lanes' columns of W0
            _grad_rows(_rows(D, 0, 0, 0, m, n1), XP[lane], m, GP[lane].reshape((n1, C)),
                       junk_b[t], 0, n1, np.bool_(False),
                       spans[lane, : (m + 3) // 4])
            apply_rule(WP[lane], GP[lane], np.int64(0), n1 * C, lr,
                       OptState(opt.kind, opt.hyper, SP[lane], opt.step), step)
    _panels(net, opt, WP, SP, lanes, nthreads, t, np.bool_(False))


train_epoch_split.jitted = _epoch_thread  # what compiles (numba_epoch._compiled)
