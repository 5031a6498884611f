"""Which BLAS the benchmarks ran on, whether its kernel was forced, and its sgemm ceiling.

The NumPy reference, numpy-fast and PyTorch spend most of their time in BLAS.
OpenBLAS picks a kernel for the CPU when it loads (threadpoolctl's
``architecture``: "Haswell", "SkylakeX", "Zen", ...) unless OPENBLAS_CORETYPE
forces one; forced to Haswell on an AVX-512 CPU, sgemm runs at about half its
speed. Needs threadpoolctl (test, bench and peers extras). Never imports torch:
torch's BLAS is reported when torch is already imported.
"""

from __future__ import annotations

import os
import sys
import timeit

import numpy as np

FORCING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
NATIVE_COMMAND = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastnn.bench"


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError as e:
        raise ImportError("fastnn.blas needs threadpoolctl: pip install threadpoolctl (it is in "
                          "fastnn's test, bench and peers extras)") from e
    return threadpoolctl


def _user(filepath):
    """Which package shipped a library file: numpy, scipy, torch, or other."""
    parts = os.path.normpath(filepath or "").split(os.sep)
    for package in ("numpy", "scipy", "torch"):
        if any(p == package or p.startswith(package + ".") for p in parts):
            return package
    return "other"


def _torch_static_blas():
    """torch's BLAS when torch is imported and links MKL statically into libtorch (its CPU
    wheels do), where threadpoolctl cannot see it; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.backends.mkl.is_available():
        return None
    config, marker = torch.__config__.show(), "Math Kernel Library Version "
    # "... Version 2024.2-Product Build 20240605 ..." -> "2024.2"
    version = config.split(marker, 1)[1].split()[0].split("-")[0] if marker in config else None
    parallel = torch.__config__.parallel_info()
    return dict(user="torch", library="mkl", version=version,
                threading_layer="openmp" if "parallel backend: OpenMP" in parallel else "native",
                num_threads=torch.get_num_threads(),
                # ATen's vector ISA; MKL picks its own kernel for the CPU
                architecture=torch.backends.cpu.get_cpu_capability(), file="libtorch (static)")


def libraries():
    """[{user, library, version, threading_layer, num_threads, architecture, file}] for
    every BLAS library loaded (NumPy's, and torch's once imported). library: "openblas",
    "mkl" or "blis"; architecture: the kernel OpenBLAS or BLIS runs (None for MKL as seen by
    threadpoolctl; for torch's static MKL, ATen's CPU capability, e.g. "AVX512")."""
    libs = [dict(user=_user(info.get("filepath")), library=info["internal_api"],
                 version=info.get("version"), threading_layer=info.get("threading_layer"),
                 num_threads=info.get("num_threads"), architecture=info.get("architecture"),
                 file=os.path.basename(info.get("filepath") or ""))
            for info in _threadpoolctl().threadpool_info() if info.get("user_api") == "blas"]
    torch_blas = _torch_static_blas()
    if torch_blas and not any(lib["user"] == "torch" for lib in libs):
        libs.append(torch_blas)
    return libs


def summary(libs=None) -> str:
    """One line: "numpy: openblas 0.3.31 (pthreads, 2 threads, SkylakeX kernel); ..."."""
    parts = []
    for lib in libraries() if libs is None else libs:
        details = [lib["threading_layer"], f"{lib['num_threads']} threads"]
        if lib["architecture"]:
            details.append(f"{lib['architecture']} kernel" if lib["library"] in ("openblas", "blis")
                           else f"CPU capability {lib['architecture']}")
        parts.append(f"{lib['user']}: {lib['library']} {lib['version'] or '(version unknown)'} "
                     f"({', '.join(d for d in details if d)})")
    return "; ".join(parts) or "no BLAS library loaded"


def _cpu_has_avx512():
    """True/False from /proc/cpuinfo's flags, None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(("avx512f" in line.split() for line in f if line.startswith("flags")),
                        None)
    except OSError:
        return None


def forced_kernel_warning(environ=None, libs=None) -> str | None:
    """A one-paragraph warning when OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set in
    ``environ`` (default os.environ), naming the kernel that ran; None otherwise."""
    environ = os.environ if environ is None else environ
    forced = [f"{k}={environ[k]}" for k in FORCING_VARIABLES if k in environ]
    if not forced:
        return None
    ran = ", ".join(f"{lib['user']}'s OpenBLAS {lib['version']} ran its "
                    f"{lib['architecture'] or 'unknown'} kernel"
                    for lib in (libraries() if libs is None else libs)
                    if lib["library"] == "openblas") or "no OpenBLAS is loaded"
    cpu = " (which has AVX-512)" if _cpu_has_avx512() else ""
    return (f"WARNING: {' and '.join(forced)} set in the environment: {ran}, not necessarily "
            f"the kernel OpenBLAS picks for this CPU{cpu}. These variables force a kernel (and "
            "cache size); an older one costs much of BLAS's speed (on an AVX-512 CPU, the "
            "Haswell kernel runs sgemm at about half the speed), and every BLAS product of "
            "this run (the NumPy reference, numpy-fast, any peer on OpenBLAS) ran on it. To "
            f"measure natively, rerun without them: {NATIVE_COMMAND}")


def sgemm_gflops(n=2048, repeats=3, seed=0):
    """{threads: GFLOP/s} of a float32 (n, n) @ (n, n) NumPy product at 1 thread and at all
    of BLAS's threads, best of ``repeats`` after one untimed call: the ceiling a report
    quotes next to its training figures."""
    threadpoolctl = _threadpoolctl()
    rng = np.random.default_rng(seed)
    A, B = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    C = np.empty((n, n), np.float32)
    counts = sorted({1, max([lib["num_threads"] or 1 for lib in libraries()
                             if lib["user"] == "numpy"] or [1])})
    rates = {}
    for threads in counts:
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(A, B, out=C)
            best = min(timeit.repeat(lambda: np.matmul(A, B, out=C), number=1, repeat=repeats))
        rates[threads] = 2.0 * n**3 / best / 1e9
    return rates
