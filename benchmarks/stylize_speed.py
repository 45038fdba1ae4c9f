"""How fast does a style network stylize a 512×512 image? Keras vs SavedModel vs ONNX Runtime, in one run.

The `style_transformer` (width 32, as in the paper; BN statistics random but moderate, as a trained net has) is
exported with zoo's pipeline — folded and unfolded — and each runtime stylizes the same seeded 512×512 image
(batch 1). Reported per runtime: p50/p90 latency in ms and the ratio to Keras' eager call in the same run
(> 1: faster than Keras). Goal (issue 4): ORT on the CPU ≤ 1 s per 512×512 image.

    python benchmarks/stylize_speed.py                      # norm batch, 512², 10 runs per runtime
    python benchmarks/stylize_speed.py --norm instance --size 256

Prints a Markdown table, writes benchmarks/results/stylize_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)
from _common import ROOT

import numpy as np  # noqa: E402

from _common import environment, ort_session, savedmodel_function  # noqa: E402
from export.timing import summarize, time_interleaved  # noqa: E402
from _common import randomize_bn  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stylize_speed.json"


def time_calls(calls: dict, x, *, runs: int, warmup: int) -> dict:
    """Round-robin over the callables (rotating the order each round) after warm-up; ms per call (export/timing.py)."""
    times = time_interleaved({name: (lambda call=call: call(x)) for name, call in calls.items()}, runs=runs, warmup=warmup)
    return {name: summarize(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norm", default="batch", choices=("batch", "instance"))
    parser.add_argument("--size", type=int, default=512, help="image height = width (default 512)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import keras

    from export.pipeline import export_model
    from zoo.registry import create_model

    env = environment(threads="library default")
    model = create_model("style_transformer", norm=args.norm)
    randomize_bn(model, moderate=True)
    x = np.random.default_rng(0).random((1, args.size, args.size, 3), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="zoo_stylize_") as tmp:
        tmp = Path(tmp)
        model.save(tmp / "model.keras")
        export_model(tmp / "model.keras", tmp / "folded", fold_bn=True, onnx=True)
        export_model(tmp / "model.keras", tmp / "unfolded", fold_bn=False, onnx=True)
        folded = keras.saving.load_model(tmp / "folded" / "model_folded.keras")
        calls = {
            "keras": lambda v: model(v, training=False),
            "keras folded": lambda v: folded(v, training=False),
            "savedmodel folded": savedmodel_function(tmp / "folded" / "saved_model"),
            "ort-cpu unfolded": ort_session(tmp / "unfolded" / "model.onnx", "all", 0),
            "ort-cpu folded": ort_session(tmp / "folded" / "model.onnx", "all", 0),
        }
        results = time_calls(calls, x, runs=args.runs, warmup=args.warmup)
    env["loadavg_end"] = list(os.getloadavg())
    base = results["keras"]["p50"]
    print(f"| runtime ({args.norm} norm, {args.size}×{args.size}, batch 1) | p50 ms | p90 ms | Keras p50 / p50 |")
    print("|---|---|---|---|")
    for name, stats in results.items():
        print(f"| {name} | {stats['p50']:.0f} | {stats['p90']:.0f} | {base / stats['p50']:.2f}× |")
    print(f"\nload average (1 min) {env['loadavg_start'][0]:.2f} → {env['loadavg_end'][0]:.2f} on {env['cpus']} CPUs; "
          f"{args.runs} runs each after {args.warmup} warm-up, round-robin; ORT graph optimisations all on")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {"json": str(args.json)},
                                     "results": results}, indent=2, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
