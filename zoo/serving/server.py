"""Running the app with uvicorn on a socket zoo binds itself.

Binding first (instead of letting uvicorn bind) turns "port in use" or "cannot resolve host" into one ZooError
line before the model loads, and makes `--port 0` (a free port chosen by the OS) printable in the start line.

Signals: uvicorn catches SIGINT/SIGTERM, shuts down gracefully (stops accepting, lets in-flight requests finish,
runs the lifespan shutdown that stops the batcher), then restores the handlers it found and raises the signal
again so that the default action runs. `run` installs handlers of its own first, which only note the signal, so
that re-raise lands on them and a signal ends the server with exit code 0 instead of killing the process.

Connections: uvicorn runs zoo's guarded HTTP protocol (zoo/serving/connections.py: a deadline for headers, a cap
on connections with a JSON 503) with `timeout_keep_alive` for idle kept-alive connections. The app's own log lines
(logger "zoo.serving", e.g. a client that disconnected mid-body) go out in uvicorn's format.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading

from zoo.errors import ZooError
from zoo.serving import limits

GRACEFUL_SHUTDOWN_S = 10
BACKLOG = 2048  # uvicorn's default


def open_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn; a ZooError when it cannot be had."""
    if not 0 <= port <= 65535:
        raise ZooError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ZooError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind over TIME_WAIT
        sock.bind(address)
        sock.listen(BACKLOG)  # connections queue from now on, so the start line is true as soon as it is printed
    except OSError as e:
        sock.close()
        reason = "the port is already in use; stop the other server or choose another --port" \
            if e.errno in (98, 48) else (e.strerror or str(e))
        raise ZooError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app, *, log_level: str = "warning", access_log: bool = False,
                max_connections: int = limits.MAX_CONNECTIONS, keep_alive_s: float = limits.KEEP_ALIVE_S,
                read_timeout_s: float = limits.READ_TIMEOUT_S):
    import uvicorn

    from zoo.serving.connections import guarded_protocol

    limits.check_connection_limits(max_connections=max_connections, keep_alive_s=keep_alive_s,
                                   read_timeout_s=read_timeout_s)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", backlog=BACKLOG,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, timeout_keep_alive=keep_alive_s,
                            http=guarded_protocol(max_connections=max_connections, read_timeout_s=read_timeout_s))
    _log_like_uvicorn(logging.getLogger("zoo.serving"))
    return uvicorn.Server(config)


def _log_like_uvicorn(logger: logging.Logger) -> None:
    if not logger.handlers:
        from uvicorn.logging import DefaultFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run(app, sock: socket.socket, *, log_level: str = "warning", access_log: bool = False,
        **connection_limits) -> str | None:
    """Serve until SIGINT/SIGTERM; returns the signal's name (None if the server stopped on its own).
    `connection_limits`: make_server's max_connections, keep_alive_s, read_timeout_s."""
    server = make_server(app, log_level=log_level, access_log=access_log, **connection_limits)
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda number, frame: received.append(number))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise ZooError("the server failed to start (see the log above)")
    return signal.Signals(received[0]).name if received else None
