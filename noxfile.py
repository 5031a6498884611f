"""Developer sessions. `nox` alone runs the test suite twice: JIT on, then JIT off.

    nox                  tests + nojit (what CI runs)
    nox -- -m "not slow" the same without the tests that train on real MNIST for seconds
    nox -s tests         the full pytest suite, JIT enabled, benchmarks run once untimed
    nox -s nojit         agreement, distortion and inked-layer tests on small shapes with
                         NUMBA_DISABLE_JIT=1, so the loop bodies are also checked as plain Python
    nox -s avx2          the tests as an AVX2 CPU runs them, on an AVX-512 one
    nox -s lint          ruff
    nox -s bench         python -m fastnn.bench with the peers installed (the report)
    nox -s asv           asv quick run + HTML report in benchmarks/html (`nox -s asv -- full`)
"""

import os

import nox

nox.options.sessions = ["tests", "nojit"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session):
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


def _run_nojit(session, **env):
    """The agreement and distortion tests on small shapes, without the JIT."""
    session.run("pytest", "tests/test_agreement.py", "tests/test_distort.py",
                "tests/test_numba_inked.py", "-q",
                *session.posargs, env=dict(env, NUMBA_DISABLE_JIT="1", FASTNN_SMALL="1"))


@nox.session
def nojit(session):
    session.install("-e", ".[test]")
    _run_nojit(session)


# Haswell: AVX2 and FMA, no AVX-512. Numba needs the features too: with the CPU name
# alone it keeps the host's (AVX-512 code).
HASWELL = "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+lzcnt,+movbe,+cx16,+xsave,-avx512f"


@nox.session
def avx2(session):
    """The suite (and nojit's) as on an AVX2 CPU, run on an AVX-512 one: Numba compiles
    for Haswell into its own cache, NumPy's SIMD dispatch stops at AVX2 (X86_V3).
    OpenBLAS keeps the machine's kernel: OPENBLAS_CORETYPE is never set here."""
    session.install("-e", ".[test]")
    env = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL,
           # absolute: tests run the CLI in temporary working directories, which must
           # stay empty
           "NUMBA_CACHE_DIR": os.path.abspath(session.create_tmp()) + "/numba-haswell",
           "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL"}
    session.run("python", "-c", "import numpy; numpy.show_runtime()", env=env)
    session.run("pytest", *session.posargs, env=env)
    _run_nojit(session, **env)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "fastnn", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session):
    """The benchmark report (python -m fastnn.bench, every backend and peer; arguments
    after -- go to it, e.g. `nox -s bench -- --hidden 800 --json out.json`), then the
    demo's round trip."""
    session.install("-e", ".[test,bench,peers]")
    session.run("python", "-m", "fastnn.bench", *session.posargs)
    session.run("pytest", "tests/test_bench_demo.py", "--benchmark-enable")


@nox.session
def asv(session):
    """asv quick run of the short grid, HTML in benchmarks/html; `nox -s asv -- full`:
    the full grid (FASTNN_BENCH_GRID=full), properly timed (no --quick): long."""
    session.install("-e", ".[bench]")
    full = "full" in session.posargs
    env = {"FASTNN_BENCH_GRID": "full" if full else "short"}
    # --python=same benchmarks the working tree installed above; asv saves such
    # results (which publish needs) only under an explicit commit hash.
    commit = session.run("git", "rev-parse", "HEAD", external=True, silent=True).strip()
    session.chdir("benchmarks")
    session.run("asv", "machine", "--yes")
    session.run("asv", "check", "--python=same", env=env)
    session.run("asv", "run", "--python=same", *([] if full else ["--quick"]),
                f"--set-commit-hash={commit}", env=env)
    session.run("asv", "publish")
