"""What every command shares: where its words go (results on stdout, messages on stderr), its usage error, and
writing its file."""

from __future__ import annotations

import sys
from pathlib import Path

from ..exits import EXIT_OK


class UsageError(ValueError):
    """A bad argument or input file: the command prints the message and exits 2 (``EXIT_USAGE``).

    Parameters
    ----------
    message : str
        Names the option or file and what is wrong with it.
    """


def say(message: str) -> None:
    """Tell the person at the terminal (stderr, so stdout stays the command's result).

    Parameters
    ----------
    message : str
    """
    sys.stderr.write(message.rstrip("\n") + "\n")


def result(text: str) -> None:
    """Print the command's result (stdout, for a pipe or a script).

    Parameters
    ----------
    text : str
    """
    sys.stdout.write(text.rstrip("\n") + "\n")


def write_file(path: Path, data: bytes, what: str) -> int:
    """Write `data` to `path` atomically and say so on stdout.

    Parameters
    ----------
    path : Path
        Its folder is created when missing.
    data : bytes
    what : str
        What the bytes are, for the message.

    Returns
    -------
    int
        ``EXIT_OK``.

    Raises
    ------
    UsageError
        When `path` cannot be written.
    """
    from workers.distributed.checkpoint import atomic_write_bytes  # noqa: PLC0415

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write: {exc.strerror or exc}") from None
    result(f"wrote {what} to {path}")
    return EXIT_OK
