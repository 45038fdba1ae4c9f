"""Connection limits uvicorn does not enforce: a deadline for a request's headers, and a cap on connections and
in-flight requests that answers 503 with the server's JSON error body.

What uvicorn (0.3x-0.5x, httptools protocol) does and does not do:
- `timeout_keep_alive` is armed only after a response is complete, and cancelled by the first byte that arrives.
  A connection that never sends anything, or trickles its request line and headers a byte at a time, is never
  timed out (uvicorn issues #1192, "still exists on 0.23.2"; the code is the same in 0.55): 50 such connections
  or 1,000 idle ones were held indefinitely.
- `limit_concurrency` counts open connections and running requests when a request's headers complete, and
  answers 503 text/plain "Service Unavailable"; it closes nothing on its own.
- `h11_max_incomplete_event_size` bounds the buffered headers of the h11 protocol only; httptools (llhttp)
  buffers a request line and headers of any size, so a client could send gigabytes of "headers" before a deadline.

So `guarded_protocol(...)` returns a subclass of uvicorn's HttpToolsProtocol that arms a timer when a connection
opens and when each new request begins, disarms it when the request's headers are complete, and closes the
connection if it fires first (request-line and header bytes count, keeping a connection open does not); that
answers 431 {"error": ...} and closes once more than MAX_HEADER_BYTES arrive without completing the headers; and
that answers a request 503 {"error": ...} with `connection: close` while more than `max_connections` connections are
open or `max_connections` requests already run (the same rule as uvicorn's limit_concurrency, with the body every
other error of this server has). The body of a request is the app's to time (zoo/serving/app.py, 408).
"""
from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from zoo.serving.limits import check_connection_limits

# Counted per read while the headers are incomplete, so a read that also holds the start of a pipelined next request
# counts whole (one read is at most 256 KiB); real request lines and headers are a few KiB (h11's limit is 16 KiB).
MAX_HEADER_BYTES = 2**20


def guarded_protocol(*, max_connections: int, read_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    check_connection_limits(max_connections=max_connections, keep_alive_s=1.0, read_timeout_s=read_timeout_s)
    return type("GuardedHttpToolsProtocol", (_Guarded,),
                {"max_connections": max_connections, "read_timeout_s": read_timeout_s})


class _Guarded(HttpToolsProtocol):
    max_connections: int
    read_timeout_s: float
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None:  # this data did not complete a request's headers
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                body = json.dumps({"error": f"the request line and headers exceed {MAX_HEADER_BYTES} bytes"}).encode()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
                                     b"application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                     % (len(body), body))
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            app, self.app = self.app, self._too_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.read_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def _too_busy(self, scope, receive, send) -> None:
        body = json.dumps({"error": f"the server is at its limit of {self.max_connections} connections or "
                                    f"requests at once (zoo serve --max-connections); retry later"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})
