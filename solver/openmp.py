"""How the OpenMP runtimes this package loads (pyFFTW's bundled one, numba's pool) wait between parallel regions.

By default GNU OpenMP's idle threads spin for about 3 ms after each region (Intel's for 200 ms) before they sleep.
An ADMM iteration alternates between the two runtimes (FFTW's threads, then a numba pass, then FFTW again), so
each one's spinning threads took the cores the other's threads needed: on a 2-core VM, encoding one image 128²
with 16 filters made every transform take the time of a one-thread transform. Sleeping at once (passive) costs a
wake-up per region instead, tens of microseconds on a VM, where a transform of that size takes about 300. So a
runtime loaded here waits passively after a short spin: ``GOMP_SPINCOUNT`` 3000, which GNU OpenMP reads as that
many polls of about 10 ns each (it estimates 100 000 per millisecond; 11 ns measured on the Intel VM): long enough
to bridge the gaps between the regions of one transform, short of the next pass of the other runtime. On that
VM the encoding above took 47 ms a call with it, 53 ms with no spin, 56 ms with 20 000 (the spinning then
overlapping the other runtime's work) and 173 ms with 100 000. Runtimes other than GNU's read the passive policy.

A runtime reads these variables once, when its library loads, so they are set for that load only and put back:
OpenMP libraries of the process loaded later read their own settings. Numba's pool runs on the system's GNU
OpenMP (``libgomp.so.1``), though, which every other library linked against it shares once it is loaded: they
then wait as above too. Where the user set either variable, neither is touched; set them to choose otherwise.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

#: Polls before an idle GNU OpenMP thread sleeps (see the module docstring).
SPIN_COUNT = 3000

_lock = threading.Lock()


@contextlib.contextmanager
def loading_runtime() -> Iterator[None]:
    """Within this block an OpenMP runtime that loads waits as the module docstring says, unless the user set
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``."""
    with _lock:
        chosen = {}
        if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
            chosen = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(SPIN_COUNT)}
        os.environ.update(chosen)
        try:
            yield
        finally:
            for name in chosen:
                os.environ.pop(name, None)
