"""The server's limits: their defaults, why those, and the checks that turn a bad value into one ZooError naming
its `zoo serve` flag (`create_app`, `make_server` and the CLI all check through here, so they cannot disagree).

- MAX_BODY_BYTES (64 MiB, --max-body-mb): the body is held in memory while it is read.
- MAX_REQUEST_ROWS (1024, --max-request-rows): rows (axis 0) one request may declare, checked before its data is
  decoded. Enough for any interactive batch, small enough to bound one request: 1,024 rows of a 28×28×1 FP32 image
  are 3.2 MB of binary data or ~16 MB of JSON, whose Python lists take ~30 bytes per number (~25 MB) while parsed,
  where one 19,000-row request took the server to 3.5 GB. Larger jobs are split by the client (or the limit raised
  knowingly: the work per request grows with it, the ORT memory does not, since requests run in --max-batch chunks).
- MAX_CONNECTIONS (256, --max-connections): open connections or in-flight requests at once; a request past it gets
  503 {"error": ...}. Above the 200 simultaneous clients of benchmarks/serve_throughput.py; each in-flight request
  can hold a body, so this times --max-body-mb bounds the memory bodies can take.
- KEEP_ALIVE_S (5 s, --keep-alive-s): how long an idle kept-alive connection stays open (uvicorn's default).
- READ_TIMEOUT_S (10 s, --read-timeout-s): a request's line and headers must arrive within it (uvicorn has no such
  timeout: a connection that never finishes its headers was held forever), and its body may not pause longer.
"""
from __future__ import annotations

import math

from zoo.errors import ZooError

MAX_BODY_BYTES = 64 * 2**20
MAX_REQUEST_ROWS = 1024
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5.0
READ_TIMEOUT_S = 10.0


def positive_number(value: float, flag: str) -> float:
    """`value` if it is a finite number above 0, else a ZooError naming `flag`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ZooError(f"{flag} {value} must be a finite positive number")
    return value


def positive_int(value: int, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ZooError(f"{flag} {value} must be a whole number of at least 1")
    return value


def check_request_limits(*, max_body_bytes: int, max_request_rows: int, read_timeout_s: float) -> None:
    positive_int(max_body_bytes, "--max-body-mb (in bytes)")
    positive_int(max_request_rows, "--max-request-rows")
    positive_number(read_timeout_s, "--read-timeout-s")


def check_connection_limits(*, max_connections: int, keep_alive_s: float, read_timeout_s: float) -> None:
    positive_int(max_connections, "--max-connections")
    positive_number(keep_alive_s, "--keep-alive-s")
    positive_number(read_timeout_s, "--read-timeout-s")
