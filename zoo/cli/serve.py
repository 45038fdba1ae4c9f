"""`zoo serve` and `zoo bench`: an exported model at work, over HTTP and under a stopwatch."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from export.runtime_table import NAMES, REFERENCE
from zoo.cli.common import (
    Device,
    DeviceOption,
    JsonPath,
    Overwrite,
    Sizes,
    load_zoo_layers,
    parse_sizes,
    user_errors,
)

commands = typer.Typer()


@commands.command("serve")
def serve_command(
    model: Annotated[Path, typer.Argument(help="The ONNX model to serve (e.g. runs/cnn_bn/export/model.onnx).")],
    name: Annotated[Optional[str], typer.Option(help="Model name in the URLs (default: the run's or file's name).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; the default is loopback only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: a free one, printed on start).")] = 8000,
    device: DeviceOption = Device.auto,
    max_batch: Annotated[int, typer.Option(help="Dynamic batching: most rows stacked into one ONNX Runtime run (1: no batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="How long a batch that is not full waits for more requests (0: it takes what is queued; batches still grow under load while ORT runs).")] = 0.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted (larger: HTTP 413).")] = 64.0,
    max_request_rows: Annotated[int, typer.Option(help="Most rows (axis 0) one request may send (more: HTTP 413, before its data is decoded).")] = 1024,
    max_connections: Annotated[int, typer.Option(help="Most open connections or running requests at once (past it: HTTP 503).")] = 256,
    keep_alive_s: Annotated[float, typer.Option(help="Seconds an idle kept-alive connection stays open.")] = 5.0,
    read_timeout_s: Annotated[float, typer.Option(help="Seconds a request's line and headers may take to arrive, and the longest pause in its body (then: closed / HTTP 408).")] = 10.0,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (uvicorn).")] = False,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph/--no-cuda-graph", help="With --device cuda: replay a CUDA graph per batch size (IO binding, fixed buffers); the model's inputs must be fixed apart from the batch.")] = False,
    tensorrt_fp16: Annotated[Optional[bool], typer.Option("--tensorrt-fp16/--no-tensorrt-fp16", help="With --device tensorrt: let TensorRT use float16 kernels (default: only for a float16 model, e.g. model_fp16.onnx).", show_default=False)] = None,
) -> None:
    """Serve an ONNX model over the KServe v2 / Open Inference Protocol REST API (Triton-compatible clients work)."""
    with user_errors():
        import math
        from urllib.parse import quote

        from export.runtime_table import check_device
        from zoo.checks import check_positive
        from zoo.errors import ZooError
        from zoo.serving import limits
        from zoo.serving.model import check_model_name

        check_positive("--max-batch", max_batch, integer=True)
        max_body_bytes = int(check_positive("--max-body-mb", max_body_mb) * 2**20)
        if not (math.isfinite(batch_window_ms) and batch_window_ms >= 0):
            raise ZooError(f"--batch-window-ms {batch_window_ms} must be a finite number, 0 or more")
        limits.check_request_limits(max_body_bytes=max(max_body_bytes, 1), max_request_rows=max_request_rows,
                                    read_timeout_s=read_timeout_s)
        limits.check_connection_limits(max_connections=max_connections, keep_alive_s=keep_alive_s,
                                       read_timeout_s=read_timeout_s)
        if cuda_graph and device is not Device.cuda:
            raise ZooError(f"--cuda-graph needs --device cuda (CUDA graphs are replayed on ONNX Runtime's CUDA "
                           f"provider), not --device {device.value}")
        if tensorrt_fp16 is not None and device is not Device.tensorrt:
            flag = "--tensorrt-fp16" if tensorrt_fp16 else "--no-tensorrt-fp16"
            raise ZooError(f"{flag} applies to --device tensorrt, not --device {device.value}")
        if name is not None:
            check_model_name(name)
        model = model.expanduser()
        if not model.is_file():
            raise ZooError(f"model {model} does not exist; pass an .onnx file (e.g. from `zoo export --onnx`)")
        if model.suffix != ".onnx":
            raise ZooError(f"model {model} is not an .onnx file; export one with `zoo export SRC --onnx`")
        check_device(device.value)
        from zoo.serving import server

        sock = server.open_socket(host, port)
        with contextlib.closing(sock):
            from export.runtimes import CPU, cuda_unavailable_reason
            from zoo.serving.app import create_app

            app_ = create_app(model, name=name, device=device.value, max_batch=max_batch,
                              batch_window_ms=batch_window_ms, max_body_bytes=max(max_body_bytes, 1),
                              max_request_rows=max_request_rows, read_timeout_s=read_timeout_s,
                              cuda_graph=cuda_graph, tensorrt_fp16=tensorrt_fp16)
            served = app_.state.model
            note = ""
            if served.providers[0] == CPU and device is Device.auto:
                note = f" (CUDA not used: {cuda_unavailable_reason()})"
            extras = [*served.runner.settings, *(["IO binding"] if served.runner.io_binding and not cuda_graph else [])]
            note += "".join(f", {extra}" for extra in extras)
            batching = (f"dynamic batching up to {app_.state.batcher.max_batch} rows"
                        if app_.state.batcher.max_batch > 1 else "no batching")
            typer.echo(f"serving {served.spec.name} ({model}) on {server.bound_url(sock)} with {served.runner.name}, "
                       f"onnxruntime providers: {', '.join(served.providers)}{note}; {batching}")
            typer.echo(f"  KServe v2: {server.bound_url(sock)}/v2/models/{quote(served.spec.name, safe='')}/infer; "
                       f"Ctrl-C stops")
            sys.stdout.flush()
            stopped_by = server.run(app_, sock, log_level="info" if access_log else "warning",
                                    access_log=access_log, max_connections=max_connections,
                                    keep_alive_s=keep_alive_s, read_timeout_s=read_timeout_s)
            stats = app_.state.batcher.stats.to_dict()
            typer.echo(f"stopped{f' on {stopped_by}' if stopped_by else ''} after {stats['requests']} requests "
                       f"in {stats['runs']} ONNX Runtime runs")


@commands.command("bench")
def bench_command(
    model: Annotated[Path, typer.Argument(help="An export directory, a run directory, or a .keras file (exported to a temporary directory first, float16 ONNX included).")],
    runtimes: Annotated[Optional[str], typer.Option(help=f"Comma-separated, from {', '.join(NAMES)} (default: every one the export holds that runs on --device, as parity chooses them); the baseline (--baseline) is always measured.")] = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    device: DeviceOption = Device.auto,
    warmup: Annotated[int, typer.Option(help="Untimed runs per runtime and batch first.")] = 5,
    runs: Annotated[int, typer.Option(help="Timed runs per runtime and batch.")] = 50,
    size: Sizes = None,
    io_binding: Annotated[bool, typer.Option("--io-binding/--no-io-binding", help="ONNX Runtime: inputs and outputs bound on the session's device (no host copies in the timed runs).")] = False,
    baseline: Annotated[str, typer.Option(help="The runtime every ratio is measured against, in the same rounds (e.g. ort-cuda: float16 against float32 on a GPU, with no Keras model or TensorFlow needed).")] = REFERENCE,
    json_path: JsonPath = None,
    overwrite: Overwrite = False,
) -> None:
    """Latency (cold start, p50/p90/p99), throughput and ratio to the baseline (Keras unless --baseline) of every runtime at every batch size."""
    with user_errors():
        from export.bench import parse_batches, parse_runtimes
        from export.runtime_table import check_device
        from zoo.errors import ZooError

        names, batches = parse_runtimes(runtimes), parse_batches(batch)
        spatial = parse_sizes(size)
        if spatial and len(spatial) > 1:
            raise ZooError(f"bench runs at one image size; give one --size, not {len(spatial)}")
        check_device(device.value)  # before a .keras is exported
        if json_path is not None:
            from export.atomic import check_target

            check_target(json_path, overwrite=overwrite, sources=[model], option="--json")
        from export.runtime_table import by_name

        timed = [by_name(name) for name in [baseline.strip(), *(names or [])]]
        if names is None or model.suffix == ".keras" or any(
                library != "onnxruntime" for runtime in timed for library in runtime.libraries):
            load_zoo_layers()  # only ONNX Runtime runtimes named: no TensorFlow needed
        from export.bench import run_bench
        from zoo.runs import resolve_export_dir

        with resolve_export_dir(model, fp16=True, reference=False) as directory:
            report = run_bench(directory, runtimes=names, batches=batches, device=device.value, warmup=warmup,
                               runs=runs, size=spatial[0] if spatial else None, io_binding=io_binding,
                               baseline=baseline, model_name=str(model),
                               log=lambda message: typer.echo(message, err=True))
        typer.echo(report.table())
        if json_path is not None:
            typer.echo(f"wrote {report.write_json(json_path, overwrite=overwrite)}")
