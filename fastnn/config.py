"""Numba settings in one place: every @njit in fastnn takes its flags from here.

Importing this module before numba also points Numba's on-disk cache at a
writable directory when the installed package directory is read-only
(site-packages owned by another user, a read-only container image, ...).
"""

import os
import sys
import tempfile
from pathlib import Path

from fastnn.files import user_cache_dir

PACKAGE_DIR = Path(__file__).resolve().parent


def _ensure_writable_cache() -> None:
    """Set NUMBA_CACHE_DIR when the package dir cannot hold __pycache__ files."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    if os.access(PACKAGE_DIR / "kernels", os.W_OK):
        return
    fallback = Path(tempfile.gettempdir()) / "fastnn-numba-cache"
    for candidate in (user_cache_dir() / "numba", fallback):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = str(candidate)
            return


_ensure_writable_cache()

# The samples strategy runs a whole epoch in one parallel region whose threads wait
# for each other at a barrier (kernels/numba_intrinsics.barrier): every iteration of
# its prange must run at the same time. Numba's omp and workqueue layers give each
# thread one iteration; TBB's work stealing may run two on one thread, which would
# wait forever. Unless the user chose otherwise, TBB comes last (Numba wants all
# three named; workqueue is always there), and numba_epoch runs that strategy on one
# thread if TBB is chosen anyway.
THREADING_LAYERS = "omp workqueue tbb"
if "NUMBA_THREADING_LAYER" not in os.environ:
    os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", THREADING_LAYERS)


def _full_width_vectors() -> None:
    """Let LLVM vectorise with 512-bit registers on an AVX-512 CPU.

    Numba compiles for the host CPU, and LLVM's tuning for Intel's AVX-512 cores
    (Skylake-X and later: "rocketlake", "sapphirerapids", ...) prefers 256-bit
    vectors, so fastnn's loops used half of each register (ymm, no zmm, in
    inspect_asm). Switching that preference off (-prefer-256-bit) gave, on a 2-core
    Intel Xeon, 2 threads, full epochs, best of five: 784-128-10 at batch 128 0.53M
    samples/s against 0.44M, 784-10-10 at batch 32 2.03M against 1.93M, 784-800-10
    0.117M against 0.116M). CPUs without AVX-512 are left as they are (the flag only
    changes a preference), as are a NUMBA_CPU_FEATURES, NUMBA_CPU_NAME or
    NUMBA_ENABLE_AVX the user set. Numba reads the variable when it is imported and
    the features when it first compiles: imported before fastnn, it is told directly;
    compiling already, it keeps the host's features, and so do the processes this one
    starts (the variable says so), since a process and its children (the demo's
    server, say) must compute the same bits. Numba's cache tells code compiled with
    other features apart.
    """
    if any(os.environ.get(v) for v in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME",
                                       "NUMBA_ENABLE_AVX")):
        return
    import llvmlite.binding as ll

    try:
        features = ll.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell: Numba then compiles for a generic CPU
        return
    if "+avx512f" not in features.split(","):
        return
    registry = sys.modules.get("numba.core.registry")
    if registry is not None and "_toplevel_target_context" in vars(registry.cpu_target):
        os.environ["NUMBA_CPU_FEATURES"] = features  # compiling already (see above)
        return
    os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"
    if "numba" in sys.modules:  # imported: its settings are read
        sys.modules["numba"].config.CPU_FEATURES = os.environ["NUMBA_CPU_FEATURES"]


_full_width_vectors()

# Cache compiled machine code next to the package (or in the fallback above),
# so a second run starts in well under a second instead of recompiling.
CACHE = True

# Fast-math subset that lets LLVM reassociate and vectorise reductions and fuse
# multiply-adds. "nnan"/"ninf" are deliberately left out: with them LLVM may
# delete the NaN/inf checks the trainer relies on to stop a diverging run.
FASTMATH = {"nsz", "contract", "reassoc"}

# Flags for serial kernels and for kernels with prange loops.
JIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True)
JIT_PARALLEL = dict(JIT, parallel=True)
# The kernels' per-sample and per-tile functions: without reference counting. Numba
# counts references to every array a function takes or slices (an atomic add and a
# call at each end, kept by its pruning wherever a branch can raise), so a function
# that takes the epoch's eight arrays spent ~100 ns a call on it: 784-10-10 on 1
# thread, a tile's gather 267 -> 135 ns a sample, the first layer's products 204 ->
# 124. Such a function may neither allocate (Numba refuses to compile it) nor return
# an array (the caller would release a reference it was never given), and its callees
# inherit the setting. ``_nrt`` is Numba's own option (numba.core.options), no public
# name for it.
JIT_LEAF = dict(JIT, _nrt=False)
# Softmax and cross-entropy: no fast-math at all. Reassociation would turn
# lse - (z_y - max z) into (lse + max z) - z_y, which cancels catastrophically
# for a confident sample (a loss of 0.006 off by 2e-6 in float32). These
# loops are short, so exactness costs nothing measurable.
EXACT_MATH = dict(fastmath=False)  # also numba_intrinsics' @overload of exp_nonpositive
JIT_EXACT = dict(cache=CACHE, nogil=True, **EXACT_MATH)
JIT_EXACT_PARALLEL = dict(JIT_EXACT, parallel=True)
JIT_EXACT_LEAF = dict(JIT_EXACT, _nrt=False)


def set_threads(n: int | None) -> int:
    """Set Numba's thread count (None: leave it as it is); return the count in force."""
    import numba

    if n is not None:
        numba.set_num_threads(n)
    return numba.get_num_threads()


def max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS
