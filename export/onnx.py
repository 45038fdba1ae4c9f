"""ONNX export through `tf2onnx.convert.from_function` on the named serving function (export/signature.py).

`from_keras` fails on Sequential models (KeyError 'keras_tensor_N'); tracing our own tf.function works for every
model. What this module adds on top of tf2onnx:
- graph input/output names equal the model's input/output names, graph outputs in model order;
- readable symbolic dims: "batch" for axis 0 everywhere, `<tensor>_height`/`_width` for the H×W of 4-D tensors,
  `<tensor>_dim<k>` for other dynamic axes (tf2onnx writes `unk__NN`);
- `nchw=True`: tf2onnx's inputs_as_nchw/outputs_as_nchw for every 4-D tensor, which removes the leading and
  trailing Transposes; the metadata records which tensors were transposed so a runner can feed NHWC data;
- metadata_props from the caller plus the input layout;
- an unsupported TensorFlow op is an ExportError naming the op and its layer (tf2onnx only logs it and writes an
  invalid graph), and the result must pass `onnx.checker`;
- constants the traced function captures (not variables: e.g. keras.layers.Normalization's mean and variance in
  EfficientNet's stem) become initializers; tf2onnx (and Keras' own model.export) leave them as extra graph
  inputs, which no runtime fed the model's inputs can run;
- models whose weights approach protobuf's 2 GiB limit are converted with tf2onnx's large-model mode and saved
  with ONNX external data: `model.onnx` holds the graph, `model.onnx.data` (next to it) the weights, which is the
  layout ONNX Runtime loads directly (tf2onnx's own large-model output is a zip that ORT cannot open);
- tf2onnx's `reshape_optimizer` is switched off: on a Reshape that produces a graph output (e.g. the Transpose
  tf2onnx turns into a Reshape when C=1, as in a grayscale DnCNN) it sometimes drops the Squeeze it inserts,
  depending on node order in memory, so the same model converted twice could give an output of rank 5 instead
  of 4 (seen 4 times in 30 conversions). Without it no zoo or keras.applications graph gained a node; and every
  conversion's output ranks are checked against the model's (ONNX shape inference, strict) so a wrong graph is
  an error, never a file;
- a zero Pad before a MaxPool/AveragePool gets the pad value -0.0, so ONNX Runtime's Pad_Fusion cannot turn it into
  pool padding, which changes the result (export/pad_pool.py).
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

from export.atomic import atomic_output
from export.errors import ExportError, first_line
from export.pad_pool import guard_zero_pads_before_pools
from export.signature import ModelSignature, TensorInfo, describe, layer_of_op, serving_function, tensor_specs

MIN_OPSET = 13
DEFAULT_OPSET = 17
NHWC_TO_NCHW = (0, 3, 1, 2)
# metadata_props keys written here and read by export/runtimes.py
LAYOUT_KEY = "input_layout"
NCHW_INPUTS_KEY = "nchw_inputs"
NCHW_OUTPUTS_KEY = "nchw_outputs"
# above this many bytes of weights the model is written with external data (protobuf refuses messages > 2 GiB,
# and the graph itself needs room too)
LARGE_MODEL_BYTES = 1536 * 2**20
EXTERNAL_DATA_SUFFIX = ".data"


def export_onnx(
    model: Any,
    path: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    nchw: bool = False,
    metadata: dict[str, str] | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write `model` as ONNX at `path` (atomic) with a dynamic batch dimension and the model's tensor names.

    `external_data`: weights in `<path>.data` beside the graph; None (default) chooses it when the weights exceed
    LARGE_MODEL_BYTES. The data file is written before the graph file, so a failure never leaves a graph that
    points at missing weights.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is not supported: use opset {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    path = Path(path)
    signature = describe(model)
    nchw_inputs = [t.name for t in signature.inputs if len(t.shape) == 4] if nchw else []
    nchw_outputs = [t.name for t in signature.outputs if len(t.shape) == 4] if nchw else []
    if nchw and not nchw_inputs:
        raise ExportError("--nchw needs a 4-D image input (N,H,W,C); this model has none: export without --nchw")

    if external_data is None:
        external_data = _weight_bytes(model) > LARGE_MODEL_BYTES
    function = serving_function(model, signature)
    proto = _convert(model, function, signature, opset, nchw_inputs, nchw_outputs, large=external_data)
    _bake_captured_constants(proto, function, signature)
    guard_zero_pads_before_pools(proto)
    _name_outputs(proto.graph, signature)
    _name_dynamic_dims(proto.graph, signature, set(nchw_inputs) | set(nchw_outputs))
    layout = {LAYOUT_KEY: "NCHW" if nchw else "NHWC"}
    if nchw:
        layout |= {NCHW_INPUTS_KEY: json.dumps(nchw_inputs), NCHW_OUTPUTS_KEY: json.dumps(nchw_outputs)}
    onnx.helper.set_model_props(proto, {**(metadata or {}), **layout})
    if not external_data:
        _check(proto)
        _check_output_ranks(proto, signature)
        with atomic_output(path) as tmp:
            onnx.save(proto, str(tmp))
        return path
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    try:
        with atomic_output(path) as tmp:
            # onnx writes the weights to `location` relative to the graph file's folder, i.e. the final folder
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
            _check(str(tmp))  # by path: the checker cannot take a > 2 GiB message in memory
    except BaseException:
        data.unlink(missing_ok=True)
        raise
    return path


def _check(model: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the converted ONNX model is invalid: {first_line(e)}") from e


def _check_output_ranks(proto: Any, signature: ModelSignature) -> None:
    """Every graph output must have the rank of the model's output of that name (strict shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ExportError(f"the converted ONNX model has inconsistent shapes: {first_line(e)}") from e
    ranks = {t.name: len(t.shape) for t in signature.outputs}
    for output in inferred.graph.output:
        shape = output.type.tensor_type.shape
        if output.type.tensor_type.HasField("shape") and len(shape.dim) != ranks.get(output.name, len(shape.dim)):
            raise ExportError(f"the converted ONNX model's output {output.name!r} has rank {len(shape.dim)}, "
                              f"the model's has rank {ranks[output.name]}: tf2onnx produced a wrong graph")


def _weight_bytes(model: Any) -> int:
    import numpy as np

    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)


def onnx_layout(metadata: dict[str, str]) -> tuple[list[str], list[str]]:
    """(inputs, outputs) that an `nchw=True` export transposed to N,C,H,W, read from the model's metadata_props."""
    return json.loads(metadata.get(NCHW_INPUTS_KEY, "[]")), json.loads(metadata.get(NCHW_OUTPUTS_KEY, "[]"))


class _UnsupportedOps(logging.Handler):
    """Collects tf2onnx's "Tensorflow op [scope/name: Type] is not supported" log records."""

    PATTERN = re.compile(r"Tensorflow op \[(?P<node>[^:\]]+): (?P<op>[^\]]+)\] is not supported")

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.found: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.found.append((match["node"], match["op"]))


def _convert(model: Any, function: Any, signature: ModelSignature, opset: int, nchw_inputs: list[str],
             nchw_outputs: list[str], *, large: bool = False):
    import tf2onnx
    from tf2onnx import optimizer as tf2onnx_optimizers

    import numpy as np

    unsupported = _UnsupportedOps()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(unsupported)
    # tf2onnx 1.17's large-model path (graph.py) still calls np.product, which NumPy 2 removed
    shimmed = large and not hasattr(np, "product")
    if shimmed:
        np.product = np.prod
    optimizers = tf2onnx_optimizers._get_optimizers()
    all_optimizers = optimizers.copy()
    optimizers.pop("reshape_optimizer", None)  # see the module docstring
    try:
        proto, storage = tf2onnx.convert.from_function(
            function,
            input_signature=tensor_specs(signature),
            opset=opset,
            inputs_as_nchw=nchw_inputs or None,
            outputs_as_nchw=nchw_outputs or None,
            large_model=large,
        )
    except Exception as e:
        raise ExportError(f"ONNX conversion failed: {first_line(e)}") from e
    finally:
        logger.removeHandler(unsupported)
        optimizers.clear()
        optimizers.update(all_optimizers)
        if shimmed:
            del np.product
    if unsupported.found:
        node, op = unsupported.found[0]
        where = layer_of_op(node, model)
        raise ExportError(
            f"ONNX conversion failed: TensorFlow op {op}{f' in layer {where!r}' if where else ''} is not supported "
            f"by tf2onnx at opset {opset}; try a newer --opset or replace that layer"
        )
    if large:
        _inline_external_tensors(proto, storage)
    return proto


def _bake_captured_constants(proto: Any, function: Any, signature: ModelSignature) -> None:
    """Graph inputs that are not model inputs but captured constants of `function` become initializers."""
    import numpy as np
    import tensorflow as tf
    from onnx import numpy_helper

    expected = {t.name for t in signature.inputs}
    extra = [i for i in proto.graph.input if i.name not in expected]
    if not extra:
        return
    concrete = function.get_concrete_function()  # the trace tf2onnx converted (input_signature is fixed)
    constants = {internal.name: np.asarray(external) for external, internal in concrete.graph.captures
                 if external.dtype != tf.resource}
    unknown = [i.name for i in extra if i.name not in constants]
    if unknown:
        raise ExportError(f"ONNX conversion left graph inputs {unknown} that are neither model inputs nor constants")
    for graph_input in extra:
        proto.graph.input.remove(graph_input)
        proto.graph.initializer.append(numpy_helper.from_array(constants[graph_input.name], graph_input.name))


def _inline_external_tensors(proto: Any, storage: Any) -> None:
    """Put tf2onnx's large-model tensors back as raw_data, for onnx.save_model to write as one external file."""
    from onnx import TensorProto

    def tensors():
        yield from proto.graph.initializer
        for node in proto.graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t

    for tensor in tensors():
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next(entry.value for entry in tensor.external_data if entry.key == "location")
        tensor.raw_data = storage.name_to_tensor_data[location]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _name_outputs(graph: Any, signature: ModelSignature) -> None:
    """Give graph outputs the model's output names, in model order.

    tf2onnx emits one graph output per tensor of the serving function's result dict, in flatten (sorted-key) order,
    named after the keys in tf2onnx 1.17; older versions name them after the TF tensors (Identity:0 …).
    """
    import tensorflow as tf

    current = [output.name for output in graph.output]
    if set(current) != set(signature.output_names):
        produced = tf.nest.flatten({name: name for name in signature.output_names})
        for old, new in zip(current, produced):
            if old != new:
                _rename_value(graph, old, new)
    by_name = {output.name: output for output in graph.output}
    ordered = [copy.deepcopy(by_name[name]) for name in signature.output_names]
    del graph.output[:]
    graph.output.extend(ordered)


def _rename_value(graph: Any, old: str, new: str) -> None:
    """Rename a graph output; an output that is a graph input or an initializer gets an Identity node instead."""
    import onnx

    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    if old in sources:
        graph.node.append(onnx.helper.make_node("Identity", [old], [new], name=f"{new}_identity"))
    else:
        for node in graph.node:
            node.output[:] = [new if name == old else name for name in node.output]
            node.input[:] = [new if name == old else name for name in node.input]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def _name_dynamic_dims(graph: Any, signature: ModelSignature, nchw_tensors: set[str]) -> None:
    """Replace tf2onnx's `unk__NN` dim names on graph inputs/outputs with names that say what the axis is."""
    infos = {t.name: t for t in (*signature.inputs, *signature.outputs)}
    for value in (*graph.input, *graph.output):
        info = infos.get(value.name)
        if info is None:
            continue
        for onnx_axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            keras_axis = NHWC_TO_NCHW[onnx_axis] if value.name in nchw_tensors else onnx_axis
            dim.dim_param = _dim_name(info, keras_axis)


def _dim_name(info: TensorInfo, keras_axis: int) -> str:
    if keras_axis == 0:
        return "batch"
    if len(info.shape) == 4 and keras_axis in (1, 2):
        return f"{info.name}_{'height' if keras_axis == 1 else 'width'}"
    return f"{info.name}_dim{keras_axis}"


def with_outputs(proto: Any, names: Any, types: dict[str, int] | None = None) -> Any:
    """A copy of the ONNX model `proto` that also returns the intermediate tensors `names` as graph outputs (of
    element type `types[name]`, float32 when not given). Used to read inner tensors (export/localize.py,
    export/bias_correction.py); ONNX Runtime does not fuse a tensor away once it is a graph output."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {o.name for o in copy.graph.output}
    for name in sorted(set(names) - present):
        element = (types or {}).get(name, onnx.TensorProto.FLOAT)
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, element, None))
    return copy
