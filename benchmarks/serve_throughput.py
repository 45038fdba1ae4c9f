"""How many requests per second does `zoo serve` answer with and without dynamic batching? In one run.

The `cnn_bn` classifier (28×28×1, BN folded, random but moderate BN statistics) is exported to ONNX and served by
`zoo serve` in a subprocess (so the client does not share the server's GIL), once per `--max-batch` value. A client
(aiohttp, asyncio) sends rounds of `--concurrency` simultaneous single-image JSON requests; each answer is checked
against a direct ONNX Runtime run. Reported per setting: requests/s (median over rounds), p50/p99 latency, and how
many requests one ONNX Runtime run held on average (from the server's own stop line). `--max-batch 1` is the
baseline: the same server, every request run alone.

    python benchmarks/serve_throughput.py                  # max-batch 1, 8, 32; 200 concurrent; 5 rounds
    python benchmarks/serve_throughput.py --max-batch 1,16 --concurrency 50 --rounds 3
    python benchmarks/serve_throughput.py --device cuda [--cuda-graph]   # on a GPU (benchmarks/gpu_check.sh)
    python benchmarks/serve_throughput.py --onnx runs/cnn_bn/export/model.onnx   # a model exported before (no
                                                                    # TensorFlow needed: a serving-only machine)

Prints a Markdown table, writes benchmarks/results/serve_throughput.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)
from _common import ROOT, export_cnn_bn

import numpy as np  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve_throughput.json"


def start_server(onnx_path: Path, max_batch: int, window_ms: float, device: str = "cpu",
                 cuda_graph: bool = False) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "serve", str(onnx_path), "--port", "0",
                                "--device", device, "--name", "cnn_bn", "--max-batch", str(max_batch),
                                "--batch-window-ms", str(window_ms), *(["--cuda-graph"] if cuda_graph else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = process.stdout.readline()
    if not first.startswith("serving "):
        process.kill()
        raise SystemExit(f"zoo serve did not start: {first}{process.stdout.read()}")
    return process, first.split(" on ", 1)[1].split(" ", 1)[0]


def stop_server(process: subprocess.Popen) -> dict:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    match = re.search(r"after (\d+) requests in (\d+) ONNX Runtime runs", out)
    requests, runs = (int(match[1]), int(match[2])) if match else (0, 0)
    return {"exit_code": process.returncode, "requests": requests, "ort_runs": runs,
            "requests_per_run": round(requests / runs, 2) if runs else None}


async def measure(url: str, images: list[np.ndarray], expected: list[np.ndarray], rounds: int, *,
                  input_name: str = "image") -> list[tuple[float, list[float]]]:
    """Rounds of len(images) simultaneous requests over one set of kept-alive connections (opened by a warm-up
    round, so connection set-up is not timed). The client is aiohttp (installed with tritonclient[http]): httpx's
    async pool managed only ~50-170 requests/s at 200 connections here even on /v2/health/live, so it measured
    itself, not the server."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=len(images))
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def one(image, want):
            body = {"inputs": [{"name": input_name, "shape": list(image.shape), "datatype": "FP32",
                                "data": image.reshape(-1).tolist()}]}
            start = time.perf_counter()
            async with http.post("/v2/models/cnn_bn/infer", json=body) as response:
                response.raise_for_status()
                data = await response.json()
            latency = time.perf_counter() - start
            got = np.asarray(data["outputs"][0]["data"], "float32").reshape(want.shape)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
            return latency

        results = []
        for round_index in range(rounds + 1):
            start = time.perf_counter()
            latencies = await asyncio.gather(*(one(i, w) for i, w in zip(images, expected)))
            if round_index:  # round 0 is the warm-up
                results.append((time.perf_counter() - start, list(latencies)))
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-batch", default="1,8,32", help="comma-separated --max-batch values (1: no batching)")
    parser.add_argument("--concurrency", type=int, default=200, help="simultaneous requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window-ms", type=float, default=0.0, help="zoo serve --batch-window-ms")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "tensorrt"), help="zoo serve --device")
    parser.add_argument("--cuda-graph", action="store_true", help="zoo serve --cuda-graph (with --device cuda)")
    parser.add_argument("--onnx", type=Path, help="serve this single-input, single-output ONNX model (fixed H×W) "
                        "instead of exporting cnn_bn here")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import onnxruntime

    from export.runtimes import OrtRunner

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or export_cnn_bn(Path(tmp))
        reference = OrtRunner(onnx_path, device="cpu")
        (input_name,), (output_name,) = reference.input_names, reference.output_names
        shape = (1, *reference.input_shapes[input_name][1:])
        rng = np.random.default_rng(0)
        images = [rng.random(shape, dtype=np.float32) for _ in range(args.concurrency)]
        expected = [reference({input_name: image})[output_name] for image in images]
        for max_batch in (int(v) for v in args.max_batch.split(",")):
            process, url = start_server(onnx_path, max_batch, args.window_ms, args.device, args.cuda_graph)
            try:
                rounds = asyncio.run(measure(url, images, expected, args.rounds, input_name=input_name))
            finally:
                server = stop_server(process)
            rates = sorted(args.concurrency / wall for wall, _ in rounds)
            latencies = np.concatenate([lat for _, lat in rounds]) * 1e3
            rows.append({"max_batch": max_batch, "requests_per_s": round(float(np.median(rates)), 1),
                         "requests_per_s_rounds": [round(r, 1) for r in rates],
                         "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                         "p99_ms": round(float(np.percentile(latencies, 99)), 1), "server": server})
    base = rows[0]["requests_per_s"]
    where = {"cpu": "CPU"}.get(args.device, f"--device {args.device}{' --cuda-graph' if args.cuda_graph else ''}")
    model = f"{args.onnx}, {'×'.join(map(str, shape[1:]))}" if args.onnx else "cnn_bn 28×28×1"
    print(f"{args.concurrency} concurrent single-image JSON requests to `zoo serve` ({model}, {where}, "
          f"{os.cpu_count()} cores), median of {args.rounds} rounds\n")
    print("| --max-batch | requests/s | vs first row | p50 ms | p99 ms | requests per ORT run | exit |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['max_batch']} | {row['requests_per_s']} | {row['requests_per_s'] / base:.2f}× | "
              f"{row['p50_ms']} | {row['p99_ms']} | {row['server']['requests_per_run']} | {row['server']['exit_code']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": str(args.onnx) if args.onnx else "cnn_bn (random BN statistics)",
                                     "input_shape": list(shape[1:]), "concurrency": args.concurrency,
                                     "rounds": args.rounds,
                                     "window_ms": args.window_ms, "device": args.device,
                                     "cuda_graph": args.cuda_graph, "onnxruntime": onnxruntime.__version__,
                                     "cpus": os.cpu_count(), "loadavg_end": list(os.getloadavg()), "rows": rows},
                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
