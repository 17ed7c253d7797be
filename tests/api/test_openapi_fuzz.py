"""The service against its own OpenAPI document, with schemathesis: no 5xx, every status documented, every
response in its documented schema, media type and headers, the key required where the document says so, 405s
with a true Allow. Against a live server over a store that holds a finished job, whose id (and its dataset's) the
generated requests use, so that the result, encode and reconstruct routes are reached, not only their 404s.

The default run is bounded (a fixed seed, a few examples per operation: under a minute); the ``slow`` one tries
many more (``make fuzz``). Both run schemathesis' own command line, as a developer would, and fail with its
report."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.conftest import LiveService, finished_job, start_service, stop_service

logger = logging.getLogger(__name__)

pytest.importorskip("schemathesis")

KEY = "fuzz-key"
SEED = 20261203
# Stricter than the document by design: a dataset_id must name an uploaded dataset, an upload must decode.
NOT_CHECKED = "positive_data_acceptance,negative_data_rejection"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[tuple[LiveService, str, str]]:
    from workers.jobs.store import JobStore  # noqa: PLC0415

    data_dir = tmp_path_factory.mktemp("fuzz")
    job_id = finished_job(data_dir, np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32))
    store = JobStore(data_dir)
    dataset_id = store.get_job(job_id).spec["dataset_id"]
    store.close()
    service = start_service(data_dir, run_jobs=False, api_key=KEY, max_queued_jobs=5)
    yield service, job_id, dataset_id
    stop_service(service)


def run_schemathesis(service: LiveService, job_id: str, dataset_id: str, folder, max_examples: int) -> str:
    """Run ``schemathesis run`` against `service`; returns its report (the test fails when it does)."""
    config = folder / "schemathesis.toml"
    config.write_text(f'[parameters]\njob_id = "{job_id}"\ndataset_id = "{dataset_id}"\n')
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{service.url}/openapi.json",
        "--header",
        f"X-API-Key: {KEY}",
        "--checks",
        "all",
        "--exclude-checks",
        NOT_CHECKED,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=3000)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-20000:]
    return report


def test_the_api_answers_as_its_document_says(fuzzed, tmp_path):
    report = run_schemathesis(*fuzzed, tmp_path, max_examples=3)
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated is not None and int(generated.group(1)) > 500, report[-3000:]
    assert generated.group(1) == generated.group(2), report[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_api_answers_as_its_document_says_at_length(fuzzed, tmp_path):
    report = run_schemathesis(*fuzzed, tmp_path, max_examples=300)
    summary = re.search(r"(\d+) generated, \1 passed", report)
    assert summary, report[-3000:]
    logger.info("schemathesis: %s", summary.group(0))  # the counts a long run reports (make fuzz shows them)
