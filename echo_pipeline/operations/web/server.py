"""Serve the chat page on 127.0.0.1: a free port unless one is given, printed once it listens."""

from __future__ import annotations

import contextlib
import socket
import sys

HOST = "127.0.0.1"


def bind(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: a free one, chosen by the kernel)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise OSError(
            f"{HOST}:{port}: cannot listen ({error.strerror}); pick another --port"
        ) from error
    sock.listen(128)
    return sock


def serve(port: int = 0) -> int:
    """Run until Ctrl-C or SIGTERM. No access log: request lines are not chat text, but the
    page's requests are nobody's business either."""
    import uvicorn

    from echo_pipeline.operations.web.app import create_app

    sock = bind(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"Chat page   {url}", flush=True)
    # uvicorn shuts down gracefully, then re-raises the Ctrl-C it caught: that is the way out
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    print("chat page stopped", file=sys.stderr)
    return 0
