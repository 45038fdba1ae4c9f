"""Keep ONNX Runtime from fusing a zero Pad into a following pool where that changes the result.

ORT's `Pad_Fusion` graph optimiser (on by default) removes a constant Pad whose value is 0 and adds its pads to a
following Conv or MaxPool (ORT's current source also lists AveragePool). That is exact for Conv, but not for
pools: MaxPool's own padding never wins the max (it acts like -inf), and AveragePool's default
`count_include_pad=0` leaves padding out of the mean. So `ZeroPadding2D → MaxPooling2D` over values that can be
negative (ResNet50V2's stem: conv → pad → pool) gives a different answer under ORT than under Keras, TensorFlow or
the ONNX reference (measured with ORT 1.31: 6.4e-3 on ResNet50V2, 2.1 on a conv with negative outputs). ORT 1.31
did not change a zero Pad → AveragePool; it is guarded anyway, which costs one unfused Pad.

The fusion fires only when the pad value's bytes are all zero, so such a Pad gets the value -0.0 instead: it
pads with a number equal to 0 (IEEE `-0.0 == 0.0`, same sums and maxima), and ORT leaves the Pad alone. The only
visible difference is that a padded position that wins a max reads as -0.0. A MaxPool whose input cannot be
negative (straight after Relu, Sigmoid, Softplus, Abs, or Clip with min ≥ 0 — ResNet50's stem) is left as it is,
since the fusion is exact there and saves a copy.
"""
from __future__ import annotations

from typing import Any

NEG_ZERO_PREFIX = "zoo_pad_value_neg_zero"
_NON_NEGATIVE_OPS = {"Relu", "Sigmoid", "Softplus", "Abs"}


def guard_zero_pads_before_pools(proto: Any) -> list[str]:
    """Give every zero Pad that feeds a pool which would change under fusion the pad value -0.0 (in place).

    Returns the names of the Pad nodes changed.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = _constants(graph)
    types: dict[str, int] | None = None  # shape inference only once a Pad needs the guard
    changed = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or not _is_zero_constant_pad(pad, constants):
            continue
        pool = _pool_after(pad, consumers)
        if pool is None or (pool.op_type == "MaxPool" and _non_negative(pad.input[0], producers, constants)):
            continue
        types = types if types is not None else _element_types(proto)
        element_type = types.get(pad.input[0])
        dtype = helper.tensor_dtype_to_np_dtype(element_type) if element_type else None
        if dtype is None or dtype.kind != "f":
            continue  # unknown or integer data: no -0.0 to pad with
        value_name = f"{NEG_ZERO_PREFIX}_{dtype.name}"
        if value_name not in constants:
            graph.initializer.append(numpy_helper.from_array(np.array(-0.0, dtype), value_name))
            constants[value_name] = graph.initializer[-1]
        inputs = list(pad.input) + [""] * (3 - len(pad.input))
        inputs[2] = value_name
        del pad.input[:]
        pad.input.extend(inputs)
        changed.append(pad.name)
    return changed


def _element_types(proto: Any) -> dict[str, int]:
    """ONNX element type of every value shape inference can type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    values = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    types = {value.name: value.type.tensor_type.elem_type for value in values if value.type.HasField("tensor_type")}
    types.update({tensor.name: tensor.data_type for tensor in proto.graph.initializer})
    return types


def _constants(graph: Any) -> dict[str, Any]:
    """Initializers and Constant-node values by name, as TensorProtos (converted only when looked at)."""
    values = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values.update({node.output[0]: a.t for a in node.attribute if a.name == "value"})
    return values


def _array(constants: dict[str, Any], name: str) -> Any | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(constants[name]) if name in constants else None


def _is_zero_constant_pad(pad: Any, constants: dict[str, Any]) -> bool:
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    if mode != b"constant":
        return False
    if len(pad.input) < 3 or not pad.input[2]:
        return True  # no value: pads with 0
    value = _array(constants, pad.input[2])
    return value is not None and value.dtype.kind == "f" and not value.tobytes().strip(b"\0")


def _pool_after(pad: Any, consumers: dict[str, list[Any]]) -> Any | None:
    """The MaxPool or AveragePool(count_include_pad=0) that is the Pad's only consumer (through one Cast)."""
    users = consumers.get(pad.output[0], [])
    if len(users) == 1 and users[0].op_type == "Cast":
        users = consumers.get(users[0].output[0], [])
    if len(users) != 1:
        return None
    pool = users[0]
    if pool.op_type == "MaxPool":
        return pool
    if pool.op_type == "AveragePool":
        include_pad = next((a.i for a in pool.attribute if a.name == "count_include_pad"), 0)
        return pool if include_pad == 0 else None
    return None


def _non_negative(name: str, producers: dict[str, Any], constants: dict[str, Any]) -> bool:
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type in _NON_NEGATIVE_OPS:
        return True
    low = _array(constants, node.input[1]) if node.op_type == "Clip" and len(node.input) > 1 else None
    return low is not None and float(low) >= 0.0
