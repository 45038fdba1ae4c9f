"""Does one large request sink `zoo serve`? Memory (RSS) and a small request's latency around large requests.

The `cnn_bn` classifier (28×28×1, BN folded) is exported to ONNX in a temporary directory and served by `zoo serve`
in a subprocess. The server's RSS is sampled from /proc/PID/status every 20 ms. Phases:

1. idle: RSS after start-up and one warm-up request.
2. large: `--requests` binary requests of `--rows` rows each (default 1,024, the default --max-request-rows),
   `--concurrency` at a time; meanwhile a probe thread sends a 1-row JSON request every 50 ms and times it.
   RSS peak during, and RSS `--settle-s` after.
3. large_json: `--json-requests` JSON requests of `--rows` rows (~16 MB each: Python's lists of floats are the
   costly part), `--concurrency` at a time, the probe running again; RSS peak and after.
4. oversize: `--oversize-requests` binary requests of `--oversize-rows` rows (default 19,000, ~60 MB, under the
   64 MB body limit: the request of issue 12), one at a time, the probe running again; RSS peak and after.

`--before-tree DIR` runs the same phases first against the zoo of another source tree (its `zoo serve`, through
PYTHONPATH), e.g. the commit before issue 12's server fixes, so one JSON holds both:

    git archive c16aeb3 | (mkdir -p /tmp/zoo-before && tar -x -C /tmp/zoo-before)
    python benchmarks/serve_memory.py --before-tree /tmp/zoo-before

Prints a Markdown table, writes benchmarks/results/serve_memory.json (figures, command, settings, machine).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)
from _common import ROOT, export_cnn_bn

import numpy as np  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve_memory.json"
NAME = "cnn_bn"
SHAPE = (28, 28, 1)


class Server:
    """`zoo serve` from `tree` in a subprocess; its output is drained by a thread (kept for the stop line)."""

    def __init__(self, tree: Path, onnx_path: Path, extra: list[str]) -> None:
        self.command = [sys.executable, "-m", "zoo.cli", "serve", str(onnx_path), "--port", "0", "--device", "cpu",
                        "--name", NAME, *extra]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen(self.command, cwd=tree, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        first = self.process.stdout.readline()
        if not first.startswith("serving "):
            self.process.kill()
            raise SystemExit(f"zoo serve did not start: {first}{self.process.stdout.read()}")
        self.url = first.split(" on ", 1)[1].split(" ", 1)[0]
        self.lines = [first]
        self._drain = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._drain.start()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        self._drain.join(10)
        out = "".join(self.lines)
        match = re.search(r"after (\d+) requests in (\d+) ONNX Runtime runs", out)
        return {"exit_code": self.process.returncode, "requests": int(match[1]) if match else None,
                "ort_runs": int(match[2]) if match else None, "tracebacks": out.count("Traceback")}


class Background:
    """Runs `self._run` in a thread while a `with` block runs; `_run` loops until `self._stop` is set."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Sampler(Background):
    """The peak RSS of `server` while the `with` block runs."""

    def __init__(self, server: Server, every_s: float = 0.02) -> None:
        super().__init__()
        self.server, self.every_s, self.peak = server, every_s, 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(self.every_s)


class Probe(Background):
    """1-row JSON requests while the `with` block runs, one every PERIOD_S (or right after the previous answer when
    that took longer), so the probe adds the same load to a fast server as to a slow one; latencies in ms."""

    PERIOD_S = 0.05

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.latencies, self.failures = url, [], 0

    def _run(self) -> None:
        import httpx

        body = {"inputs": [{"name": "image", "shape": [1, *SHAPE], "datatype": "FP32",
                            "data": np.zeros(SHAPE, "float32").reshape(-1).tolist()}]}
        with httpx.Client(base_url=self.url, timeout=600) as http:
            while not self._stop.is_set():
                start = time.perf_counter()
                ok = http.post(f"/v2/models/{NAME}/infer", json=body).status_code == 200
                self.latencies.append((time.perf_counter() - start) * 1e3)
                self.failures += not ok
                time.sleep(max(0.0, self.PERIOD_S - (time.perf_counter() - start)))

    def summary(self) -> dict:
        values = np.asarray(self.latencies or [np.nan])
        return {"count": len(self.latencies), "failures": self.failures,
                "p50_ms": round(float(np.percentile(values, 50)), 1),
                "p99_ms": round(float(np.percentile(values, 99)), 1), "max_ms": round(float(values.max()), 1)}


def make_request(rows: int, seed: int, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    image = np.random.default_rng(seed).random((rows, *SHAPE), dtype=np.float32)
    if not binary:
        return json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                                       "data": image.reshape(-1).tolist()}]}).encode(), \
            {"Content-Type": "application/json"}
    head = json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": image.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return head + image.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def send_many(url: str, rows: int, count: int, concurrency: int, binary: bool = True) -> dict:
    """`count` requests of `rows` rows (binary or JSON), `concurrency` at a time: status counts and wall time."""
    import httpx

    body, headers = make_request(rows, seed=rows, binary=binary)
    local = threading.local()

    def one(_):
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=600)
        try:
            return local.http.post(f"/v2/models/{NAME}/infer", content=body, headers=headers).status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, range(count)))
    return {"rows": rows, "binary": binary, "body_mb": round(len(body) / 2**20, 1), "requests": count,
            "concurrency": concurrency, "statuses": dict(collections.Counter(map(str, statuses))),
            "wall_s": round(time.perf_counter() - start, 1)}


def measure(tree: Path, onnx_path: Path, extra: list[str], args) -> dict:
    server = Server(tree, onnx_path, extra)
    result: dict = {"tree": str(tree), "command": server.command, "rss_mb": {}}
    try:
        send_many(server.url, 1, 1, 1)  # warm-up
        time.sleep(args.settle_s)
        result["rss_mb"]["idle"] = round(server.rss_mb(), 1)
        for phase, rows, count, concurrency, binary in (
                ("large", args.rows, args.requests, args.concurrency, True),
                ("large_json", args.rows, args.json_requests, args.concurrency, False),
                ("oversize", args.oversize_rows, args.oversize_requests, 1, True)):
            if not count:
                continue
            with Sampler(server) as sampler, Probe(server.url) as probe:
                result[phase] = send_many(server.url, rows, count, concurrency, binary)
            time.sleep(args.settle_s)
            result[phase]["probe_1_row"] = probe.summary()
            result["rss_mb"][f"peak_{phase}"] = round(sampler.peak, 1)
            result["rss_mb"][f"after_{phase}"] = round(server.rss_mb(), 1)
            print(f"  {phase}: {result[phase]['statuses']} in {result[phase]['wall_s']} s; RSS peak "
                  f"{sampler.peak:.0f} MB, after {result['rss_mb'][f'after_{phase}']:.0f} MB", flush=True)
    finally:
        result["server"] = server.stop()
    return result


def machine() -> dict:
    import onnxruntime

    meminfo = Path("/proc/meminfo").read_text()
    return {"cpus": os.cpu_count(), "mem_total_gb": round(int(re.search(r"MemTotal:\s+(\d+)", meminfo)[1]) / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "libc": " ".join(platform.libc_ver()), "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="large requests")
    parser.add_argument("--rows", type=int, default=1024, help="rows per large request")
    parser.add_argument("--concurrency", type=int, default=3, help="large requests at once")
    parser.add_argument("--json-requests", type=int, default=30, help="large requests as JSON, after the binary ones")
    parser.add_argument("--oversize-requests", type=int, default=3, help="requests of --oversize-rows, one at a time")
    parser.add_argument("--oversize-rows", type=int, default=19000)
    parser.add_argument("--max-batch", type=int, default=8, help="zoo serve --max-batch")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait before reading RSS after a phase")
    parser.add_argument("--before-tree", type=Path, help="also measure the zoo of this source tree, first")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_cnn_bn(Path(tmp))
        trees = ([("before", args.before_tree.resolve())] if args.before_tree else []) + [("after", ROOT)]
        for label, tree in trees:
            print(f"{label}: zoo serve from {tree}", flush=True)
            runs[label] = measure(tree, onnx_path, ["--max-batch", str(args.max_batch)], args)

    print(f"\n{args.requests} binary and {args.json_requests} JSON requests of {args.rows} rows ({args.concurrency} "
          f"at a time), then {args.oversize_requests} binary of {args.oversize_rows} rows; cnn_bn 28×28×1, CPU, "
          f"{os.cpu_count()} cores; RSS in MB; 1-row request latency (p50 / max ms) while they run\n")
    print("| server | phase | statuses | wall s | RSS before → peak → after | 1-row p50 / max ms |")
    print("|---|---|---|---|---|---|")
    for label, run in runs.items():
        rss, last = run["rss_mb"], run["rss_mb"].get("idle", 0)
        for phase in ("large", "large_json", "oversize"):
            if phase in run:
                probe = run[phase]["probe_1_row"]
                print(f"| {label} | {phase} | {run[phase]['statuses']} | {run[phase]['wall_s']} | {last:.0f} → "
                      f"{rss[f'peak_{phase}']:.0f} → {rss[f'after_{phase}']:.0f} | {probe['p50_ms']} / "
                      f"{probe['max_ms']} |")
                last = rss[f"after_{phase}"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/serve_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(), "runs": runs}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
