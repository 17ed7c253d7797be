"""How the OpenMP runtimes the solver loads (pyFFTW's, numba's) wait between parallel regions (solver.openmp)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from solver import openmp
from solver.operators import kernels

# In a fresh interpreter: an encode loads FFTW's runtime and starts numba's pool. GNU OpenMP prints the settings it
# read at load with OMP_DISPLAY_ENV=VERBOSE, one block per runtime.
CODE = """
import os, sys, numba, numpy as np
from solver import concurrent, encode
if "probe-first" in sys.argv:  # a shard asks whether its groups may run on threads before any pass
    concurrent.threads_for_pieces(4)
encode(np.ones((1, 1, 32, 32), np.float32), np.ones((2, 1, 3, 3), np.float32) / 3, 0.1, max_iter=3)
print(numba.threading_layer(), os.environ.get("OMP_WAIT_POLICY", "unset"), os.environ.get("GOMP_SPINCOUNT", "unset"))
"""

needs_both = pytest.mark.skipif(
    importlib.util.find_spec("pyfftw") is None or not kernels.available(), reason="needs pyFFTW and numba"
)


def _runtimes(*args: str, **user: str) -> tuple[list[dict[str, str]], list[str]]:
    """The settings each GNU OpenMP runtime read, and the layer and variables the interpreter saw after."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DECONV_FFT")}
    env.update(user, OMP_DISPLAY_ENV="VERBOSE")
    done = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    blocks = re.findall(r"OPENMP DISPLAY ENVIRONMENT BEGIN(.*?)OPENMP DISPLAY ENVIRONMENT END", done.stderr, re.S)
    return [dict(re.findall(r"^\s*(\w+) = '([^']*)'", b, re.M)) for b in blocks], done.stdout.split()


@needs_both
@pytest.mark.parametrize("order", ["pass-first", "probe-first"])
def test_both_runtimes_sleep_after_a_short_spin_and_the_environment_is_put_back(order):
    runtimes, (layer, policy, spin) = _runtimes(order)
    assert len(runtimes) == 1 + (layer == "omp")  # FFTW's, and numba's where its layer is GNU OpenMP
    for read in runtimes:
        assert read["OMP_WAIT_POLICY"] == "PASSIVE"
        assert read["GOMP_SPINCOUNT"] == str(openmp.SPIN_COUNT)
    assert (policy, spin) == ("unset", "unset")  # other runtimes loaded later read their defaults


@needs_both
@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "500"}])
def test_a_wait_setting_of_the_user_is_left_alone(user):
    runtimes, (_, policy, spin) = _runtimes(**user)
    assert runtimes
    for read in runtimes:
        for name, value in user.items():
            assert read[name] == value
        assert read["GOMP_SPINCOUNT"] != str(openmp.SPIN_COUNT)
    assert (policy, spin) == (user.get("OMP_WAIT_POLICY", "unset"), user.get("GOMP_SPINCOUNT", "unset"))
