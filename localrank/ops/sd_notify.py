"""sd_notify: telling systemd (Type=notify) that the daemon is ready or stopping.

Kept apart from the service installer so the daemon imports only this.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def systemd_notify_socket(environ: Mapping[str, str] | None = None) -> str | None:
    """The address systemd gave this process for readiness messages, or None.

    The one environment read outside config.load_settings, on purpose: NOTIFY_SOCKET is not a
    localrank setting but the service manager's handshake address for this very process. It
    must not be settable from config.toml or flags, nor shown by `localrank config`.
    """
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    return value or None


def sd_notify(state: str, address: str | None) -> bool:
    """Send one sd_notify datagram (e.g. "READY=1"). A no-op returning False without a socket.

    Failure to notify is logged, never raised: the daemon serves fine without a supervisor.
    """
    if not address:
        return False
    # '@' marks Linux's abstract namespace, spelled with a leading NUL byte on the wire.
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), target)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address, exc)
        return False
    return True


def notify_ready(status: str = "", address: str | None = None) -> bool:
    """Tell systemd the model is loaded and the daemon serves (Type=notify). No-op when unset."""
    message = "READY=1" + (f"\nSTATUS={status}" if status else "")
    return sd_notify(message, address if address is not None else systemd_notify_socket())


def notify_stopping(address: str | None = None) -> bool:
    """Tell systemd a SIGTERM drain has begun, so it waits (up to TimeoutStopSec) quietly."""
    return sd_notify("STOPPING=1", address if address is not None else systemd_notify_socket())
