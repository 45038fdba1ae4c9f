"""BN folding and export on real architectures that no one here wrote (keras.applications, weights=None).

For each architecture: give every BN random inference statistics (γ ~ U(0.5, 1.5), β ~ N(0, 0.1),
mean ~ N(0, 0.1), var ~ U(0.5, 1.5): moderate, so a 100-layer net does not overflow) and every conv/dense that has
a bias a non-zero one (N(0, 0.1)); then measure

* BN layers before / after `fold_batchnorm`, and why the kept ones were kept (the layer before and after each);
* ONNX node counts (all nodes, Mul, Add, BatchNormalization) of (a) Keras' own `model.export(format="onnx")` on
  the unfolded model, (b) zoo's `export_onnx` on the unfolded model, (c) zoo's `export_onnx` on the folded model;
* the error of folded Keras, its SavedModel and its ONNX on ORT CPU against the original Keras model at batch 1
  and 4 (`export.parity`: an element fails only if it exceeds both atol and rtol·|ref|), plus ORT CPU on the
  *unfolded* ONNX as the runtime's own error floor.

    python benchmarks/applications.py                       # all architectures at 96×96 (several minutes)
    python benchmarks/applications.py --models ResNet50,MobileNetV2 --size 128

Prints a Markdown table and writes benchmarks/results/applications.json (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)
from _common import ROOT

import numpy as np  # noqa: E402

from _common import build_application as build, environment  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "applications.json"
# keras.applications builder name -> scale of the [0, 1) test inputs. Models that rescale internally
# (include_preprocessing: MobileNetV3, EfficientNet) expect pixels in [0, 255].
MODELS = {
    "ResNet50": 1.0,
    "ResNet50V2": 1.0,
    "MobileNetV2": 1.0,
    "MobileNetV3Small": 255.0,
    "EfficientNetB0": 255.0,
    "DenseNet121": 1.0,
    "Xception": 1.0,
    "InceptionV3": 1.0,
}
BATCHES = (1, 4)
TOL = 1e-5


def bn_names(model) -> list[str]:
    import keras

    return [l.name for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]


def neighbours(model) -> dict[str, tuple[str, list[str]]]:
    """{layer name: (class of the layer feeding it, [classes of the layers reading it])} from the Keras graph."""
    producer, readers = {}, {}
    for op in model.operations:
        for node in op._inbound_nodes:
            for tensor in node.input_tensors:
                source = tensor._keras_history.operation
                producer[op.name] = type(source).__name__
                readers.setdefault(source.name, []).append(type(op).__name__)
    return {name: (producer.get(name, "?"), readers.get(name, [])) for name in producer}


def kept_summary(model, kept: list[str]) -> str:
    """'after Add ×16, MaxPooling2D ×1; before Activation ×17' for the kept BN layers."""
    if not kept:
        return "-"
    graph = neighbours(model)
    before = Counter(graph[name][0] for name in kept)
    after = Counter("/".join(graph[name][1]) or "output" for name in kept)
    fmt = lambda c: ", ".join(f"{k} ×{v}" for k, v in c.most_common())  # noqa: E731
    return f"after {fmt(before)}; before {fmt(after)}"


def onnx_counts(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path)).graph
    ops = Counter(node.op_type for node in graph.node)
    opset = 0
    for entry in onnx.load(str(path), load_external_data=False).opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = entry.version
    return {"nodes": len(graph.node), "Mul": ops.get("Mul", 0), "Add": ops.get("Add", 0),
            "BatchNormalization": ops.get("BatchNormalization", 0), "Conv": ops.get("Conv", 0),
            "opset": opset, "ops": dict(ops.most_common())}


# ONNX Runtime's level-1 rule "Pad_Fusion" (1.31.1) folds a zero-valued Pad into a following MaxPool's `pads`,
# but MaxPool pads with -inf: wherever a border window holds only negative values the result changes (0 becomes the
# negative maximum). ResNet50V2 has conv1 → ZeroPadding2D → MaxPooling2D with no activation in between, so ORT's
# default session differs from Keras by ~1e-2 on both the folded and the unfolded export. The extra runner below
# disables that one rule to show what the export itself is worth.
ORT_SUSPECT_OPTIMIZERS = ("Pad_Fusion",)


def ort_without(path: Path, disabled: tuple[str, ...], *, name: str):
    """An OrtRunner (CPU) whose session is created with `disabled_optimizers`."""
    import onnxruntime as ort

    from export.runtimes import OrtRunner

    runner = OrtRunner(path, device="cpu", name=name)
    runner.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                          disabled_optimizers=list(disabled))
    runner.detail += f", disabled optimizers: {', '.join(disabled)}"
    return runner


def captured_constants(model) -> dict[str, np.ndarray]:
    """{graph tensor name: value} of the non-variable tensors the serving function captures. keras.layers.Normalization
    keeps its mean/variance as eager tensors (EfficientNet's stem); tf2onnx turns such captures into extra ONNX graph
    *inputs* (Keras' own model.export too), so a runtime fed only the model's inputs cannot run the file."""
    import tensorflow as tf

    from export.signature import serving_function

    concrete = serving_function(model).get_concrete_function()
    return {internal.name: np.asarray(external) for external, internal in concrete.graph.captures
            if external.dtype != tf.resource}


def extra_inputs(path: Path, expected: list[str]) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path)).graph.input if i.name not in expected]


def bake_inputs(path: Path, constants: dict[str, np.ndarray], out: Path) -> Path:
    """A copy of the ONNX file at `path` whose extra graph inputs named in `constants` are initializers instead.
    Benchmark-only diagnostic: it shows whether the rest of the export is exact; the fix belongs in export/onnx.py."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    for graph_input in [i for i in proto.graph.input if i.name in constants]:
        proto.graph.input.remove(graph_input)
        proto.graph.initializer.append(numpy_helper.from_array(constants[graph_input.name], graph_input.name))
    onnx.save(proto, str(out))
    return out


def measure(name: str, size: int, workdir: Path, seed: int = 0, log=print, conv_bias: bool = False) -> dict:
    """Fold, export three ways and check parity for one architecture; returns the JSON record."""
    import keras

    from export.fold_bn import fold_batchnorm
    from export.onnx import export_onnx
    from export.parity import make_inputs, run_parity
    from export.runtimes import KerasRunner, OrtRunner, SavedModelRunner
    from export.savedmodel import export_savedmodel
    from export.signature import describe

    record: dict = {"model": name + (" +bias" if conv_bias else ""), "input": [size, size, 3], "notes": [],
                    "conv_bias": conv_bias}
    timings = record["seconds"] = {}
    clock = time.perf_counter()

    def lap(key: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[key] = round(now - clock, 1)
        clock = now

    model = build(name, size, seed, conv_bias=conv_bias)
    scale = MODELS[name]
    signature = describe(model)
    model(np.zeros((1, size, size, 3), np.float32), training=False)  # Keras' ONNX export needs a called model
    lap("build")

    folded, report = fold_batchnorm(model)
    lap("fold")
    before, after = bn_names(model), bn_names(folded)
    kept = [k.bn for k in report.kept]
    record["bn"] = {"before": len(before), "after": len(after), "folded": len(report.folded), "kept": kept,
                    "kept_summary": kept_summary(model, kept), "report": report.to_dict()}
    log(f"{name}: {report.summary()[:200]}")

    paths = {"keras_export": workdir / f"{name}_keras_export.onnx", "zoo_unfolded": workdir / f"{name}_zoo.onnx",
             "zoo_folded": workdir / f"{name}_zoo_folded.onnx"}
    model.export(str(paths["keras_export"]), format="onnx", verbose=False)
    lap("keras_export_onnx")
    export_onnx(model, paths["zoo_unfolded"])
    lap("zoo_export_onnx_unfolded")
    export_onnx(folded, paths["zoo_folded"])
    lap("zoo_export_onnx_folded")
    savedmodel = workdir / f"{name}_folded_savedmodel"
    export_savedmodel(folded, savedmodel)
    lap("savedmodel_folded")
    record["onnx"] = {key: onnx_counts(path) for key, path in paths.items()}
    extra = {key: extra_inputs(path, signature.input_names if key != "keras_export" else [])
             for key, path in paths.items()}
    extra["keras_export"] = extra["keras_export"][1:]  # Keras names the image input itself (keras_tensor…)
    record["onnx_extra_inputs"] = extra

    # ORT runs on the files as exported. When they have extra inputs, the diagnostic runners use a copy with those
    # inputs baked in as initializers, so the remaining figures still say whether folding + export are exact.
    ort_folded, ort_unfolded = paths["zoo_folded"], paths["zoo_unfolded"]
    if extra["zoo_folded"] or extra["zoo_unfolded"]:
        constants = captured_constants(folded) | captured_constants(model)
        ort_folded = bake_inputs(ort_folded, constants, workdir / f"{name}_zoo_folded_baked.onnx")
        ort_unfolded = bake_inputs(ort_unfolded, constants, workdir / f"{name}_zoo_baked.onnx")
        record["notes"].append(
            f"zoo ONNX has {len(extra['zoo_folded'])} extra graph input(s) {extra['zoo_folded']} (captured constants; "
            f"keras.export too: {len(extra['keras_export'])}); the (…) ORT columns use a copy with them baked in"
        )

    input_sets = []
    for batch in BATCHES:
        feeds = make_inputs(signature.inputs, batch=batch, seed=seed + batch)
        input_sets.append((f"batch {batch}", {k: (v * scale).astype(v.dtype) for k, v in feeds.items()}))
    reference = KerasRunner(model, name="keras")
    candidates = [
        KerasRunner(folded, name="keras-folded"),
        SavedModelRunner(savedmodel, name="savedmodel"),
        OrtRunner(paths["zoo_folded"], device="cpu", name="ort-cpu"),
        OrtRunner(ort_unfolded, device="cpu", name="ort-cpu-unfolded"),
        ort_without(ort_folded, ORT_SUSPECT_OPTIMIZERS, name="ort-cpu-no-padfusion"),
    ]
    parity = run_parity(reference, candidates, input_sets, atol=TOL, rtol=TOL)
    lap("parity")
    ref_scale = max(float(np.abs(out).max()) for _, feeds in input_sets for out in reference(feeds).values())
    record["max_abs_reference"] = ref_scale
    record["parity"] = parity.to_dict()
    record["errors"] = {}
    for runtime in (c.name for c in candidates):
        rows = [r for r in parity.rows if r.runtime == runtime]
        figures = [r.max_abs for r in rows]
        ran = all(v is not None and not math.isnan(v) for v in figures)
        record["errors"][runtime] = {
            "passed": all(r.passed for r in rows),
            "max_abs": max(figures) if ran else None,
            "max_rel": max(r.max_rel for r in rows) if ran else None,
            "min_tol": max(r.min_tol for r in rows) if ran else None,
            "abs_only_pass": ran and max(figures) <= TOL,
            "reasons": [r.reason for r in rows if r.reason],
        }
    record["passed"] = all(record["errors"][r]["passed"] for r in ("keras-folded", "savedmodel", "ort-cpu"))
    if not record["errors"]["ort-cpu"]["passed"] and not record["errors"]["ort-cpu-unfolded"]["passed"] \
            and record["errors"]["ort-cpu-no-padfusion"]["passed"]:
        record["notes"].append("ORT's default session is off on the unfolded export too and exact without its "
                               "Pad_Fusion rule (zero Pad folded into MaxPool)")
    log(parity.table())
    keras.backend.clear_session()
    return record


def table(records: list[dict]) -> str:
    header = ["model", "input", "BN before → after", "kept BNs", "ONNX nodes keras.export / zoo / zoo folded",
              "Mul/Add keras.export", "Mul/Add zoo folded", "max abs err keras-folded", "savedmodel", "ort-cpu",
              "(ort-cpu unfolded)", "(ort-cpu no Pad_Fusion)", "max abs out", "min tol", f"pass {TOL:g}", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        o, e = r["onnx"], r["errors"]
        tols = [e[k]["min_tol"] for k in ("keras-folded", "savedmodel", "ort-cpu")]
        cells = [
            r["model"], "×".join(map(str, r["input"][:2])),
            f"{r['bn']['before']} → {r['bn']['after']}",
            f"{len(r['bn']['kept'])}: {r['bn']['kept_summary']}" if r["bn"]["kept"] else "0",
            f"{o['keras_export']['nodes']} / {o['zoo_unfolded']['nodes']} / {o['zoo_folded']['nodes']}",
            f"{o['keras_export']['Mul']}/{o['keras_export']['Add']}",
            f"{o['zoo_folded']['Mul']}/{o['zoo_folded']['Add']}",
            *(_num(e[k]["max_abs"]) for k in ("keras-folded", "savedmodel", "ort-cpu", "ort-cpu-unfolded",
                                             "ort-cpu-no-padfusion")),
            _num(r["max_abs_reference"]), "-" if None in tols else _num(max(tols)),
            "PASS" if r["passed"] else "FAIL " + ", ".join(
                k for k in ("keras-folded", "savedmodel", "ort-cpu") if not e[k]["passed"]),
            "; ".join(r["notes"]) or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--size", type=int, default=96, help="input height = width (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conv-bias", action="store_true",
                        help="rebuild each architecture with a (random, non-zero) bias on every conv")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported files in this folder")
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    env = environment()
    records = []
    with tempfile.TemporaryDirectory(prefix="zoo_apps_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            records.append(measure(name, args.size, workdir, args.seed, log=log, conv_bias=args.conv_bias))
            log(f"{name} done in {sum(records[-1]['seconds'].values()):.0f} s: {records[-1]['seconds']}")
    env["loadavg_end"] = list(os.getloadavg())
    text = table(records)
    print(text)
    print(f"\nload average at start {env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f} "
          f"({env['cpus']} CPUs); inputs uniform [0,1) (×255 for models that rescale internally); "
          f"pass = every element within atol={TOL:g} or rtol={TOL:g}·|ref|")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "size": args.size, "seed": args.seed, "tolerance": TOL,
                                     "conv_bias": args.conv_bias,
                                     "models": records}, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0 if all(r["passed"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
