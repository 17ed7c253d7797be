"""The Ray processes of a service's private local cluster, recorded in its data folder and stopped by the next start.

A local cluster's raylet and GCS die with the service (a parent-death signal), but its agents (``ray::
DashboardAgent``, ``ray::RuntimeEnvAgent``) are the raylet's children and outlive a service that was killed
(SIGKILL, the OOM killer): minutes later they still hold their memory and ports. So a service that starts its own
cluster writes the processes it started (pid and start time, which together name a process even after its pid
is reused) to ``DATA_DIR/ray-processes.json``; the next service on that folder stops those still alive before it
starts its own cluster, and a service that stops cleanly removes the file. Linux only (``/proc``); elsewhere a
no-op.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from workers.distributed.checkpoint import atomic_write_bytes
from workers.distributed.cluster import LOCAL, ClusterConfig, ClusterContext, connect, shutdown

logger = logging.getLogger(__name__)

PID_FILE = "ray-processes.json"
_PROC = Path("/proc")
_RECORD_AGAIN_S = (5.0, 30.0)  # the agents start after ray.init returns: look again for them


def connect_owned(config: ClusterConfig, data_dir: Path) -> ClusterContext:
    """Connect to the service's cluster; for a private local one, stop what a killed predecessor left first and
    record the processes this one starts.

    Parameters
    ----------
    config : ClusterConfig
    data_dir : Path
        The service's data folder (where the record is kept).

    Returns
    -------
    ClusterContext
        As :func:`workers.distributed.cluster.connect` returns it.
    """
    local = config.resolved_address() == LOCAL
    if local:
        reap(data_dir)
    context = connect(config)
    if local and context.started:
        record(data_dir)
        for delay in _RECORD_AGAIN_S:
            timer = threading.Timer(delay, record, args=(data_dir,))
            timer.daemon = True
            timer.start()
    return context


def record(data_dir: Path) -> list[int]:
    """Write this process's descendant Ray processes to the record; returns their pids.

    Parameters
    ----------
    data_dir : Path

    Returns
    -------
    list of int
    """
    if not _PROC.is_dir() or not Path(data_dir).is_dir():
        return []
    entries = [{"pid": pid, "start": _start_time(pid)} for pid in _descendants(os.getpid()) if _is_ray(pid)]
    entries = [e for e in entries if e["start"] is not None]
    atomic_write_bytes(Path(data_dir) / PID_FILE, json.dumps(entries).encode())
    return [e["pid"] for e in entries]


def reap(data_dir: Path, grace: float = 3.0) -> int:
    """Stop the recorded processes that are still alive (SIGTERM, then SIGKILL after `grace` seconds) and remove
    the record; returns how many were stopped.

    Parameters
    ----------
    data_dir : Path
    grace : float
        Seconds between SIGTERM and SIGKILL.

    Returns
    -------
    int
    """
    path = Path(data_dir) / PID_FILE
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0
    if not isinstance(entries, list):
        entries = []
    own = set(_descendants(os.getpid()))  # this process's own cluster, recorded when it started, is not an orphan
    alive = [
        int(e["pid"])
        for e in entries
        if isinstance(e, dict)
        and int(e.get("pid", 0)) not in own
        and _start_time(int(e.get("pid", 0))) == e.get("start")
        and _is_ray(int(e["pid"]))
    ]
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_start_time(pid) is not None for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:
        if _start_time(pid) is not None:
            _signal(pid, signal.SIGKILL)
    if alive:
        logger.warning("stopped %d Ray processes a killed service left behind: %s", len(alive), alive)
    if not own:
        path.unlink(missing_ok=True)
    return len(alive)


def stop_cluster(data_dir: Path) -> None:
    """Shut down the cluster this process started, then remove the record.

    A job thread still running when the service stops (cut mid-iteration) must not start a new cluster: Ray's
    automatic ``ray.init`` on the next actor call would, from that thread, and leave it behind. So the automatic
    start is turned off first; the job's next Ray call then fails, and the runner puts the job back in the queue.

    Parameters
    ----------
    data_dir : Path
    """
    try:
        from ray._private import auto_init_hook  # noqa: PLC0415  (no public switch once Ray is imported)

        auto_init_hook.enable_auto_connect = False
    except (ImportError, AttributeError):  # another Ray: its default stands
        logger.debug("cannot turn Ray's automatic start off")
    shutdown()
    forget(data_dir)


def forget(data_dir: Path) -> None:
    """Remove the record (the cluster was shut down cleanly).

    Parameters
    ----------
    data_dir : Path
    """
    (Path(data_dir) / PID_FILE).unlink(missing_ok=True)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # the command name is in parentheses and may hold spaces: the fields after it are split on spaces
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None when it is gone or a zombie."""
    fields = _stat(pid) if pid > 0 else None
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _is_ray(pid: int) -> bool:
    try:
        command = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"ray" in command
