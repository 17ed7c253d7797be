"""The Ray addresses deconv accepts, checked before Ray sees them.

- ``local``: a private cluster started in this process (the default without an address);
- ``auto``: the cluster this machine already belongs to, as ``ray start --head`` or ``ray start --address`` left it
  (a service on the head node);
- ``host:port``: the GCS address of a head, as ``ray start --head`` prints it (``10.0.0.5:6379``); IPv6 hosts in
  brackets (``[fd00::5]:6379``).

``ray://host:10001`` (Ray Client) is refused: it needs the client side of gRPC that ``ray[client]`` installs and
deconv does not, and a Ray Client driver moves every array through the head's proxy. A service or ``deconv learn``
on a node of the cluster (``ray start --address`` first, then ``auto``) needs neither.

Examples
--------
>>> check_address("10.0.0.5:6379"), check_address("auto"), check_address("[fd00::5]:6379")
('10.0.0.5:6379', 'auto', '[fd00::5]:6379')
>>> check_address("10.0.0.5")
Traceback (most recent call last):
...
ValueError: address must be 'local', 'auto' or 'host:port' (a head's GCS address, e.g. 10.0.0.5:6379), got '10.0.0.5'
"""

from __future__ import annotations

import re

LOCAL = "local"
AUTO = "auto"
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?):(\d{1,5})$")


def check_address(value: str, what: str = "address") -> str:
    """`value`, stripped, when it is a Ray address deconv can connect to; ValueError naming `what` otherwise.

    Parameters
    ----------
    value : str
        ``local``, ``auto`` or ``host:port``.
    what : str
        The name of the setting or option in the error (``DECONV_RAY_ADDRESS``, ``--address``).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For ``ray://`` (saying why), a missing or out-of-range port, or anything else.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    address = value.strip()
    if address.lower() in (LOCAL, AUTO):
        return address.lower()
    if address.lower().startswith("ray://"):
        raise ValueError(
            f"{what}: {address!r} is a Ray Client address, which deconv does not support (it needs "
            "ray[client], which is not installed, and moves every array through the head): run the service or "
            "deconv learn on a node of the cluster (ray start --address=HEAD:6379 first) and use 'auto' or the "
            "head's GCS address host:port"
        )
    match = _HOST_PORT.match(address)
    if match is None:
        raise ValueError(
            f"{what} must be 'local', 'auto' or 'host:port' (a head's GCS address, e.g. 10.0.0.5:6379), got {value!r}"
        )
    port = int(match.group(1))
    if not 1 <= port <= 65535:
        raise ValueError(f"{what}: the port must be between 1 and 65535, got {port} in {value!r}")
    return address


__all__ = ["AUTO", "LOCAL", "check_address"]
