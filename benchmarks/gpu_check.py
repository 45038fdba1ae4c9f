"""The Python half of benchmarks/gpu_check.sh: the ResNet-50 it benchmarks, and the one results JSON it writes.

    python benchmarks/gpu_check.py resnet50 --out WORK/resnet50.keras   # keras.applications ResNet50, 224×224
    python benchmarks/gpu_check.py report WORK --out benchmarks/results/gpu_check.json --started EPOCH_S
    python benchmarks/gpu_check.py record EXPORT --out REF.npz       # where Keras runs: parity's inputs and outputs
    python benchmarks/gpu_check.py replay EXPORT --reference REF.npz --device cuda --json OUT.json

`record` and `replay` split `zoo parity` in two for a GPU machine without TensorFlow (gpu_check.sh --stage cpu /
--stage gpu): `record` runs the export's Keras model on parity's seeded inputs, `replay` runs the export's ONNX
Runtime runtimes for the device on the same inputs and judges them against the recorded outputs with parity's one
rule and tolerances (export/parity.py run_parity); the report says the reference was recorded.

`report` reads what the script's steps left in WORK (steps/NAME.cmd/.rc/.ms/.log, doctor.json, parity_*.json,
bench_*.json, serve_*.json) and writes every figure, command, exit code and wall time to one JSON, with the
issue's goals checked against the measured figures (a goal whose figure is missing is "not measured", never met).
Nothing is estimated: every number comes from a file a step wrote.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path (benchmarks/_common.py)
import numpy as np
from _common import RESULTS

GOALS = (  # (name, what, runtime, batch, limit ms): the goals for an H100/H200-class GPU
    ("resnet50_fp16_cuda_b1_p50_ms", "ResNet-50 fp16, ORT CUDA, IO binding, batch 1, p50", "ort-cuda-fp16", 1, 1.5),
    ("resnet50_fp16_tensorrt_b1_p50_ms", "ResNet-50 fp16, ORT TensorRT, IO binding, batch 1, p50",
     "ort-tensorrt-fp16", 1, 1.0),
)
TIME_LIMIT_S = 8 * 60


def build_resnet50(out: Path, size: int = 224, seed: int = 0) -> Path:
    """keras.applications ResNet50 (no download: weights=None, seeded kernels), logits out, every BN given random
    moderate inference statistics and every bias a non-zero value (benchmarks/_common.py randomize_bn)."""
    import keras
    from _common import randomize_bn

    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=1000,
                                        classifier_activation=None)
    randomize_bn(model, seed, moderate=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return out


def record(export_dir: Path, out: Path) -> Path:
    """Parity's seeded input sets for `export_dir` and its Keras model's outputs on them, in one .npz."""
    from export.artifacts import runners_for
    from export.parity import standard_input_sets

    reference, _, _ = runners_for(export_dir, device="cpu")
    sets = standard_input_sets(reference.signature.inputs)
    arrays = {}
    for index, (label, feeds) in enumerate(sets):
        arrays |= {f"{index}/in/{name}": value for name, value in feeds.items()}
        arrays |= {f"{index}/out/{name}": value for name, value in reference(feeds).items()}
    meta = {"labels": [label for label, _ in sets], "detail": f"{reference.detail}, recorded on {platform.node()}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)
    return out


class RecordedReference:
    """A parity reference that answers with recorded outputs (`record`), for exactly the recorded inputs."""

    name = "keras"

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        self.detail = f"recorded: {meta['detail']}"
        self.input_sets, self._outputs = [], []
        for index, label in enumerate(meta["labels"]):
            part = lambda kind: {k.split("/", 2)[2]: v for k, v in arrays.items()  # noqa: E731
                                 if k.startswith(f"{index}/{kind}/")}
            self.input_sets.append((label, part("in")))
            self._outputs.append(part("out"))

    def __call__(self, feeds: dict) -> dict:
        for (_, recorded), outputs in zip(self.input_sets, self._outputs):
            if recorded.keys() == feeds.keys() and all(np.array_equal(recorded[k], feeds[k]) for k in feeds):
                return outputs
        raise KeyError("these inputs were not recorded")


def replay(export_dir: Path, reference_file: Path, device: str):
    """Parity of the export's ONNX Runtime runtimes for `device` against recorded Keras outputs."""
    from export.artifacts import find_artifacts
    from export.parity import run_parity
    from export.runtime_table import RunOptions, parity_tolerances, select

    reference = RecordedReference(reference_file)
    found = find_artifacts(export_dir)
    runtimes, notes = select(found, device)
    candidates = [runtime.open(found[runtime.artifact], RunOptions()) for runtime in runtimes
                  if runtime.libraries == ("onnxruntime",) and runtime.precision != "int8"]
    notes.append("TensorFlow is not installed here: the Keras outputs were recorded on another machine on the "
                 "same inputs (benchmarks/gpu_check.py record)")
    return run_parity(reference, candidates, reference.input_sets, notes=notes,
                      tolerances=parity_tolerances([runner.name for runner in candidates], 1e-5, 1e-5))


def report(work: Path, *, started: float | None = None, extras: str = "", fresh_venv: bool = True,
           stage: str = "all", venv: str = "") -> dict:
    steps = {}
    for command in sorted((work / "steps").glob("*.cmd"), key=lambda p: p.stat().st_mtime):
        name = command.stem
        rc, ms = _read(work / "steps" / f"{name}.rc"), _read(work / "steps" / f"{name}.ms")
        log = work / "steps" / f"{name}.log"
        steps[name] = {"command": command.read_text().strip(), "exit_code": int(rc) if rc is not None else None,
                       "wall_s": round(int(ms) / 1000, 1) if ms is not None else None,
                       "output_tail": log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []}
    results = {name: _json(work / f"{name}.json") for name in (
        "doctor", "parity_cuda", "parity_tensorrt", "resnet50_parity_cuda", "bench_cuda", "bench_tensorrt",
        "serve_cuda", "serve_cuda_graph")}
    benches = [row | {"bench": name} for name in ("bench_cuda", "bench_tensorrt") if results[name]
               for row in results[name]["rows"]]
    goals = {}
    for key, what, runtime, batch, limit in GOALS:
        row = next((r for r in benches if r["runtime"] == runtime and r["batch"] == batch), None)
        value = round(row["p50_ms"], 3) if row else None
        goals[key] = {"what": what, "goal_ms": limit, "measured_ms": value,
                      "met": None if value is None else value <= limit}
    for name in ("parity_cuda", "parity_tensorrt", "resnet50_parity_cuda"):
        goals[name] = {"what": f"zoo parity ({name}) under the CPU rule", "passed":
                       results[name]["passed"] if results[name] else None}
    wall = round(time.time() - started, 1) if started else None
    complete = bool(steps) and all(step["exit_code"] is not None for step in steps.values()) and bool(benches)
    goals["wall_time"] = {"what": "the whole check (judged only when it ran to the end)", "goal_s": TIME_LIMIT_S,
                          "measured_s": wall, "met": wall <= TIME_LIMIT_S if wall is not None and complete else None}
    figures = {
        "bench": [{k: row[k] for k in ("bench", "runtime", "batch", "cold_start_ms", "p50_ms", "p90_ms", "p99_ms",
                                       "throughput")} for row in benches],
        "serve": {name: results[name]["rows"] for name in ("serve_cuda", "serve_cuda_graph") if results[name]},
    }
    return {
        "what": "benchmarks/gpu_check.sh: doctor, train + export + parity on CUDA / TensorRT, ResNet-50 bench, "
                "serve throughput",
        "measured": bool(benches),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)) if started else None,
        "wall_s": wall,
        "stage": stage,
        "venv": {"fresh": fresh_venv, "extras": extras, "where": venv},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "gpus": _gpus(),
                    "doctor_summary": _doctor_summary(results["doctor"])},
        "goals": goals,
        "figures": figures,
        "steps": steps,
        "results": results,
    }


def _doctor_summary(doctor: dict | None) -> dict | None:
    if not doctor:
        return None
    return {"versions": doctor.get("versions"), "driver": doctor.get("driver"),
            "onnxruntime": {k: doctor.get("onnxruntime", {}).get(k) for k in ("version", "cuda_version", "runs")},
            "libraries": [f"{lib['name']} {lib.get('version') or ''} ({lib.get('source')})".replace("  ", " ")
                          for lib in doctor.get("libraries", []) if lib.get("found")]}


def _gpus() -> list[str]:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    resnet = commands.add_parser("resnet50", help="write keras.applications ResNet50 (random weights) as .keras")
    resnet.add_argument("--out", type=Path, required=True)
    resnet.add_argument("--size", type=int, default=224)
    rec = commands.add_parser("record", help="record parity's inputs and the export's Keras outputs (needs Keras)")
    rec.add_argument("export", type=Path)
    rec.add_argument("--out", type=Path, required=True)
    rep = commands.add_parser("replay", help="parity of the export's ONNX Runtime runtimes against a recording")
    rep.add_argument("export", type=Path)
    rep.add_argument("--reference", type=Path, required=True)
    rep.add_argument("--device", default="cuda", choices=("cpu", "cuda", "tensorrt"))
    rep.add_argument("--json", type=Path)
    summary = commands.add_parser("report", help="gather a gpu_check.sh work folder into one results JSON")
    summary.add_argument("work", type=Path)
    summary.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    summary.add_argument("--started", type=float, help="the check's start, seconds since the epoch")
    summary.add_argument("--extras", default="")
    summary.add_argument("--fresh-venv", type=int, default=1)
    summary.add_argument("--stage", default="all", choices=("all", "cpu", "gpu"))
    summary.add_argument("--venv", default="")
    args = parser.parse_args(argv)
    if args.command == "resnet50":
        print(f"wrote {build_resnet50(args.out, args.size)}")
        return 0
    if args.command == "record":
        print(f"wrote {record(args.export, args.out)}")
        return 0
    if args.command == "replay":
        from export.errors import ExportError
        from export.runtime_table import check_device

        try:
            check_device(args.device)
            parity = replay(args.export, args.reference, args.device)
        except ExportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(parity.table())
        if args.json:
            args.json.write_text(json.dumps(parity.to_dict(), indent=2))
        return 0 if parity.passed else 1
    data = report(args.work, started=args.started, extras=args.extras, fresh_venv=bool(args.fresh_venv),
                  stage=args.stage, venv=args.venv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    for key, goal in data["goals"].items():
        state = {True: "met", False: "NOT met", None: "not measured"}[goal.get("met", goal.get("passed"))]
        figure = goal.get("measured_ms", goal.get("measured_s"))
        print(f"{key}: {state}" + (f" ({figure})" if figure is not None else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
