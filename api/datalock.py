"""One service per data folder: an exclusive lock held for as long as a process runs jobs on the folder.

A second service started on a folder that a live one uses must not touch it: its start-up stops the Ray processes
that a *killed* service left behind and puts the jobs left "running" back in the queue, and on a live service's
folder that is the live cluster and the jobs it is running. The lock is ``flock`` on ``service.lock`` in the folder:
the kernel releases it when its holder dies, even by SIGKILL, so a killed service's folder is free again at once
and its leftovers are cleaned as before. The holder's pid and start time are written into the file for the message
a refused start prints. The lock is per process and counted: the foreground server and the app's lifespan both take
it. On a network file system without ``flock`` support the lock may not hold across machines; the service's data
folder is local to its node.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX: no lock, as before)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = "service.lock"

_held: dict[Path, list] = {}  # resolved folder -> [file object, count]
_mutex = threading.Lock()


class DataDirInUse(RuntimeError):
    """The data folder is held by another live process."""


def acquire(data_dir: str | os.PathLike[str]) -> Path:
    """Take the folder's lock for this process (again, if it holds it already).

    Parameters
    ----------
    data_dir : path

    Returns
    -------
    Path
        The resolved folder, the key for :func:`release`.

    Raises
    ------
    DataDirInUse
        When another process holds it; the message names that process.
    """
    folder = Path(data_dir).resolve()
    with _mutex:
        if folder in _held:
            _held[folder][1] += 1
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            _held[folder] = [None, 1]
            return folder
        fh = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise DataDirInUse(
                f"the data folder {folder} is in use by another deconv service ({holder}); stop it, or give this "
                "one another data folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        fh.flush()
        _held[folder] = [fh, 1]
        return folder


def release(folder: Path) -> None:
    """Give back one hold of :func:`acquire`; the lock goes with the last.

    Parameters
    ----------
    folder : Path
        What :func:`acquire` returned.
    """
    with _mutex:
        entry = _held.get(folder)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[folder]
        if entry[0] is not None:
            entry[0].close()  # closing the only descriptor drops the flock
