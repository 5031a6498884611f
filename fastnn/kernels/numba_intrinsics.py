"""Low-level pieces the kernels are built from: a vectorisable exp, prefetch, paired
copies, block transposes, a sparse-times-dense row sum, a dense block of row sums, a
row's nonzeros eight at a time, and a barrier.

``exp_nonpositive(t)``: exp(t) for t <= 0 as plain float32 arithmetic, so a
loop over classes vectorises.

np.exp inside a Numba loop is a call into libm for every element: the
softmax of a 10-class tile spent more cycles there than the 784x10 hidden
layer's backward pass. For float32, ``exp_nonpositive`` is the Cephes expf
method: t = n ln2 + r with |r| <= ln2 / 2, exp(r) from a degree-7 polynomial,
2^n put straight into the exponent bits. Error below 1 ulp (checked over the
whole range in tests/test_numba_intrinsics.py); results under the smallest normal
float32 (t <= -87) flush to zero. Measured: 0.8 ns per element in a loop,
against 3.4-5.7 ns for np.exp. float64 stays np.exp: with AVX2 the
double <-> int64 steps do not vectorise, so nothing would be gained.

Without the JIT (NUMBA_DISABLE_JIT=1) it is np.exp.

``prefetch(arr, i)``: a hint to start loading arr[i]'s cache line (LLVM's
prefetch intrinsic); nothing without the JIT.

``copy_pair(dst, i, src, j)``: dst[i : i + 2] = src[j : j + 2] in one load and
one store; the distortion's bilinear reads (numba_distort) take their four
neighbours as two such pairs (with the vectorised mix after them, ~2x faster
than four scalar reads and the mix in one loop).

``transpose16(src, i, sstride, dst, j, dstride, rows)``: a 16x16 block transposed in
vector registers; the distortion's 28x28 field transposes, 4x faster than
scalar moves (0.06 against 0.23 us a field in float32).

``row_combination(acc, a, rows, r0, stride, idx, vals, lo, hi)``: acc's next
256 bytes plus the rows ``idx[k]`` of a matrix weighted by ``vals[k]``, the
sums held in four vector registers across the loop (numba_inked's first
layer from inked pixels: forward and weight gradient).

``madd_rows(out, r, nr, c, coef, cr, cc, er, ec, dr, dc, src, s0, n)``: nr rows of a
block of columns plus a small dense matrix times a block of rows, the sums held in nr
vector registers (numba_narrow's layers, the samples along the rows).

``ink_chunks(x, idx, vals)``: the nonzeros of a float32 row and their
positions, eight elements at a time: a compare gives a bit mask, a 256-row
table the positions of its set bits, and one AVX2 permutation packs the
values (numba_inked.ink_list: 135 ns a 784-pixel MNIST row on Zen 4 against
440 for a branch-free scalar loop). Without AVX2 or the JIT it does nothing
and ink_list's scalar loop does it all.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastnn import config
from fastnn.kernels import stale_cache

stale_cache.check()  # before any cached kernel is loaded

# Cody-Waite split of ln 2: n * LN2_HI is exact for the n that occur
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the int32 ``bits``."""
    if bits != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def exp_nonpositive(t):
    """exp(t) for t <= 0 (NaN stays NaN, -inf gives 0)."""
    return np.exp(t)


@overload(exp_nonpositive, jit_options=config.EXACT_MATH)
def _exp_nonpositive(t):
    if t == types.float32:

        def exp32(t):
            tc = np.float32(-87.0) if t < np.float32(-87.0) else t  # NaN stays NaN
            n = np.floor(tc * np.float32(_LOG2E) + np.float32(0.5))
            r = tc - n * np.float32(_LN2_HI) - n * np.float32(_LN2_LO)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            e = p * r * r + r + np.float32(1.0)
            n = n if n >= np.float32(-126.0) else np.float32(-126.0)  # NaN: a safe int
            scale = _float32_from_bits(np.int32((np.int32(n) + np.int32(127)) << 23))
            # below -87, 2^n is no normal float32: flush to 0 (so -inf gives 0)
            return np.float32(0.0) if t <= np.float32(-87.0) else e * scale

        return exp32
    if t == types.float64:  # libm: as fast here (no AVX2 double<->int64 vector ops)

        def exp64(t):
            return np.exp(t)

        return exp64
    return None


def _element_pointer(context, builder, sig, args, k=0):
    # the pointer to element args[k + 1] of the 1-D array args[k] (of type sig.args[k])
    aryty = sig.args[k]
    ary = context.make_array(aryty)(context, builder, args[k])
    i = context.cast(builder, args[k + 1], sig.args[k + 1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)


@intrinsic
def prefetch(typingctx, arr, i):
    """prefetch(arr, i): ask the CPU to start loading arr[i]'s cache line (1-D arr)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, i), codegen


def _vectors_of_one_dtype(*arrays):
    # the Numba types of 1-D C-contiguous arrays, all of one dtype?
    return (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                for a in arrays)
            and len({a.dtype for a in arrays}) == 1)


@intrinsic
def copy_pair(typingctx, dst, i, src, j):
    """dst[i : i + 2] = src[j : j + 2] as one load and one store (1-D contiguous arrays of
    one dtype): two neighbouring values read by one instruction where two scalar loads
    would each take an issue slot."""
    if not (_vectors_of_one_dtype(dst, src)
            and all(isinstance(n, types.Integer) for n in (i, j))):
        return None

    def codegen(context, builder, sig, args):
        item = context.get_data_type(sig.args[0].dtype)
        pair = ir.VectorType(item, 2).as_pointer()
        align = context.get_abi_sizeof(item)  # only the item's own alignment is known
        to, frm = (_element_pointer(context, builder, sig, args, k) for k in (0, 2))
        value = builder.load(builder.bitcast(frm, pair), align=align)
        builder.store(value, builder.bitcast(to, pair), align=align)
        return context.get_dummy_value()

    return types.void(dst, i, src, j), codegen


@intrinsic
def transpose16(typingctx, src, i, sstride, dst, j, dstride, rows):
    """dst[j + dstride c + r] = src[i + sstride r + c] for r, c < 16, storing dst rows
    c < rows only: a 16x16 block (rows sstride apart) transposed in registers (16
    vector loads, 64 shuffles, up to 16 vector stores; rows dstride apart) instead of
    256 scalar moves. 1-D contiguous arrays of one dtype; all 16 source rows are read."""
    if not (_vectors_of_one_dtype(src, dst)
            and all(isinstance(n, types.Integer) for n in (i, sstride, j, dstride, rows))):
        return None

    def codegen(context, builder, sig, args):
        item = context.get_data_type(sig.args[0].dtype)
        vec = ir.VectorType(item, 16)
        align = context.get_abi_sizeof(item)
        sstep, dstep = (context.cast(builder, args[k], sig.args[k], types.intp)
                        for k in (2, 5))

        def row(ptr, step, k):  # a pointer to the 16 values k rows (of step) after ptr
            offset = builder.mul(step, ir.Constant(step.type, k))
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        frm, to = (_element_pointer(context, builder, sig, args, k) for k in (0, 3))
        r = [builder.load(row(frm, sstep, k), align=align) for k in range(16)]
        # swap bit b of the row and column indices, for b = 1, 2, 4, 8: rows k and
        # k + b (bit b of k clear) trade their elements whose column has bit b set
        # for the other's with it clear
        i32x16 = ir.VectorType(ir.IntType(32), 16)
        for b in (1, 2, 4, 8):
            low = ir.Constant(i32x16, [c if c & b == 0 else 16 + c - b for c in range(16)])
            high = ir.Constant(i32x16, [c + b if c & b == 0 else 16 + c for c in range(16)])
            for k in range(16):
                if k & b == 0:
                    r[k], r[k + b] = (builder.shuffle_vector(r[k], r[k + b], low),
                                      builder.shuffle_vector(r[k], r[k + b], high))
        n = context.cast(builder, args[6], sig.args[6], types.intp)
        for k in range(16):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(n.type, k), n),
                                 likely=True):
                builder.store(r[k], row(to, dstep, k), align=align)
        return context.get_dummy_value()

    return types.void(src, i, sstride, dst, j, dstride, rows), codegen


# row_combination's accumulator: this many bytes (four 64-byte vectors: 64 float32 or 32
# float64; eight registers on AVX2), enough independent sums for both FMA pipes
COMBINATION_BYTES = 256


def combination_width(dtype):
    """The elements row_combination adds up at once for this dtype."""
    return COMBINATION_BYTES // np.dtype(dtype).itemsize


@intrinsic
def row_combination(typingctx, acc, a, rows, r0, stride, idx, vals, lo, hi):
    """acc[a : a + V] += sum of vals[k] * rows[r0 + idx[k] stride : ... + V] for k in
    [lo, hi), k in order, V = combination_width(dtype): a sparse vector times a dense
    matrix, V columns at a time, the V sums held in vector registers across the k loop
    (a Numba loop keeps them in memory: a load and a store per multiply-add). acc, rows,
    vals: 1-D contiguous arrays of one float dtype; idx: 1-D int32."""
    if not (_vectors_of_one_dtype(acc, rows, vals) and isinstance(acc.dtype, types.Float)
            and isinstance(idx, types.Array) and idx.ndim == 1 and idx.dtype == types.int32
            and all(isinstance(n, types.Integer) for n in (a, r0, stride, lo, hi))):
        return None

    def codegen(context, builder, sig, args):
        item = context.get_data_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(item)
        lanes = 64 // size
        vec = ir.VectorType(item, lanes)
        intp = context.get_value_type(types.intp)
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3),
            f"llvm.fmuladd.v{lanes}f{8 * size}")

        def vectors(ptr):  # pointers to the four vectors from ptr on
            return [builder.bitcast(builder.gep(ptr, [ir.Constant(intp, lanes * j)]),
                                    vec.as_pointer()) for j in range(4)]

        def cast(n):
            return context.cast(builder, args[n], sig.args[n], types.intp)

        out = vectors(_element_pointer(context, builder, sig, args, 0))
        sums = [cgutils.alloca_once(builder, vec) for _ in range(4)]  # registers after mem2reg
        for s, p in zip(sums, out):
            builder.store(builder.load(p, align=size), s)
        base = _element_pointer(context, builder, sig, args, 2)
        stride, lo, hi = cast(4), cast(7), cast(8)
        iarr = context.make_array(sig.args[5])(context, builder, args[5])
        varr = context.make_array(sig.args[6])(context, builder, args[6])
        with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
            k = builder.add(lo, loop.index)
            i = builder.sext(builder.load(builder.gep(iarr.data, [k])), intp)
            v = builder.load(builder.gep(varr.data, [k]))
            splat = builder.insert_element(ir.Constant(vec, ir.Undefined), v,
                                           ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(
                ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            row = vectors(builder.gep(base, [builder.mul(i, stride)]))
            for s, p in zip(sums, row):
                builder.store(builder.call(fmuladd, [splat, builder.load(p, align=size),
                                                     builder.load(s)]), s)
        for s, p in zip(sums, out):
            builder.store(builder.load(s), p, align=size)
        return context.get_dummy_value()

    return types.void(acc, a, rows, r0, stride, idx, vals, lo, hi), codegen


# madd_rows' block: one 64-byte vector (16 float32, 8 float64; two registers on AVX2)
MADD_BYTES = 64


def madd_width(dtype):
    """The elements madd_rows adds up at once for this dtype."""
    return MADD_BYTES // np.dtype(dtype).itemsize


@intrinsic(prefer_literal=True)
def madd_rows(typingctx, out, r, nr, c, coef, cr, cc, er, ec, dr, dc, src, s0, n):
    """out[r + j, c : c + V] += sum of coef[cr + j er + k dr, cc + j ec + k dc] *
    src[s0 + k, c : c + V] for j < nr (a literal: 1 to 8 rows) and k < n, k in order, V
    = madd_width(dtype): a small dense matrix times a block of columns, the nr V sums
    held in registers across the k loop, each row of src loaded once for all nr rows.
    numba_narrow's layers (the samples along the rows): a Numba loop over the columns
    keeps its sums in memory, and LLVM vectorises it for 64 columns at a time, so a tile
    of 16 samples ran on its 8-wide remainder loop; one row at a time, the sums wait for
    each other's multiply-adds (784-10-10's forward of 16 samples: 282 ns, one row at a
    time 119, four 79-103). 2-D float arrays of one dtype, each holding columns c..c+V."""
    arrays = (out, coef, src)
    if not (all(isinstance(a, types.Array) and a.ndim == 2 for a in arrays)
            and len({a.dtype for a in arrays}) == 1 and isinstance(out.dtype, types.Float)
            and isinstance(nr, types.IntegerLiteral) and 1 <= nr.literal_value <= 8
            and all(isinstance(x, types.Integer) for x in (r, c, cr, cc, er, ec, dr, dc, s0,
                                                          n))):
        return None
    rows = nr.literal_value

    def codegen(context, builder, sig, args):
        item = context.get_data_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(item)
        lanes = MADD_BYTES // size
        vec = ir.VectorType(item, lanes)
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3),
            f"llvm.fmuladd.v{lanes}f{8 * size}")
        ro, co, cr_, cc_, er_, ec_, dr_, dc_, s0_, n_ = (
            context.cast(builder, args[k], sig.args[k], types.intp)
            for k in (1, 3, 5, 6, 7, 8, 9, 10, 12, 13))
        ary = {k: context.make_array(sig.args[k])(context, builder, args[k]) for k in (0, 4, 11)}
        intp = ro.type

        def at(k, i, j):  # a pointer to element (i, j) of array argument k
            return cgutils.get_item_pointer(context, builder, sig.args[k], ary[k], [i, j],
                                            wraparound=False)

        dst = [builder.bitcast(at(0, builder.add(ro, ir.Constant(intp, j)), co),
                               vec.as_pointer()) for j in range(rows)]
        acc = [cgutils.alloca_once(builder, vec) for _ in range(rows)]  # registers
        for a, d in zip(acc, dst):
            builder.store(builder.load(d, align=size), a)
        with cgutils.for_range(builder, n_) as loop:
            k = loop.index
            x = builder.load(builder.bitcast(at(11, builder.add(s0_, k), co),
                                             vec.as_pointer()), align=size)
            i0 = builder.add(cr_, builder.mul(k, dr_))
            j0 = builder.add(cc_, builder.mul(k, dc_))
            for j, a in enumerate(acc):
                jj = ir.Constant(intp, j)
                w = builder.load(at(4, builder.add(i0, builder.mul(jj, er_)),
                                    builder.add(j0, builder.mul(jj, ec_))))
                splat = builder.insert_element(ir.Constant(vec, ir.Undefined), w,
                                               ir.Constant(ir.IntType(32), 0))
                splat = builder.shuffle_vector(splat, splat, ir.Constant(
                    ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
                builder.store(builder.call(fmuladd, [x, splat, builder.load(a)]), a)
        for a, d in zip(acc, dst):
            builder.store(builder.load(a), d, align=size)
        return context.get_dummy_value()

    return types.void(out, r, nr, c, coef, cr, cc, er, ec, dr, dc, src, s0, n), codegen


def _target_features():
    # the CPU features Numba compiles for: NUMBA_CPU_FEATURES, else the host's (Numba's
    # own choice in numba.core.codegen)
    from numba.core.codegen import get_host_cpu_features

    features = numba.config.CPU_FEATURES
    return (get_host_cpu_features() if features is None else features).split(",")


# ink_chunks' 8-lane permutations need AVX2 (AVX-512 machines have it too) and the JIT
PERMUTE8 = not numba.config.DISABLE_JIT and "+avx2" in _target_features()
# row m: the positions of the set bits of m in order, then zeros
_FIRST_SET_BITS = np.array([[j for j in range(8) if m >> j & 1] + [0] * (8 - m.bit_count())
                            for m in range(256)], np.int32)


@intrinsic
def _append_nonzero8(typingctx, x, p, idx, vals, n):
    """Appends the nonzeros among x[p : p + 8] to vals[n:], their positions to idx[n:], in
    order; returns n plus their count. One compare, a table row (_FIRST_SET_BITS) and one
    permutation (AVX2 vpermps), where a scalar loop takes a compare-and-store a pixel. Writes
    all 8 lanes of idx[n : n + 8] and vals[n : n + 8] (past the count: scratch)."""
    if not (_vectors_of_one_dtype(x, vals) and x.dtype == types.float32
            and _vectors_of_one_dtype(idx) and idx.dtype == types.int32
            and all(isinstance(k, types.Integer) for k in (p, n))):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        f8, i8 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(i32, 8)
        module = builder.module
        table = module.globals.get("fastnn_first_set_bits")
        if table is None:
            rows = ir.ArrayType(i8, 256)
            table = ir.GlobalVariable(module, rows, "fastnn_first_set_bits")
            table.global_constant, table.linkage, table.align = True, "internal", 32
            table.initializer = ir.Constant(rows, [ir.Constant(i8, [int(v) for v in row])
                                                   for row in _FIRST_SET_BITS])

        p, n = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 4))

        def lanes(k, i, vec):  # a pointer to the 8 lanes from element i of array args[k]
            array = context.make_array(sig.args[k])(context, builder, args[k])
            return builder.bitcast(cgutils.get_item_pointer(
                context, builder, sig.args[k], array, [i], wraparound=False), vec.as_pointer())

        v = builder.load(lanes(0, p, f8), align=4)
        # Python's x != 0: NaN counts, -0.0 does not
        bits = builder.zext(builder.bitcast(builder.fcmp_unordered(
            "!=", v, ir.Constant(f8, [0.0] * 8)), ir.IntType(8)), i32)
        order = builder.load(builder.gep(table, [ir.Constant(i32, 0), bits]), align=32)
        permps = cgutils.get_or_insert_function(module, ir.FunctionType(f8, [f8, i8]),
                                                "llvm.x86.avx2.permps")
        first = builder.shuffle_vector(
            builder.insert_element(ir.Constant(i8, ir.Undefined), builder.trunc(p, i32),
                                   ir.Constant(i32, 0)),
            ir.Constant(i8, ir.Undefined), ir.Constant(i8, [0] * 8))
        builder.store(builder.call(permps, [v, order]), lanes(3, n, f8), align=4)
        builder.store(builder.add(first, order), lanes(2, n, i8), align=4)
        ctpop = cgutils.get_or_insert_function(module, ir.FunctionType(i32, [i32]),
                                               "llvm.ctpop.i32")
        count = builder.zext(builder.call(ctpop, [bits]), ir.IntType(64))
        return builder.add(context.cast(builder, args[4], sig.args[4], types.int64), count)

    return types.int64(x, p, idx, vals, n), codegen


def ink_chunks(x, idx, vals):
    """(n, end): x[:end]'s nonzeros (NaN counts, -0.0 does not) in order in vals[:n],
    their positions in idx[:n] (int32), end a multiple of 8; the rest of x is the
    caller's. With AVX2, float32 and contiguous arrays, 8 elements at a time
    (_append_nonzero8); otherwise none (end 0)."""
    return 0, 0


@overload(ink_chunks, jit_options=config.JIT)
def _ink_chunks(x, idx, vals):
    if not (PERMUTE8 and isinstance(x, types.Array) and x.dtype == types.float32
            and _vectors_of_one_dtype(x, vals) and _vectors_of_one_dtype(idx)
            and idx.dtype == types.int32):
        return lambda x, idx, vals: (0, 0)

    def chunks(x, idx, vals):
        end = x.shape[0] // 8 * 8
        # the 8 lanes written at n <= p stay below p + 8 <= end: in bounds if idx and vals
        # are as long as x
        if idx.shape[0] < end or vals.shape[0] < end:
            raise ValueError("ink_chunks: idx and vals must be as long as x")
        n = 0
        for p in range(0, end, 8):
            n = _append_nonzero8(x, p, idx, vals, n)
        return n, end

    return chunks


if numba.config.DISABLE_JIT:  # plain Python (the nojit test session): no hint, plain copy

    def prefetch(arr, i):  # noqa: F811
        pass

    def copy_pair(dst, i, src, j):  # noqa: F811
        dst[i : i + 2] = src[j : j + 2]

    def transpose16(src, i, sstride, dst, j, dstride, rows):  # noqa: F811
        for c in range(rows):
            for r in range(16):
                dst[j + dstride * c + r] = src[i + sstride * r + c]

    def row_combination(acc, a, rows, r0, stride, idx, vals, lo, hi):  # noqa: F811
        width = combination_width(acc.dtype)
        for k in range(lo, hi):
            start = r0 + int(idx[k]) * stride
            acc[a : a + width] += vals[k] * rows[start : start + width]

    def madd_rows(out, r, nr, c, coef, cr, cc, er, ec, dr, dc, src, s0, n):  # noqa: F811
        width = madd_width(out.dtype)
        for j in range(nr):
            for k in range(n):
                w = coef[cr + j * er + k * dr, cc + j * ec + k * dc]
                out[r + j, c : c + width] += w * src[s0 + k, c : c + width]


# ---------------------------------------------------------------- threads meeting in a loop
#
# A barrier between the threads of one prange, so that a whole epoch can run in one
# parallel region (the threads meet twice a batch) instead of one fork and join per
# batch. ``sync`` is an int64 array of at least 2 * SYNC_PAD slots shared by the
# threads: the arrival count at 0 and the generation at SYNC_PAD, a cache line apart.


@intrinsic
def atomic_add(typingctx, arr, i, value):
    """arr[i] += value atomically (sequentially consistent); returns the old arr[i]."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, value, "seq_cst")

    return types.int64(arr, i, value), codegen


@intrinsic
def atomic_load(typingctx, arr, i):
    """arr[i], read atomically with acquire ordering (int64 1-D arr)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_element_pointer(context, builder, sig, args), "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def atomic_store(typingctx, arr, i, value):
    """arr[i] = value, written atomically with release ordering (int64 1-D arr)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, _element_pointer(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()

    return types.void(arr, i, value), codegen


@intrinsic
def cpu_relax(typingctx):
    """The x86 PAUSE hint inside a spin loop (frees the core's other thread, saves power)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def yield_cpu(typingctx):
    """sched_yield(): let the OS run another thread here (one of ours that fell behind)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


SYNC_PAD = 8  # int64 slots per cache line
# Busy-wait this many rounds (a few microseconds) before yielding the core: a batch of
# a small net takes tens of microseconds, so the others normally arrive while we spin;
# when one of our threads was descheduled (another process on its core), yielding lets
# it run instead of burning the time it needs.
SPINS = 2000


@njit(**config.JIT_LEAF)
def barrier(sync, nthreads):
    # sync: (>= 2 * SYNC_PAD,) int64 shared by the nthreads threads of one prange; returns
    # once all of them have called it (the count resets for the next barrier)
    if nthreads == 1:
        return
    generation = atomic_load(sync, SYNC_PAD)
    if atomic_add(sync, 0, 1) == nthreads - 1:  # the last to arrive releases the others
        atomic_store(sync, 0, 0)
        atomic_add(sync, SYNC_PAD, 1)
        return
    spins = 0
    while atomic_load(sync, SYNC_PAD) == generation:
        cpu_relax()
        spins += 1
        if spins >= SPINS:
            yield_cpu()
            spins = 0


if numba.config.DISABLE_JIT:  # plain Python: one thread, nothing to wait for

    def barrier(sync, nthreads):  # noqa: F811
        pass
