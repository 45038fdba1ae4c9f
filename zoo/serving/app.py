"""The ASGI app of `zoo serve`: KServe v2 / Open Inference Protocol REST endpoints over one ONNX model.

    GET  /v2                                  server metadata
    GET  /v2/health/live, /v2/health/ready    liveness, readiness (ready once the batcher runs)
    GET  /v2/models/NAME[/versions/1]         model metadata
    GET  /v2/models/NAME[/versions/1]/ready   model readiness
    POST /v2/models/NAME[/versions/1]/infer   inference (JSON, or JSON + binary tensor data)

Every error is a JSON body {"error": "..."}: 400 for a request that does not fit the model, 404 for an unknown
model, version or path, 408 for a body that stalls, 413 for a body or a row count over the limit, 503 while
shutting down (or past --max-connections, zoo/serving/connections.py), 500 when ONNX Runtime fails.
`create_app` loads the model once and returns a Starlette app; tests use it in-process, the CLI runs it with
uvicorn (zoo/serving/server.py). The dynamic batcher starts and stops with the app's lifespan.

One request cannot sink the server: its rows are capped (`max_request_rows`, checked from the declared shape
before any data is decoded), a large one runs through the batcher in chunks of at most `max_batch` rows (so ORT's
working memory stays that of one batch and small requests interleave with it instead of waiting for all of it),
big bodies are parsed one at a time off the event loop (JSON parsing holds the GIL, so parsing several at once
gains nothing and multiplies the memory), and a client that goes away mid-body is one log line.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from export.errors import first_line
import zoo
from zoo.serving import limits
from zoo.serving.batcher import DynamicBatcher, ServerStopping
from zoo.serving.model import ServedModel
from zoo.serving.protocol import HEADER_LENGTH, ProtocolError, encode_infer_response, parse_infer_request

DEFAULT_MAX_BODY_BYTES = limits.MAX_BODY_BYTES
PARSE_IN_THREAD_BYTES = 2**20  # bigger bodies are parsed off the event loop
log = logging.getLogger("zoo.serving")


def create_app(model_path: Path | str, *, name: str | None = None, device: str = "auto", max_batch: int = 8,
               batch_window_ms: float = 0.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_request_rows: int = limits.MAX_REQUEST_ROWS, read_timeout_s: float = limits.READ_TIMEOUT_S,
               model: ServedModel | None = None, cuda_graph: bool = False,
               tensorrt_fp16: bool | None = None) -> Starlette:
    """The server for the ONNX model at `model_path` (or an already loaded `model`).

    `max_batch`: most rows stacked into one ORT run, and the chunk size of larger requests (1: every request
    alone; forced to 1, and no chunking, for a model whose leading dims are not all dynamic). `batch_window_ms`: how
    long a batch that is not full waits for more. `max_request_rows`: most rows one request may declare (413
    beyond). `read_timeout_s`: longest pause while a request body arrives (408 beyond). `cuda_graph`,
    `tensorrt_fp16`: see ServedModel."""
    limits.check_request_limits(max_body_bytes=max_body_bytes, max_request_rows=max_request_rows,
                                read_timeout_s=read_timeout_s)
    served = model or ServedModel(model_path, name=name, device=device, cuda_graph=cuda_graph,
                                  tensorrt_fp16=tensorrt_fp16)
    spec = served.spec
    batcher = DynamicBatcher(served, max_batch=max_batch if spec.batchable else 1,
                             window_s=batch_window_ms / 1000, chunk=spec.batchable)
    parser: list[concurrent.futures.ThreadPoolExecutor] = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        parser.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zoo-serve-parse"))
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            parser.pop().shutdown(wait=True)

    def check_model(request: Request) -> None:
        model_name = request.path_params["model"]
        if model_name != spec.name:
            raise ProtocolError(f"unknown model {model_name!r}; this server serves {spec.name!r}", 404)
        version = request.path_params.get("version")
        if version is not None and version != spec.version:
            raise ProtocolError(f"model {spec.name!r} has no version {version!r}; it has {spec.version!r}", 404)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "zoo", "version": zoo.__version__, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": batcher.running}, status_code=200 if batcher.running else 503)

    async def model_metadata(request: Request) -> Response:
        check_model(request)
        return JSONResponse(spec.metadata())

    async def model_ready(request: Request) -> Response:
        check_model(request)
        return JSONResponse({"name": spec.name, "ready": batcher.running},
                            status_code=200 if batcher.running else 503)

    async def infer(request: Request) -> Response:
        check_model(request)
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise ProtocolError(f"Content-Encoding {request.headers['content-encoding']!r} is not supported; "
                                f"send the request uncompressed")
        try:
            body = await _read_body(request, max_body_bytes, read_timeout_s)
        except ClientDisconnect:
            client = f" from {request.client.host}:{request.client.port}" if request.client else ""
            log.warning("client%s disconnected before the request body was complete", client)
            return Response(status_code=499)  # nobody reads it; uvicorn drops it on the closed connection
        parse = functools.partial(parse_infer_request, body, spec, request.headers.get(HEADER_LENGTH),
                                  max_rows=max_request_rows)
        if len(body) > PARSE_IN_THREAD_BYTES and parser:
            parsed = await asyncio.get_running_loop().run_in_executor(parser[0], parse)
        else:
            parsed = parse()
        try:
            results = await batcher.infer(parsed.inputs, parsed.rows)
        except ServerStopping as e:
            raise ProtocolError(str(e), 503) from None
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's failure on a valid request: the server's fault
            return JSONResponse({"error": f"inference failed: {first_line(e)}"}, status_code=500)
        content, headers = encode_infer_response(spec, parsed, results)
        media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def protocol_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProtocolError)
        # a request refused before its body was read: close, so the unread rest is never parsed as a request
        headers = {"connection": "close"} if exc.status in (408, 413) else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code, headers=exc.headers)

    model_routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        model_routes += [Route(prefix, model_metadata, methods=["GET"]),
                         Route(prefix + "/ready", model_ready, methods=["GET"]),
                         Route(prefix + "/infer", infer, methods=["POST"])]
    app = Starlette(
        routes=[Route("/v2", server_metadata, methods=["GET"]),
                Route("/v2/health/live", live, methods=["GET"]),
                Route("/v2/health/ready", ready, methods=["GET"]),
                *model_routes],
        exception_handlers={ProtocolError: protocol_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.model = served
    app.state.batcher = batcher
    return app


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytearray:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes (from Content-Length
    before reading anything, else while streaming), so an oversized upload is never held in memory; 408 when the
    client sends nothing for `timeout_s` mid-body. One growing buffer, no list of chunks joined into a second copy
    (a bytearray, so the arrays viewing its binary part are writable)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
                            f"(zoo serve --max-body-mb)", 413)
    body = bytearray()
    while True:
        # receive() rather than request.stream(): the StopAsyncIteration that ends a stream, raised through wait_for,
        # sits in a reference cycle (its traceback, wait_for's task) with this frame, which would keep the body
        # alive until the next garbage collection
        try:
            message = await asyncio.wait_for(request.receive(), timeout_s)
        except asyncio.TimeoutError:
            message = None
        if message is None:
            body = None  # (here and below) a traceback may keep this frame for a while; it need not keep the body
            raise ProtocolError(f"the request body stalled: nothing arrived for {timeout_s:g} s "
                                f"(zoo serve --read-timeout-s)", 408) from None
        if message["type"] == "http.disconnect":
            body = None
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            body = None
            raise ProtocolError(f"request body exceeds the limit of {limit} bytes (zoo serve --max-body-mb)", 413)
        body += chunk
        if not message.get("more_body", False):
            return body
