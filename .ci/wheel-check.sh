#!/usr/bin/env bash
# The wheel is the product: build the sdist and the wheel, check their file lists, install the wheel with the
# 'service' extra into a fresh virtual environment outside the checkout, and use it from an empty folder as a
# user would. Everything lives in one temporary folder, removed at the end.
#
#   PYTHON=.venv/bin/python .ci/wheel-check.sh     (make wheel-check; PYTHON needs the 'build' package)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/deconv-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

step() { printf '\n+ %s\n' "$*"; }

cd "$repo"
step "python -m build --outdir $work/dist"
"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls "$work/dist"
"$python" .ci/check_dist.py "$work/dist"

wheels=("$work"/dist/*.whl)
step "fresh venv, pip install ${wheels[0]##*/}[service]"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --disable-pip-version-check "${wheels[0]}[service]" >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log"; exit 1; }
grep -E '^Successfully installed' "$work/pip.log" | tr ' ' '\n' | grep -E '^(deconv|ray|fastapi)-'


mkdir "$work/empty"
cd "$work/empty"
export PATH="$work/venv/bin:$PATH"
step "deconv --version"
deconv --version
step "deconv demo --help"
deconv demo --help >/dev/null && echo ok
step "deconv samples --out images"
deconv samples --out images
step "deconv learn quick --images images/camera.png images/coins.png --n-iter 2 --out out"
deconv learn quick --images images/camera.png images/coins.png --n-iter 2 --out out --no-progress
python - <<'PY'
import json

import numpy as np

history = json.load(open("out/history.json"))
filters = np.load("out/filters.npy")
assert [h["iteration"] for h in history] == [1, 2], history
assert filters.shape == (16, 1, 7, 7), filters.shape
print(f"2 outer iterations, filters {filters.shape}, objective {history[0]['objective']:.4g} -> "
      f"{history[-1]['objective']:.4g}")
PY
step 'python -c "from solver import encode, learn, reconstruct"'
python -c "from solver import encode, learn, reconstruct; import solver; print(solver.__file__)"
case "$(python -c 'import configs, solver; print(configs.__file__, solver.__file__)')" in
    "$work"/venv/*" $work"/venv/*) ;;
    *) echo "wheel-check: the packages were not imported from the fresh venv" >&2; exit 1 ;;
esac
printf '\nwheel-check: ok\n'
