"""A parallel region that calls a compiled kernel by its address: one compile, not three.

Numba compiles a prange's body as a function of its own, again in the wrapper it
puts around it, and again in the function that holds the prange, each time linking
in, optimising and generating machine code for everything the body calls. For
784-10-10's epoch (numba_split) that was 11.5 s of the 28.6 s its cold warmup took
on a 2-core Zen 4. ``on_threads(kernel, nthreads, *args)`` runs ``kernel(*args,
t)`` for t in range(nthreads) in a prange whose body only calls ``kernel``'s
compiled code through its address (``call_compiled``), so ``kernel`` and what it
calls compile once, on their own; the region itself is a few lines, compiled once
per argument types. The arguments are what a prange takes: arrays, scalars, None,
and named tuples of those, not a named tuple inside another (so the rows
strategy's work holds its ink lists' arrays side by side). The
threads are Numba's, as in any prange: every iteration runs at once on its own
thread under the omp and workqueue layers (what numba_intrinsics.barrier needs:
numba_epoch).

The address is read when the call is made, never compiled into the region
(Numba's cache keeps the region's code between processes, where the address
differs).
"""

import numba
import numpy as np
from numba import njit, prange, types
from numba._dispatcher import compute_fingerprint
from numba.extending import intrinsic

from fastnn import config


@intrinsic
def call_compiled(typingctx, fn, args, t):
    """Call the Numba-compiled function at address ``fn`` (int64) with ``*args, t``: it
    must have been compiled for exactly those argument types and return nothing
    (native_address). Its status is not looked at: the kernels raise nothing."""
    if not (isinstance(fn, types.Integer) and isinstance(args, types.BaseTuple)
            and isinstance(t, types.Integer)):
        return None
    argtys = [*args.types, t]

    def codegen(context, builder, sig, llargs):
        fnty = context.call_conv.get_function_type(types.none, argtys)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        values = [builder.extract_value(llargs[1], i) for i in range(len(args.types))]
        context.call_conv.call_function(builder, callee, types.none, argtys,
                                        [*values, llargs[2]])
        return context.get_dummy_value()

    return types.none(fn, args, t), codegen


# One region per number of arguments: the tuple is built inside the prange's body (a
# tuple of named tuples cannot enter a prange); prange's index is unsigned: int64 here


@njit(**config.JIT_PARALLEL)
def _region5(fn, nthreads, a0, a1, a2, a3, a4):
    for t in prange(nthreads):
        call_compiled(fn, (a0, a1, a2, a3, a4), np.int64(t))


@njit(**config.JIT_PARALLEL)
def _region6(fn, nthreads, a0, a1, a2, a3, a4, a5):
    for t in prange(nthreads):
        call_compiled(fn, (a0, a1, a2, a3, a4, a5), np.int64(t))


_REGIONS = {5: _region5, 6: _region6}


_addresses = {}  # (kernel, the arguments' fingerprints) -> address of its compiled code


def native_address(kernel, args):
    """The address of ``kernel``'s compiled code for ``args`` (compiled, or loaded from
    Numba's cache, first if need be). Looked up by the fingerprints Numba's dispatcher
    keys its own types on (about a microsecond an argument, where numba.typeof takes
    50-100 us for one of the kernels' named tuples: 0.3 ms a call)."""
    try:
        key = (kernel, tuple(compute_fingerprint(a) for a in args))
    except NotImplementedError:  # a value Numba has no fingerprint for: by its type
        key = (kernel, tuple(numba.typeof(a) for a in args))
    if key not in _addresses:
        sig = tuple(numba.typeof(a) for a in args)
        if sig not in kernel.overloads:
            kernel.compile(sig)
        cres = kernel.overloads[sig]
        if cres.signature.return_type != types.none:
            raise TypeError(f"{kernel.py_func.__name__} must return nothing, it returns "
                            f"{cres.signature.return_type}")
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not address:
            raise RuntimeError(f"no compiled code for {kernel.py_func.__name__}{sig}")
        _addresses[key] = address
    return _addresses[key]


def on_threads(kernel, nthreads, *args):
    """kernel(*args, t) for t in range(nthreads), each t on a thread of its own, all at
    once (kernel: a Numba dispatcher returning nothing). Without the JIT, one t after the
    other (a kernel with a barrier then runs on 1 thread: numba_epoch)."""
    if numba.config.DISABLE_JIT:
        for t in range(nthreads):
            kernel(*args, t)
        return
    if len(args) not in _REGIONS:
        raise TypeError(f"on_threads runs kernels of {' or '.join(map(str, _REGIONS))} "
                        f"arguments besides t, got {len(args)}")
    _REGIONS[len(args)](native_address(kernel, (*args, 0)), nthreads, *args)
