"""The listening socket, bound before anything heavy loads: a port in use is a one-line error at once."""
from __future__ import annotations

import socket

from llama_mobile.core.errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    """A listening address, taken now so a port in use fails before any model loads."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = next((f for f in found if f[0] == socket.AF_INET), found[0])  # IPv4 first
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host!r} is not an address of this machine ({exc})",
                         fix="use 127.0.0.1, ::1, 0.0.0.0 or a local interface's address") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})",
                         fix="choose another --port (or --port 0 for any free one), or stop what uses it") from None
    return sock
