"""Per-layer localisation: the first Keras layer where a runtime departs from the original model.

Parity (export/parity.py) compares final outputs; this compares every layer. For each input set of normal parity
the original model's layer outputs are computed once (nested models layer by layer, as `outer/inner`), then each
runtime of the export runs with its intermediate tensors exposed, one runtime at a time, and each layer's tensor is
compared with the reference under the same rule and tolerance as parity. Only the reference's activations and one
runtime's are ever held at once.

Finding a layer's tensor in a runtime. Every converter here keeps the Keras layer names in its op names (tracing
scopes them `functional_1/conv1_1/BiasAdd`, nested models `…/backbone_1/conv_1/…`; TFLite joins fused ops' names
with ';'). Ops are assigned to layers by those scopes, and a layer's tensor is the one that leaves its scope (a
tensor of the layer's ops that some other op, or the graph's output, consumes). Converters may hold a tensor in
NCHW, so a channels-first candidate is compared after moving the channel axis last.

    keras-folded  a multi-output copy of model_folded.keras
    savedmodel    the artifact's own graph, frozen (variables → constants) and pruned to every layer's tensor
    ort-*         a copy of the ONNX file with the layers' tensors added as graph outputs, run with the runtime's
                  own session options (device, disabled optimisers). ORT leaves a graph output alone, so exposing
                  a tensor can stop a fusion that changes the result (Pad_Fusion did, on ResNet50V2). When the
                  exposed copy's final outputs differ from the artifact's, only the tensors that survive ORT's own
                  graph optimisations are exposed, and the rest are listed as not observable.
    tflite        the interpreter with `experimental_preserve_all_tensors`, tensors read by name after the run

The rule for a layer is parity's with the absolute tolerance scaled by the tensor's own size: an element fails
only past both atol·max(1, max |ref|) and rtol·|ref|. Inner activations are often far larger than the outputs
(tens to hundreds), and the unscaled rule flags ordinary float rounding there. A layer that produces a model output is
compared on the artifact's own output, exactly as parity compares it (same figures, same rule), so a runtime
diverges when its outputs fail parity or any inner layer fails the scaled rule. An int8 runtime (model_int8.onnx)
is judged on its outputs only; its layers get their SQNR, 10·log10(Σ ref² / Σ (out − ref)²), and the lowest are
named: where quantization costs most, the candidates for `zoo export --int8 --keep-float LAYER`.

Folded BN. A BN folded into the conv before it has no tensor of its own: the conv's folded output is compared with
the original BN's output, and the original conv's output is listed as unmapped ("folded"). A BN folded into the
layer after it is unmapped too; that layer is compared as usual. Any layer with no counterpart is listed as
unmapped with the reason, never skipped silently.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, first_line
from export.parity import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    InputSet,
    compare,
    compare_output,
    runtime_tolerance,
)
from export.signature import runner_inputs

LayerPath = str  # a layer path: "conv1", nested "backbone/conv1"


# ----------------------------------------------------------------------------------------- Keras side


@dataclass(frozen=True)
class KerasLayer:
    path: LayerPath
    class_name: str
    shared: bool  # called more than once: no single output to compare


def keras_layers(model: Any, prefix: str = "") -> list[KerasLayer]:
    """Every layer of `model` in topological order, nested models' layers first and then the nested model itself
    (its output is its last layer's); input layers are left out (runtimes are fed the same inputs)."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = prefix + layer.name
        if _is_nested(layer):
            found += keras_layers(layer, path + "/")
        found.append(KerasLayer(path, type(layer).__name__, len(layer._inbound_nodes) > 1))
    return found


def layer_outputs(model: Any, inputs: Sequence[np.ndarray], prefix: str = "",
                  probes: dict | None = None) -> dict[LayerPath, np.ndarray]:
    """{layer path: its (first) output} for one run of `model` on `inputs` (in `model.inputs` order), inference mode,
    plus the model's outputs under OUTPUTS (a list in `model.outputs` order) at the top level. `probes` caches the
    multi-output copies between calls."""
    import keras

    probes = {} if probes is None else probes
    if id(model) not in probes:
        layers = [layer for layer in model.layers
                  if not isinstance(layer, keras.layers.InputLayer) and len(layer._inbound_nodes) == 1]
        outputs = [keras.tree.flatten(layer._inbound_nodes[0].output_tensors)[0] for layer in layers]
        nested = [layer for layer in layers if _is_nested(layer)]
        nested_inputs = [list(layer._inbound_nodes[0].input_tensors) for layer in nested]
        finals = list(model.outputs) if not prefix else []
        flat = outputs + [t for ts in nested_inputs for t in ts] + finals
        probes[id(model)] = (keras.Model(list(model.inputs), flat), layers, nested, nested_inputs, len(finals))
    probe, layers, nested, nested_inputs, n_finals = probes[id(model)]
    values = [keras.ops.convert_to_numpy(v) for v in keras.tree.flatten(probe(list(inputs), training=False))]
    found: dict[Any, Any] = {prefix + layer.name: value for layer, value in zip(layers, values)}
    extra = iter(values[len(layers):len(values) - n_finals])
    for layer, tensors in zip(nested, nested_inputs):
        found.update(layer_outputs(layer, [next(extra) for _ in tensors], f"{prefix}{layer.name}/", probes))
    if n_finals:
        found[OUTPUTS] = values[len(values) - n_finals:]
    return found


OUTPUTS = "\0outputs"  # layer_outputs' key for the model's own outputs (no layer path can hold a NUL)


def output_layers(model: Any) -> dict[str, LayerPath]:
    """{model output name: path of the layer producing it}."""
    from export.signature import describe

    names = describe(model).output_names
    # a nested model's output is the nested model layer's
    return {name: tensor._keras_history[0].name for name, tensor in zip(names, model.outputs)}


def _is_nested(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and bool(getattr(layer, "_inbound_nodes", None))


class LayerResolver:
    """Which layer an op belongs to, from its scoped name: 'StatefulPartitionedCall/functional_1/backbone_1/conv_1/
    BiasAdd' -> 'backbone/conv' (tracing appends _N to a scope; an exact name wins over a stripped one)."""

    def __init__(self, model: Any) -> None:
        self._children = self._tree(model)

    def _tree(self, model: Any) -> dict[str, Any]:
        return {layer.name: (self._tree(layer) if _is_nested(layer) else None) for layer in model.layers}

    def __call__(self, op_name: str) -> LayerPath | None:
        level, path = self._children, []
        for scope in op_name.split("/")[:-1] if "/" in op_name else []:
            for candidate in (scope, re.sub(r"_\d+$", "", scope)):
                if candidate in level:
                    path.append(candidate)
                    level = level[candidate]
                    break
            if level is None:
                break
        return "/".join(path) or None


# --------------------------------------------------------------------------------- runtime side


@dataclass
class Candidate:
    tensor: str  # the runtime's tensor name
    op: str  # the op producing it


@dataclass
class Observation:
    """What one runtime lets us see: candidate tensors per layer path (of the runtime's own model), a call that
    returns {tensor name: value} for them, and what could not be observed."""

    candidates: dict[LayerPath, list[Candidate]]
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    unobservable: dict[LayerPath, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class GraphNode:
    scopes: list[str]  # op names the node carries (TFLite: several, joined by ';' in its tensor name)
    op: str
    inputs: list[str]
    outputs: list[str]


def scope_exits(nodes: Sequence[GraphNode], graph_outputs: Sequence[str], resolve: Callable[[str], LayerPath | None],
                order: dict[LayerPath, int]) -> tuple[dict[LayerPath, list[Candidate]], dict[LayerPath, str]]:
    """({layer path: tensors leaving that layer's scope (consumed outside it, or a graph output)}, in graph order;
    {layer path: why it has no tensor of its own}). A nested model's path gets the exits of its whole scope too. A
    node naming several layers (a fused op) belongs to the latest of them in the model's order."""
    owner: dict[str, LayerPath | None] = {}
    produced: list[tuple[str, str, LayerPath]] = []
    fused: dict[LayerPath, str] = {}
    for node in nodes:
        paths = [p for p in map(resolve, node.scopes) if p is not None and p in order]
        path = max(paths, key=order.__getitem__) if paths else None
        for other in set(paths) - {path}:
            fused[other] = f"fused with {path} into one {node.op} op: compared at {path}"
        for tensor in node.outputs:
            owner[tensor] = path
            if path is not None and node.op not in ("Const", "Constant"):
                produced.append((tensor, node.op, path))
    consumers: dict[str, list[LayerPath | None]] = {}
    for node in nodes:
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(owner.get(node.outputs[0]) if node.outputs else None)
    outputs = set(graph_outputs)
    exits: dict[LayerPath, list[Candidate]] = {}
    for tensor, op, path in produced:
        users = consumers.get(tensor, [])
        parts = path.split("/")
        for depth in range(len(parts), 0, -1):
            scope = "/".join(parts[:depth])
            inside = scope + "/"
            leaves = tensor in outputs or any(u is None or (u != scope and not u.startswith(inside)) for u in users)
            if leaves:
                exits.setdefault(scope, []).append(Candidate(tensor, op))
    return exits, {path: why for path, why in fused.items() if path not in exits}


def observe(runner: Any, *, model: Any, order: dict[LayerPath, int], atol: float, rtol: float) -> Observation:
    """An Observation for a runner of export/runtimes.py (by its kind). `model` is the Keras model the runtime was
    made from (its layer names are the ones in the runtime's op names)."""
    from export.runtimes import KerasRunner, OrtRunner, SavedModelRunner, TFLiteRunner

    resolve = LayerResolver(model)
    if isinstance(runner, KerasRunner):
        return _observe_keras(runner)
    if isinstance(runner, SavedModelRunner):
        return _observe_savedmodel(runner, resolve, order)
    if isinstance(runner, TFLiteRunner):
        return _observe_tflite(runner, resolve, order, output_layers(model))
    if isinstance(runner, OrtRunner):
        return _observe_ort(runner, resolve, order, atol=atol, rtol=rtol)
    raise ExportError(f"no per-layer view of runtime {runner.name} ({type(runner).__name__})")


def _observe_keras(runner: Any) -> Observation:
    from export.signature import describe

    model, signature = runner.model, describe(runner.model)
    probes: dict = {}
    candidates = {layer.path: [Candidate(layer.path, layer.class_name)] for layer in keras_layers(model)}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = layer_outputs(model, [feeds[n] for n in signature.input_names], probes=probes)
        values[OUTPUTS] = dict(zip(signature.output_names, values[OUTPUTS]))  # the same model call as the runner's
        return values

    return Observation(candidates, run)


def _observe_savedmodel(runner: Any, resolve: LayerResolver, order: dict[LayerPath, int]) -> Observation:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(runner._function)
    graph = frozen.graph
    nodes = [GraphNode([op.name], op.type, [t.name for t in op.inputs], [t.name for t in op.outputs])
             for op in graph.get_operations()]
    candidates, fused = scope_exits(nodes, [t.name for t in frozen.outputs], resolve, order)
    placeholders = {op.name: op.outputs[0].name for op in graph.get_operations() if op.type == "Placeholder"}
    keyword = runner._keyword  # model input name -> the signature's (sanitised) keyword = placeholder name
    feeds_of = {name: placeholders.get(keyword[name], placeholders.get(name)) for name in runner.input_names}
    graph_def = graph.as_graph_def()
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    fetches = sorted({c.tensor for cs in candidates.values() for c in cs})
    pruned = wrapped.prune(feeds=[wrapped.graph.get_tensor_by_name(feeds_of[n]) for n in runner.input_names],
                           fetches=[wrapped.graph.get_tensor_by_name(t) for t in fetches])

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = pruned(*[tf.constant(feeds[n]) for n in runner.input_names])
        return {name: value.numpy() for name, value in zip(fetches, values)}

    return Observation(candidates, run, fused, ["the SavedModel's graph, frozen and pruned to each layer's tensor"])


def _observe_tflite(runner: Any, resolve: LayerResolver, order: dict[LayerPath, int],
                    outputs: dict[str, LayerPath]) -> Observation:
    from export.runtimes import _tflite_interpreter
    from export.savedmodel import SIGNATURE_KEY

    interpreter_class, _ = _tflite_interpreter()
    with warnings.catch_warnings():  # "for debugging purposes only … memory": that is what this is for
        warnings.simplefilter("ignore", UserWarning)
        interpreter = interpreter_class(model_path=str(runner.path), experimental_preserve_all_tensors=True)
    signature = interpreter.get_signature_runner(SIGNATURE_KEY)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    nodes = [GraphNode(names[int(op["outputs"][0])].split(";") if len(op["outputs"]) else [], op["op_name"],
                       [names[int(i)] for i in op["inputs"] if int(i) >= 0], [names[int(o)] for o in op["outputs"]])
             for op in interpreter._get_ops_details()]
    out_index = {name: detail["index"] for name, detail in signature.get_output_details().items()}
    candidates, fused = scope_exits(nodes, [names[i] for i in out_index.values()], resolve, order)
    producer = {output: node.op for node in nodes for output in node.outputs}
    for name, path in outputs.items():  # the signature's output tensors carry no layer name
        if name in out_index:
            tensor = names[out_index[name]]
            candidates.setdefault(path, []).append(Candidate(tensor, producer.get(tensor, "?")))
    index = {name: i for i, name in names.items()}
    scales = {t["name"]: t["quantization"] for t in interpreter.get_tensor_details() if t["quantization"][0]}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        signature(**{n: feeds[n] for n in runner.input_names})
        wanted = {c.tensor for cs in candidates.values() for c in cs}
        values = {name: interpreter.get_tensor(index[name]) for name in wanted}
        for name in wanted & scales.keys():  # an integer tensor of a quantized model: its real values
            scale, zero_point = scales[name]
            values[name] = (values[name].astype(np.float32) - zero_point) * np.float32(scale)
        return values

    return Observation(candidates, run, fused, ["interpreter with experimental_preserve_all_tensors"])


def _observe_ort(runner: Any, resolve: LayerResolver, order: dict[LayerPath, int], *, atol: float,
                 rtol: float) -> Observation:
    import onnx

    from export.onnx import with_outputs
    from export.ort_session import make_session

    proto = onnx.load(str(runner.path))
    nodes = [GraphNode([node.name], node.op_type, list(node.input), list(node.output)) for node in proto.graph.node]
    graph_outputs = [o.name for o in proto.graph.output]
    candidates, unobservable = scope_exits(nodes, graph_outputs, resolve, order)
    types = _onnx_types(proto)
    for path, cs in list(candidates.items()):
        kept = [c for c in cs if c.tensor in types]
        if not kept:
            unobservable[path] = "its tensor's type is unknown to ONNX shape inference"
            del candidates[path]
        else:
            candidates[path] = kept
    from export.ort_session import TENSORRT

    device = "tensorrt" if runner.providers[0] == TENSORRT else runner._device  # where the artifact really ran
    options = {"device": device, "disabled_optimizers": runner.disabled_optimizers}

    def session_exposing(tensors: set[str]):
        made = make_session(with_outputs(proto, tensors, types).SerializeToString(), **options)
        names = [o.name for o in made.session.get_outputs()]
        return lambda feeds: dict(zip(names, made.session.run(names, runner._model_inputs(feeds))))

    wanted = {c.tensor for cs in candidates.values() for c in cs}
    run = session_exposing(wanted)
    notes = [f"a copy of the ONNX file with {len(wanted)} layer tensors as graph outputs, same session options"]

    def changes_result(run_exposed) -> float | None:
        """How far the exposed copy's outputs are from the artifact's on one input (None: within the tolerance)."""
        from export.parity import standard_input_sets

        feeds = standard_input_sets(runner_inputs(runner), batches=(2,))[0][1]
        expected, got = runner(feeds), run_exposed(feeds)
        checks = [compare(expected[n], got[n], atol=atol, rtol=rtol) for n in runner.output_names]
        return max((c["max_abs"] for c in checks if not c["passed"]), default=None)

    changed = changes_result(run)
    if changed is not None:
        kept_by_ort = _ort_surviving_tensors(proto, options)
        for path, cs in list(candidates.items()):
            kept = [c for c in cs if c.tensor in kept_by_ort or c.tensor in graph_outputs]
            if not kept:
                unobservable[path] = ("ONNX Runtime's graph optimisations remove its tensor, and exposing it "
                                      "changes the result")
                del candidates[path]
            else:
                candidates[path] = kept
        wanted = {c.tensor for cs in candidates.values() for c in cs}
        run = session_exposing(wanted)
        notes = [(f"exposing every layer tensor changed ONNX Runtime's result (by {changed:.2e}): only the "
                  f"{len(wanted)} tensors its graph optimisations keep are observed")]
        if changes_result(run) is not None:
            notes.append("even so the exposed copy's result differs from the artifact's: per-layer figures may "
                         "not be what the artifact computes")
    return Observation(candidates, run, unobservable, notes)


def _onnx_types(proto: Any) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


def _ort_surviving_tensors(proto: Any, options: dict) -> set[str]:
    """Names of the tensors ONNX Runtime's graph optimisations keep (level extended: the fusions, without the CPU
    layout transformation that renames tensors without changing any value)."""
    import tempfile

    import onnx

    from export.ort_session import make_session

    with tempfile.TemporaryDirectory(prefix="zoo-localize-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        make_session(proto.SerializeToString(), graph_optimization="extended", optimized_model_path=optimized,
                     **options)
        graph = onnx.load(str(optimized), load_external_data=False).graph
        return {name for node in graph.node for name in node.output}


# ------------------------------------------------------------------------------------------- comparing


def _layouts(ref: np.ndarray, out: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The ways `out` can hold `ref`'s values: as is, channels-first (NCHW → NHWC), or with size-1 axes dropped."""
    found = []
    if out.shape == ref.shape:
        found.append(("", out))
    if out.ndim == ref.ndim >= 3:
        moved = np.moveaxis(out, 1, -1)
        if moved.shape == ref.shape:
            found.append((" (channels first)", moved))
    if not found and out.size == ref.size and [d for d in out.shape if d != 1] == [d for d in ref.shape if d != 1]:
        found.append(("", out.reshape(ref.shape)))
    return found


@dataclass
class LayerError:
    layer: LayerPath
    runtime_tensor: str
    op: str
    max_abs: float
    rel_to_scale: float
    passed: bool
    sqnr_db: float = math.inf  # 10·log10(Σ ref² / Σ (out − ref)²): the quantization figure (inf: exact)

    def merge(self, other: LayerError) -> None:
        """Keep the worst figures over input sets."""
        self.max_abs = _nanmax(self.max_abs, other.max_abs)
        self.rel_to_scale = _nanmax(self.rel_to_scale, other.rel_to_scale)
        self.sqnr_db = min(self.sqnr_db, other.sqnr_db)
        self.passed = self.passed and other.passed


def compare_layer(layer: LayerPath, ref: np.ndarray, values: dict[str, np.ndarray], candidates: list[Candidate],
                  atol: float, rtol: float, *, scaled: bool = True) -> LayerError | str:
    """The best-matching candidate tensor's error for one layer, or why none matches the reference's shape.
    `scaled`: the absolute tolerance grows with the tensor's max |ref| (inner layers); False: parity's rule as is
    (model outputs)."""
    best = None
    shapes = []
    for candidate in candidates:
        out = values.get(candidate.tensor)
        if out is None:
            continue
        shapes.append(tuple(out.shape))
        for layout, arranged in _layouts(ref, np.asarray(out)):
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            result = compare(ref, arranged, atol=atol * max(1.0, scale) if scaled else atol, rtol=rtol, detail=False)
            err = LayerError(layer, candidate.tensor + layout, candidate.op, result["max_abs"],
                             _ratio(result["max_abs"], scale), result["passed"], sqnr_db(ref, arranged))
            if best is None or _key(err) < _key(best):
                best = err
    if best is None:
        return f"no tensor of the reference's shape {tuple(ref.shape)} (found {sorted(set(shapes))})"
    return best


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when out equals ref; nan with NaN/Inf)."""
    ref64 = np.asarray(ref, np.float64)
    noise = float(np.sum(np.square(np.asarray(out, np.float64) - ref64)))
    signal = float(np.sum(np.square(ref64)))
    if not (math.isfinite(noise) and math.isfinite(signal)):
        return math.nan
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _ratio(error: float, scale: float) -> float:
    if math.isnan(error):
        return math.nan
    return 0.0 if error == 0 else (error / scale if scale > 0 else math.inf)


def _key(err: LayerError) -> float:
    return math.inf if math.isnan(err.max_abs) else err.max_abs


def _record(merged: dict[LayerPath, LayerError], error: LayerError) -> None:
    if error.layer in merged:
        merged[error.layer].merge(error)
    else:
        merged[error.layer] = error


def _op_of(observation: Observation, path: LayerPath) -> str:
    """The op producing a layer's tensor in the runtime ('?' when the layer has no observed tensor)."""
    found = observation.candidates.get(path)
    return found[-1].op if found else "?"


def _nanmax(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


# ---------------------------------------------------------------------------------------------- report


@dataclass
class RuntimeLocalization:
    runtime: str
    atol: float
    rtol: float
    precision: str = "float32"
    layers: list[LayerError] = field(default_factory=list)
    unmapped: dict[LayerPath, str] = field(default_factory=dict)
    output_max_abs: float | None = None
    output_passed: bool = True
    error: str | None = None  # the runtime could not run at all
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> LayerError | None:
        """The first layer that fails the rule. None for an int8 runtime: quantization changes every layer, so
        its layers are ranked by SQNR instead (`lowest_sqnr`) and only its outputs are judged, as parity does."""
        if self.precision == "int8":
            return None
        return next((layer for layer in self.layers if not layer.passed), None)

    def lowest_sqnr(self, count: int = 5) -> list[LayerError]:
        """The layers with the lowest SQNR (for a quantized runtime: where quantization costs most)."""
        finite = [e for e in self.layers if not math.isnan(e.sqnr_db) and e.sqnr_db != math.inf]
        return sorted(finite, key=lambda e: e.sqnr_db)[:count]

    @property
    def diverges(self) -> bool:
        return self.error is not None or not self.output_passed or self.first_divergent is not None

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergent
        return {
            "first_divergent_layer": first.layer if first else None,
            "first_divergent_op": first.op if first else None,
            "diverges": self.diverges,
            "atol": self.atol,
            "rtol": self.rtol,
            "output_max_abs": self.output_max_abs,
            "output_passed": self.output_passed,
            "error": self.error,
            "layers": [{"layer": e.layer, "runtime_tensor": e.runtime_tensor, "op": e.op, "max_abs": e.max_abs,
                        "rel_to_scale": e.rel_to_scale, "sqnr_db": e.sqnr_db, "passed": e.passed}
                       for e in self.layers],
            "lowest_sqnr_layers": [e.layer for e in self.lowest_sqnr()],
            "unmapped": [{"layer": layer, "reason": reason} for layer, reason in self.unmapped.items()],
            "notes": self.notes,
        }


@dataclass
class LocalizationReport:
    reference: str
    inputs: list[str]
    runtimes: list[RuntimeLocalization]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.runtimes) and not any(r.diverges for r in self.runtimes)

    def to_dict(self) -> dict[str, Any]:
        from export.parity import _jsonable

        return _jsonable({"passed": self.passed, "reference": self.reference, "inputs": self.inputs,
                          "notes": self.notes, "runtimes": {r.runtime: r.to_dict() for r in self.runtimes}})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, worst: int = 5) -> str:
        header = ("runtime", "first divergent layer", "op", "max abs", "rel", "output max abs", "layers")
        rows = []
        for r in self.runtimes:
            first = r.first_divergent
            if r.error:
                rows.append((r.runtime, "-", "-", "-", "-", "-", f"FAIL  {r.error}"))
                continue
            compared = f"{len(r.layers)} compared, {len(r.unmapped)} unmapped"
            rows.append((r.runtime, first.layer if first else "-", first.op if first else "-",
                         _num(first.max_abs) if first else "-", _num(first.rel_to_scale) if first else "-",
                         _num(r.output_max_abs), ("FAIL  " if r.diverges else "PASS  ") + compared))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in (header, *rows)]
        ranked = sorted(((r.runtime, e) for r in self.runtimes if r.precision != "int8" for e in r.layers),
                        key=lambda item: -item[1].rel_to_scale if not math.isnan(item[1].rel_to_scale) else -math.inf)
        if ranked:
            lines += ["", "worst layers (error relative to the tensor's max |ref|):"]
            lines += [f"  {name:<14} {e.layer}  [{e.op}: {e.runtime_tensor}]  max abs {_num(e.max_abs)}, "
                      f"rel {_num(e.rel_to_scale)}{'' if e.passed else '  FAIL'}" for name, e in ranked[:worst]]
        for r in self.runtimes:
            if r.precision == "int8" and r.lowest_sqnr():
                lines.append(f"{r.runtime} lowest SQNR: " + ", ".join(f"{e.layer} {e.sqnr_db:.1f} dB"
                                                                     for e in r.lowest_sqnr()))
            if r.unmapped:
                shown = "; ".join(f"{layer}: {reason}" for layer, reason in list(r.unmapped.items())[:4])
                more = f"; … {len(r.unmapped) - 4} more (see --json)" if len(r.unmapped) > 4 else ""
                lines.append(f"{r.runtime} unmapped: {shown}{more}")
            lines += [f"{r.runtime}: {note}" for note in r.notes]
        lines += [f"note: {note}" for note in self.notes]
        diverging = [r.runtime for r in self.runtimes if r.diverges]
        lines.append(f"reference {self.reference} on {', '.join(self.inputs)}; each layer judged by parity's rule "
                     f"at its runtime's tolerance")
        lines.append(f"FAIL: {', '.join(diverging)} diverge" if diverging else
                     "PASS: no runtime departs from the reference at any compared layer")
        return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2e}"


# -------------------------------------------------------------------------------------------- driver


def fold_mapping(fold_report: dict | None, runtime_layers: set[LayerPath]) -> tuple[dict[LayerPath, LayerPath], dict[LayerPath, str]]:
    """(reference layer -> runtime layer, reference layer -> why it has no counterpart) from a fold report."""
    renamed: dict[LayerPath, LayerPath] = {}
    gone: dict[LayerPath, str] = {}
    for fold in (fold_report or {}).get("folded", []):
        bn, into = fold["bn"], fold["into"]
        if "→ BN" in fold["pattern"]:  # producer → BN: the producer's folded output is the BN's
            renamed[bn] = bn if bn in runtime_layers else into
            gone[into] = f"BN {bn} is folded into it: its folded output is compared at {bn}"
        else:
            gone[bn] = f"folded into the next layer, {into}: no tensor of its own"
    return renamed, gone


def localize(
    reference: Any,
    candidates: Sequence[Any],
    input_sets: Sequence[InputSet],
    *,
    runtime_model: Any,
    fold_report: dict | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    notes: Sequence[str] = (),
) -> LocalizationReport:
    """Compare every layer of the reference Keras runner's model with each candidate runtime on `input_sets`.
    `runtime_model` is the Keras model the candidates were exported from (the folded one after --fold-bn), and
    `fold_report` (fold_report.json) says how its layers map onto the reference's."""
    model = reference.model
    ref_layers = keras_layers(model)
    order = {layer.path: i for i, layer in enumerate(keras_layers(runtime_model))}
    renamed, gone = fold_mapping(fold_report, set(order))
    produces = {path: name for name, path in output_layers(model).items()}
    results, observations = [], []
    for runner in candidates:
        result = RuntimeLocalization(runner.name, *runtime_tolerance(runner, atol, rtol),
                                     precision=getattr(runner, "precision", "float32"))
        results.append(result)
        try:
            observations.append(observe(runner, model=runtime_model, order=order, atol=result.atol, rtol=result.rtol))
        except Exception as e:
            result.error = f"{type(e).__name__}: {first_line(e)}"
            observations.append(None)
            continue
        result.notes = observations[-1].notes
        for layer in ref_layers:  # what cannot be compared, whatever the inputs
            target = renamed.get(layer.path, layer.path)
            if layer.path in produces:
                continue
            if layer.shared:
                result.unmapped[layer.path] = "shared layer (called more than once): no single output"
            elif layer.path in gone:
                result.unmapped[layer.path] = gone[layer.path]
            elif target not in order:
                result.unmapped[layer.path] = f"no layer {target} in the exported model"
            elif target not in observations[-1].candidates:
                result.unmapped[layer.path] = observations[-1].unobservable.get(
                    target, "no tensor of its own in this runtime (fused into a neighbour or removed)")
    merged: list[dict[LayerPath, LayerError]] = [{} for _ in candidates]
    for label, feeds in input_sets:  # the reference once per input set; one runtime's tensors at a time
        ref_values = layer_outputs(model, [feeds[n] for n in reference.signature.input_names])
        ref_out = dict(zip(reference.signature.output_names, ref_values.pop(OUTPUTS)))  # = reference(feeds)
        for runner, observation, result, errors in zip(candidates, observations, results, merged):
            if result.error is not None:
                continue
            try:
                values = observation.run(feeds)
                out = values.pop(OUTPUTS) if OUTPUTS in values else runner(feeds)
            except Exception as e:
                result.error = f"{label}: {type(e).__name__}: {first_line(e)}"
                continue
            tol = (result.atol, result.rtol)
            for name, expected in ref_out.items():
                check = (compare_output(expected, out[name], atol=tol[0], rtol=tol[1], precision=result.precision)
                         if name in out else None)
                result.output_passed &= bool(check and check["passed"])
                worst = check["max_abs"] if check else math.nan
                result.output_max_abs = worst if result.output_max_abs is None else _nanmax(result.output_max_abs,
                                                                                            worst)
            for layer in ref_layers:
                target = renamed.get(layer.path, layer.path)
                if layer.path in produces and produces[layer.path] in out:
                    # a model output: the artifact's own output, as parity compares it
                    name = produces[layer.path]
                    error = compare_layer(layer.path, ref_out[name], {name: out[name]},
                                          [Candidate(name, _op_of(observation, target))], *tol,
                                          scaled=result.precision == "int8")
                elif layer.path in result.unmapped:
                    continue
                else:
                    error = compare_layer(layer.path, ref_values[layer.path], values,
                                          observation.candidates.get(target, []), *tol)
                if isinstance(error, str):
                    result.unmapped[layer.path] = error
                else:
                    _record(errors, error)
            del out, values
        del ref_values
    for result, errors in zip(results, merged):
        result.layers = [errors[layer.path] for layer in ref_layers if layer.path in errors]
    return LocalizationReport(reference.name, [label for label, _ in input_sets], results, list(notes))


def localize_export(directory: Path | str, *, device: str = "auto", atol: float = DEFAULT_ATOL,
                    rtol: float = DEFAULT_RTOL, batches: tuple[int, ...] = (1, 7), seed: int = 0,
                    sizes: list[tuple[int, int]] | None = None,
                    ort_disabled: tuple[str, ...] = ()) -> LocalizationReport:
    """Localise every runtime of an export directory against its original Keras model, on parity's input sets
    (an int8 model on the held-out images its export kept, as parity does: export/pipeline.py parity_plan)."""
    from export.artifacts import FOLD_REPORT, FOLDED, find_artifacts, runners_for
    from export.loading import load_keras
    from export.pipeline import parity_plan

    directory = Path(directory)
    reference, candidates, notes = runners_for(directory, device=device, ort_disabled=ort_disabled)
    found = find_artifacts(directory)
    folded = next((r.model for r in candidates if r.name == "keras-folded" and hasattr(r, "model")), None)
    if folded is None and FOLDED in found:
        folded = load_keras(found[FOLDED])
    report_path = directory / FOLD_REPORT
    fold_report = json.loads(report_path.read_text()) if report_path.is_file() else None
    report = LocalizationReport(reference.name, [], [], list(notes))
    for runners, input_sets, extra in parity_plan(directory, reference, candidates, batches=batches, seed=seed,
                                                  sizes=sizes):
        if not runners:
            continue
        part = localize(reference, runners, input_sets, runtime_model=folded if folded is not None else reference.model,
                        fold_report=fold_report if folded is not None else None, atol=atol, rtol=rtol, notes=extra)
        report.runtimes += part.runtimes
        report.inputs += [label for label in part.inputs if label not in report.inputs]
        report.notes += [note for note in part.notes if note not in report.notes]
    return report
