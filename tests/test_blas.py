"""fastnn.blas: which BLAS ran, with which kernel, and the forced-kernel warning.

OPENBLAS_CORETYPE is read by OpenBLAS when it loads, so the forced case
runs in a subprocess with the variable set there; this process's
environment (and CI's) is never changed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import blas

LIBRARIES = {"openblas", "mkl", "blis"}


def test_numpy_blas_is_reported():
    libs = blas.libraries()
    numpy_libs = [lib for lib in libs if lib["user"] == "numpy"]
    assert numpy_libs, f"NumPy's BLAS not found in {libs}"
    for lib in numpy_libs:
        assert lib["library"] in LIBRARIES
        assert lib["num_threads"] >= 1
        assert lib["version"]
        if lib["library"] == "openblas":  # OpenBLAS always names the kernel it picked
            assert lib["architecture"]
    assert "numpy: " in blas.summary(libs)


def test_warning_names_the_kernel_and_the_native_command():
    assert blas.forced_kernel_warning({}) is None
    assert blas.forced_kernel_warning({"OPENBLAS_NUM_THREADS": "1"}) is None
    libs = [dict(user="numpy", library="openblas", version="0.3.31", threading_layer="pthreads",
                 num_threads=2, architecture="Haswell", file="libopenblas.so")]
    text = blas.forced_kernel_warning({"OPENBLAS_L2_SIZE": "1048576"}, libs)
    assert "OPENBLAS_L2_SIZE=1048576" in text and "Haswell kernel" in text
    assert blas.NATIVE_COMMAND in text and "\n" not in text


def test_forced_haswell_kernel_is_reported_and_warned():
    if not any(lib["library"] == "openblas" for lib in blas.libraries()):
        pytest.skip("NumPy's BLAS is not OpenBLAS: OPENBLAS_CORETYPE does not apply")
    code = ("import json; from fastnn import blas; "
            "print(json.dumps([blas.libraries(), blas.forced_kernel_warning()]))")
    env = {k: v for k, v in os.environ.items() if k not in blas.FORCING_VARIABLES}
    reports = []
    for extra in ({"OPENBLAS_CORETYPE": "Haswell"}, {}):
        run = subprocess.run([sys.executable, "-c", code], env=dict(env, **extra),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        reports.append(json.loads(run.stdout.strip().splitlines()[-1]))
    (libs, warning), (_, unforced) = reports
    assert [lib["architecture"] for lib in libs if lib["library"] == "openblas"][0] == "Haswell"
    assert "OPENBLAS_CORETYPE=Haswell" in warning and "ran its Haswell kernel" in warning
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastnn.bench" in warning
    assert unforced is None


def test_sgemm_gflops_positive():
    rates = blas.sgemm_gflops(n=32, repeats=1)
    assert 1 in rates and all(r > 0 and np.isfinite(r) for r in rates.values())
