"""pytest plugin of `python -m fastnn.bench`: what the report says about the machine.

pytest-benchmark records the CPU (py-cpuinfo), Python and the commit; this
adds what a fastnn figure also depends on: the vector ISA, the BLAS library
and the kernel it ran (a forced one is warned about), the machine's sgemm
GFLOP/s at 1 and all threads (the ceiling beside the training figures) and
the versions of numba and of every peer that ran.
"""

import datetime

import numpy as np


def isa(flags):
    """The widest x86 vector extension among a CPU's flags."""
    for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx")):
        if flag in flags:
            return name
    return "SSE or other"


def pytest_benchmark_update_machine_info(config, machine_info):
    import numba

    from fastnn import blas, peers
    from fastnn.bench.suite import SETTINGS, THREADS

    cpu = machine_info.get("cpu", {})
    versions = {"numpy": np.__version__, "numba": numba.__version__}
    for name in SETTINGS["names"]:
        if name in peers.PEERS and not peers.available([name])[name]:
            versions[name] = peers.get_peer(name).version()
    warning = blas.forced_kernel_warning()
    gflops = blas.sgemm_gflops()
    machine_info.update(
        isa=isa(cpu.get("flags", [])), blas=blas.libraries(), blas_warning=warning,
        sgemm_gflops={str(k): v for k, v in gflops.items()}, versions=versions,
        threads=THREADS, date=datetime.datetime.now().astimezone().isoformat(timespec="minutes"))
    lines = [f"Machine: {cpu.get('brand_raw', machine_info.get('processor'))} (family "
             f"{cpu.get('family')}, model {cpu.get('model')}; {machine_info['isa']}), "
             f"{cpu.get('count')} cores, {machine_info['system']} {machine_info['machine']}, "
             f"Python {machine_info['python_version']}, "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {machine_info['date']}",
             f"BLAS: {blas.summary()}.",
             "sgemm ceiling: " + ", ".join(f"{v:.0f} GFLOP/s on {k} thread{'s' * (k > 1)}"
                                           for k, v in gflops.items()) + "."]
    machine_info["fastnn_lines"] = lines + ([warning] if warning else [])
