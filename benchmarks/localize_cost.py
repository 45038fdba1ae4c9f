"""What `zoo parity --localize` costs next to a normal parity run, in time and memory, on keras.applications ResNet50.

The model (weights=None, 10 classes, random moderate BN statistics and biases, like benchmarks/applications.py) is
exported once with --fold-bn, ONNX, SavedModel and TFLite. Then, each in a fresh Python process so the peak RSS is
its own, alternating `--repeats` times:

    parity     export.pipeline.check_parity(export, device="cpu")       (what `zoo parity` runs)
    localize   export.localize.localize_export(export, device="cpu")   (what `zoo parity --localize` runs)

Both load every runtime and run parity's input sets (batch 1 and 7 at the model's fixed size). The goal of issue
14: localisation ≤ 3× the time of a normal parity run. Peak RSS is the child's VmHWM.

    python benchmarks/localize_cost.py                 # ResNet50 at 96×96, 2 repeats (~3 minutes here)
    python benchmarks/localize_cost.py --size 128 --repeats 3

Writes benchmarks/results/localize_cost.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow
from _common import ROOT, environment

RESULTS = ROOT / "benchmarks" / "results" / "localize_cost.json"

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import _common  # quiet TensorFlow
def peak_rss_mb():  # VmHWM: this process' own peak (ru_maxrss would keep the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
start = time.perf_counter()
if {mode!r} == "parity":
    from export.pipeline import check_parity
    report = check_parity({export!r}, device="cpu")
    passed, extra = report.passed, {{"rows": len(report.rows)}}
else:
    from export.localize import localize_export
    report = localize_export({export!r}, device="cpu")
    passed = report.passed
    extra = {{name: {{"compared": len(r.layers), "unmapped": len(r.unmapped),
                      "first_divergent_layer": r.first_divergent.layer if r.first_divergent else None}}
              for name, r in ((r.runtime, r) for r in report.runtimes)}}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                  "passed": passed, "detail": extra}}))
"""


def run_child(mode: str, export: Path) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), mode=mode, export=str(export))
    wall = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - wall  # with Python, TensorFlow and ORT start-up
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from _common import build_application as build

    from export.pipeline import export_model

    with tempfile.TemporaryDirectory(prefix="zoo-localize-bench-") as scratch:
        model = build("ResNet50", args.size, conv_bias=True)
        model.save(Path(scratch) / "resnet50.keras")
        export = Path(scratch) / "export"
        start = time.perf_counter()
        export_model(Path(scratch) / "resnet50.keras", export, fold_bn=True, onnx=True, savedmodel=True, tflite=True)
        export_seconds = time.perf_counter() - start
        runs = {"parity": [], "localize": []}
        for _ in range(args.repeats):  # interleaved, so both see the same machine state
            for mode, done in runs.items():
                done.append(run_child(mode, export))
                print(mode, json.dumps({k: v for k, v in done[-1].items() if k != "detail"}), flush=True)

    def summary(mode: str) -> dict:
        return {"seconds_median": statistics.median(r["seconds"] for r in runs[mode]),
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs[mode]),
                "passed": all(r["passed"] for r in runs[mode]), "runs": runs[mode]}

    parity, localize = summary("parity"), summary("localize")
    ratio = localize["seconds_median"] / parity["seconds_median"]
    results = {
        "model": f"keras.applications ResNet50 {args.size}x{args.size}, weights=None, biased convs, random BN",
        "export": "--fold-bn, ONNX, SavedModel, TFLite", "export_seconds": export_seconds,
        "inputs": "parity's input sets: batch 1 and batch 7",
        "parity": parity, "localize": localize,
        "time_ratio_localize_over_parity": ratio, "goal_ratio_at_most": 3.0, "goal_met": ratio <= 3.0,
        "rss_ratio_localize_over_parity": localize["peak_rss_mb_max"] / parity["peak_rss_mb_max"],
        "environment": environment(),
        "command": f"python benchmarks/localize_cost.py --size {args.size} --repeats {args.repeats}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"parity {parity['seconds_median']:.1f} s, {parity['peak_rss_mb_max']:.0f} MB; localize "
          f"{localize['seconds_median']:.1f} s, {localize['peak_rss_mb_max']:.0f} MB; ratio {ratio:.2f}× "
          f"(goal ≤ 3×); wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
