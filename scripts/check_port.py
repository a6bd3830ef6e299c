"""Exit 0 if HOST PORT is free for a server to listen on, 1 if something listens there.

Binds the way the demo's web server will bind: with SO_REUSEADDR. Without it, a port that
only has connections in TIME_WAIT (those of a demo stopped a moment ago with Ctrl-C) would
count as in use for a minute, though the server can bind it at once.
"""

from __future__ import annotations

import socket
import sys


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(0 if port_is_free(sys.argv[1], int(sys.argv[2])) else 1)
