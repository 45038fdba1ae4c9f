"""Does BN folding make exported models faster? Folded vs unfolded, measured in one run as ratios.

For each model (random moderate BN statistics and non-zero biases, as a trained net has):
* ONNX node count (zoo's `export_onnx`) and the TensorFlow ops left after Grappler in the SavedModel's serving
  function (what TF really executes: conv+bias+relu fused into _FusedConv2D, the rest as separate ops);
* the nodes ONNX Runtime really runs after its own ORT_ENABLE_ALL graph optimisations (its optimised model, saved
  with `optimized_model_filepath`), counted per op type: when the counts are the same for both, ORT runs the same
  ops and a speed ratio far from 1 is noise (the counts, not the node lists, are compared; the JSON key
  `ort_runs_same_graph` holds that comparison);
* ONNX Runtime CPU latency with ORT_ENABLE_ALL and with ORT_DISABLE_ALL graph optimisations, at batch 1 and 32;
* TF SavedModel (`serving_default`) latency at batch 1 and 32.

Timing: both variants are loaded side by side, warmed up, then run alternately (unfolded, folded, folded,
unfolded, …) so load from other processes hits both; we report the median (p50) of each and the ratio
unfolded/folded (> 1: folded is faster), plus the interquartile range of the per-pair ratios (a wide range means
the machine was noisy). ORT sessions run with thread spinning off unless --spin (see its help).

    python benchmarks/fold_speed.py                                   # resnet50, mobilenetv2, convnet, cnn_bn
    python benchmarks/fold_speed.py --models resnet50 --batches 1 --runs 100 --threads 1

Prints a Markdown table, writes benchmarks/results/fold_speed.json (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)
from _common import ROOT

import numpy as np  # noqa: E402

from export.timing import paired_ratios, summarize, time_interleaved  # noqa: E402
from _common import environment, ort_session, randomize_bn, savedmodel_function  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fold_speed.json"
RUNTIMES = ("ort-all", "ort-none", "savedmodel")
# Bookkeeping ops that are not work, left out of the Grappler op count.
_NOT_WORK = {"Placeholder", "ReadVariableOp", "Const", "NoOp", "Identity", "_Arg", "_Retval"}


# --------------------------------------------------------------------------------------------- models


def _applications(name: str):
    def build(size: int):
        import keras

        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10,
                                                 classifier_activation=None)
    return build


def convnet():
    """zoo-style conv→BN→ReLU net with conv biases: 64×64×3 → 4 blocks (32, 64, 128, 128) → GAP → Dense→BN→ReLU →
    Dense logits. Every BN follows a conv/Dense with a non-zero bias."""
    import keras

    L = keras.layers
    x = inputs = keras.Input((64, 64, 3), name="image")
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = L.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = L.BatchNormalization(name=f"block{i}_bn")(x)
        x = L.ReLU(name=f"block{i}_relu")(x)
        if i < 4:
            x = L.MaxPooling2D(name=f"block{i}_pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(64, name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    x = L.ReLU(name="fc_relu")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="convnet")


def cnn_bn():
    """zoo's own `cnn_bn` (28×28×1, conv biases on) from the registry."""
    from zoo.registry import create_model

    return create_model("cnn_bn")


def dncnn(size: int):
    """zoo's `dncnn` (depth 17, 64 filters, 15 BNs after bias-free convs), built for a --size² gray image: it is fully
    convolutional, so a fixed size runs the same ops as the dynamic-size model."""
    from zoo.registry import create_model

    return create_model("dncnn", input_shape=(size, size, 1))


MODELS = {
    "resnet50": (_applications("ResNet50"), "keras.applications.ResNet50 (convs with bias), --size² input"),
    "resnet50v2": (_applications("ResNet50V2"), "keras.applications.ResNet50V2 (BN convs bias-free), --size² input"),
    "mobilenetv2": (_applications("MobileNetV2"), "keras.applications.MobileNetV2 (bias-free convs), --size² input"),
    "convnet": (convnet, "zoo-style conv(bias)→BN→ReLU ×4, 64×64"),
    "cnn_bn": (cnn_bn, "zoo registry cnn_bn, 28×28×1"),
    "dncnn": (dncnn, "zoo registry dncnn (denoiser, bias-free convs), --size²×1 input"),
}
DEFAULT_MODELS = ("resnet50", "mobilenetv2", "convnet", "cnn_bn")
SIZED = ("resnet50", "resnet50v2", "mobilenetv2", "dncnn")  # built for the --size² input


def grappler_ops(path: Path) -> Counter:
    """Op types TensorFlow runs for the SavedModel's serving function after Grappler (CPU placement, so the remapper
    fusions such as _FusedConv2D apply as they do at run time)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    function = tf.saved_model.load(str(path)).signatures["serving_default"]
    graph_def = function.graph.as_graph_def()
    device = "/job:localhost/replica:0/task:0/device:CPU:0"
    for node in graph_def.node:
        node.device = device
    for library_function in graph_def.library.function:
        for node in library_function.node_def:
            node.device = device
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=function.graph)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(t.name for t in function.outputs)
    meta.collection_def["train_op"].CopyFrom(fetch)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    return Counter(node.op for node in optimized.node if node.op not in _NOT_WORK)


def ort_optimized_ops(path: Path) -> Counter:
    """Op types of the graph ONNX Runtime runs on the CPU after all its graph optimisations."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the "hardware-specific model" warning is expected: we only count nodes
    with tempfile.TemporaryDirectory(prefix="zoo-ort-opt-") as scratch:
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return Counter(node.op_type for node in graph.node)


# ------------------------------------------------------------------------------------------- timing


def time_pair(unfolded, folded, x, *, runs: int, warmup: int) -> dict:
    """Alternate the two callables (ABBA order) after warm-up; per-variant times in ms and per-pair ratios
    (export/timing.py: the method `zoo bench` uses too)."""
    times = time_interleaved({"unfolded": lambda: unfolded(x), "folded": lambda: folded(x)}, runs=runs, warmup=warmup)
    result = {key: summarize(values) for key, values in times.items()}
    result["ratio"] = result["unfolded"]["p50"] / result["folded"]["p50"]
    result["paired_ratio"] = paired_ratios(times, "folded")["unfolded"]
    return result


# ---------------------------------------------------------------------------------------------- run


def measure(name: str, workdir: Path, *, batches: list[int], runs: int, runs_large: int, warmup: int,
            threads: int, runtimes: list[str], seed: int, size: int = 128, spin: bool = True, log=print) -> dict:
    import keras

    from export.fold_bn import fold_batchnorm
    from export.onnx import export_onnx
    from export.savedmodel import export_savedmodel

    build, description = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = build(size) if name in SIZED else build()
    randomize_bn(model, seed, moderate=True)
    folded, report = fold_batchnorm(model)
    log(f"{name}: {report.summary()[:160]}")
    record = {"model": name, "description": description, "input": list(model.inputs[0].shape[1:]),
              "fold": {"total": report.total, "folded": len(report.folded), "kept": len(report.kept)},
              "loadavg_start": list(os.getloadavg())}
    paths = {}
    for variant, m in (("unfolded", model), ("folded", folded)):
        paths[variant] = {"onnx": workdir / f"{name}_{variant}.onnx", "savedmodel": workdir / f"{name}_{variant}_sm"}
        export_onnx(m, paths[variant]["onnx"])
        export_savedmodel(m, paths[variant]["savedmodel"])

    import onnx

    record["onnx_nodes"] = {}
    record["onnx_ops"] = {}
    record["tf_ops"] = {}
    record["ort_optimized_ops"] = {}
    for variant in ("unfolded", "folded"):
        ops = Counter(node.op_type for node in onnx.load(str(paths[variant]["onnx"])).graph.node)
        record["onnx_nodes"][variant] = sum(ops.values())
        record["onnx_ops"][variant] = dict(ops.most_common())
        record["tf_ops"][variant] = dict(grappler_ops(paths[variant]["savedmodel"]).most_common())
        record["ort_optimized_ops"][variant] = dict(ort_optimized_ops(paths[variant]["onnx"]).most_common())
    record["ort_runs_same_graph"] = record["ort_optimized_ops"]["unfolded"] == record["ort_optimized_ops"]["folded"]
    log(f"  ORT after its optimisations: {sum(record['ort_optimized_ops']['unfolded'].values())} → "
        f"{sum(record['ort_optimized_ops']['folded'].values())} nodes, same op counts: {record['ort_runs_same_graph']}")

    makers = {
        "ort-all": lambda v: ort_session(paths[v]["onnx"], "all", threads, spin),
        "ort-none": lambda v: ort_session(paths[v]["onnx"], "none", threads, spin),
        "savedmodel": lambda v: savedmodel_function(paths[v]["savedmodel"]),
    }
    rng = np.random.default_rng(seed)
    record["timings"] = {}
    for runtime in runtimes:
        unfolded, folded_call = makers[runtime]("unfolded"), makers[runtime]("folded")
        for batch in batches:
            x = rng.random((batch, *record["input"]), dtype=np.float32)
            if runtime == "savedmodel":
                import tensorflow as tf

                x = tf.constant(x)
            n = runs if batch < 8 else runs_large
            result = time_pair(unfolded, folded_call, x, runs=n, warmup=warmup)
            record["timings"][f"{runtime}@{batch}"] = {"runtime": runtime, "batch": batch, **result}
            log(f"  {runtime:10s} batch {batch:3d}: unfolded {result['unfolded']['p50']:8.2f} ms, folded "
                f"{result['folded']['p50']:8.2f} ms, ratio {result['ratio']:.3f} "
                f"(pairs {result['paired_ratio']['p25']:.2f}–{result['paired_ratio']['p75']:.2f})")
    record["loadavg_end"] = list(os.getloadavg())
    keras.backend.clear_session()
    return record


def table(records: list[dict]) -> str:
    header = ["model", "BN folded", "ONNX nodes unfolded → folded", "ORT nodes after its optimisations",
              "TF ops after Grappler unfolded → folded",
              "runtime", "batch", "p50 ms unfolded", "p50 ms folded", "unfolded/folded", "paired ratio IQR"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        first = True
        for t in r["timings"].values():
            tf_ops = (f"{sum(r['tf_ops']['unfolded'].values())} → {sum(r['tf_ops']['folded'].values())}"
                      if first else "")
            cells = [
                r["model"] if first else "",
                f"{r['fold']['folded']}/{r['fold']['total']}" if first else "",
                f"{r['onnx_nodes']['unfolded']} → {r['onnx_nodes']['folded']}" if first else "",
                _ort_nodes(r) if first else "",
                tf_ops,
                t["runtime"], str(t["batch"]),
                f"{t['unfolded']['p50']:.2f}", f"{t['folded']['p50']:.2f}",
                f"**{t['ratio']:.2f}**" if t["ratio"] < 1 else f"{t['ratio']:.2f}",
                f"{t['paired_ratio']['p25']:.2f}–{t['paired_ratio']['p75']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            first = False
    return "\n".join(lines)


def _ort_nodes(record: dict) -> str:
    ops = record.get("ort_optimized_ops")
    if not ops:
        return "–"
    counts = f"{sum(ops['unfolded'].values())} → {sum(ops['folded'].values())}"
    return counts + (" (same op counts)" if record["ort_runs_same_graph"] else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, from: {', '.join(RUNTIMES)}")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant at batch < 8 (default 40)")
    parser.add_argument("--runs-large", type=int, default=12, help="timed runs per variant at batch >= 8 (default 12)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per variant first (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for ORT and TF (default 0: each library's own default)")
    parser.add_argument("--size", type=int, default=128,
                        help="input height = width of the keras.applications models (default 128)")
    parser.add_argument("--spin", action="store_true",
                        help="let idle ORT worker threads spin (ORT's default). Off by default here: with two sessions "
                             "run alternately on 2 cores, the idle session's spinning threads steal the cores from "
                             "the running one (ResNet50 batch 1: ~120 ms instead of ~15 ms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    runtimes = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    if unknown := [n for n in names if n not in MODELS] + [r for r in runtimes if r not in RUNTIMES]:
        parser.error(f"unknown model(s)/runtime(s) {unknown}")

    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    env = environment(threads=args.threads or "library default")
    records = []
    with tempfile.TemporaryDirectory(prefix="zoo_speed_") as tmp:
        for name in names:
            try:
                records.append(measure(name, Path(tmp), batches=batches, runs=args.runs, runs_large=args.runs_large,
                                       warmup=args.warmup, threads=args.threads, runtimes=runtimes, seed=args.seed,
                                       size=args.size, spin=args.spin, log=log))
            except ImportError as e:  # cnn_bn needs the zoo package
                print(f"{name}: skipped ({e})", file=sys.stderr)
    env["loadavg_end"] = list(os.getloadavg())
    print(table(records))
    print(f"\nload average (1 min) at start {env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f} on "
          f"{env['cpus']} CPUs; threads: {env['threads']}; runs: {args.runs} (batch < 8) / {args.runs_large} "
          f"(batch >= 8) per variant after {args.warmup} warm-up, interleaved; keras.applications input "
          f"{args.size}²; ORT thread spinning {'on' if args.spin else 'off'}; ratio > 1: folded faster")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {"json": str(args.json)},
                                     "models": records}, indent=2, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
