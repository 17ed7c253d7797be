"""The exit statuses of the ``deconv`` command line, in one place (their meaning is tabled in :mod:`api.cli`).

This module imports nothing, so ``deconv learn`` does not load the HTTP client to know them.
"""

from __future__ import annotations

EXIT_OK = 0
"""Done; for ``wait``, ``submit --wait`` and ``demo``: the job succeeded."""
EXIT_FAILED = 1
"""The job failed; the service answered 5xx or could not be reached; ``serve`` could not start."""
EXIT_USAGE = 2
"""Bad arguments, config, input file or setting; the service refused the request (4xx)."""
EXIT_CANCELLED = 3
"""The job was cancelled."""
EXIT_TIMEOUT = 4
"""``--timeout`` passed before the job ended."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C), as a shell reports SIGINT."""

EXIT_OF_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
"""The exit status of a command that followed a job to its end, by the job's terminal status."""
