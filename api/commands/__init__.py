"""The ``deconv`` commands that talk to a running service: submit, status, wait, cancel, filters, model,
encode, encode-job, reconstruct; in :mod:`.jobs`, :mod:`.results` and :mod:`.encode_job`, over :mod:`.output`.

Each takes the parsed arguments and an open :class:`~api.client.DeconvClient` and returns an exit status (see
:mod:`api.cli`). Results go to stdout (a job id, a file written, a table); messages and the progress bar go to
stderr. A :class:`~api.client.DeconvAPIError` is not caught here: :func:`api.cli.main` prints its message (which
names the field) and exits 2 for a 4xx, 1 otherwise.
"""

from __future__ import annotations

from .encode_job import encode_job
from .jobs import cancel, describe_job, follow, load_spec_file, progress_bar, status, submit, wait
from .output import UsageError, result, say, write_file
from .results import encode, filters, load_array, load_arrays, model, reconstruct

__all__ = [
    "UsageError",
    "cancel",
    "describe_job",
    "encode",
    "encode_job",
    "filters",
    "follow",
    "load_array",
    "load_arrays",
    "load_spec_file",
    "model",
    "progress_bar",
    "reconstruct",
    "result",
    "say",
    "status",
    "submit",
    "wait",
    "write_file",
]
