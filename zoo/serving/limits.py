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

from zoo.checks import check_positive

MAX_BODY_BYTES = 64 * 2**20
MAX_REQUEST_ROWS = 1024
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5.0
READ_TIMEOUT_S = 10.0


def check_request_limits(*, max_body_bytes: int, max_request_rows: int, read_timeout_s: float) -> None:
    check_positive("--max-body-mb (in bytes)", max_body_bytes, integer=True)
    check_positive("--max-request-rows", max_request_rows, integer=True)
    check_positive("--read-timeout-s", read_timeout_s)


def check_connection_limits(*, max_connections: int, keep_alive_s: float, read_timeout_s: float) -> None:
    check_positive("--max-connections", max_connections, integer=True)
    check_positive("--keep-alive-s", keep_alive_s)
    check_positive("--read-timeout-s", read_timeout_s)
