# Two commands on a fresh clone: `make demo` (a learning job on the sample images, through the service) and
# `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-browser fuzz wheel-check bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m api.cli demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not browser"

# The dashboard in headless Chromium: Debian's chromium and chromium-driver (installed with apt-get when missing,
# which needs root), selenium from the 'browser' extra. Refreshes docs/dashboard.png.
test-browser: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y chromium chromium-driver)
	$(PY) -m pip install --quiet -e ".[browser]"
	$(PY) -m pytest -q -m browser -s tests/api/test_browser.py

# The service against its OpenAPI document at length (schemathesis, a few hundred examples per operation).
fuzz: $(STAMP)
	$(PY) -m pytest -q -m slow -o log_cli=true --log-cli-level=INFO tests/api/test_openapi_fuzz.py

# Build the sdist and the wheel, check their file lists, install the wheel into a fresh venv and run it.
wheel-check: $(STAMP)
	PYTHON=$(PY) .ci/wheel-check.sh

bench: $(STAMP)
	$(PY) bench/bench_sporco.py

# Every Python tree: ruff's rules (complexity included, see pyproject.toml), then the one format.
LINT_TREES := solver workers api configs tests bench .ci

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_TREES)
	$(PY) -m ruff format --check $(LINT_TREES)

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis build dist *.egg-info
