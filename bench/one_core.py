"""Imported first by the single-core benchmarks: one thread per math library and the process pinned to one CPU,
set before numpy or torch load their thread pools, so a ratio measured in one run is not moved by them."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})
