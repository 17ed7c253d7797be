"""The states of a job, in one place: the store keeps them, the service filters by them, the client and the CLI
wait for the terminal ones.

A job moves ``queued -> running -> succeeded | failed | cancelled``, or ``queued -> cancelled`` directly. This
module imports nothing, so the client can use it without loading the job system (nor Ray).
"""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""The states a job never leaves."""
