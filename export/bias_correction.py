"""Bias correction of a QDQ int8 model (Nagel et al. 2019, "Data-Free Quantization", §4.2, with the input means
taken from calibration data): rounding a conv's weights to int8 shifts the mean of each output channel by

    E[W_q·x] − E[W·x] = (W_q − W)·E[x]        (summed over the kernel's input channels and taps)

and BN folding makes that shift larger where it scaled a channel's weights up. E[x] is the per-channel mean of the
conv's input in the fp32 model over the calibration images (one run with those inputs as graph outputs); W and W_q
are the fp32 and dequantized int8 weights. Each conv is corrected on fp32 inputs, so corrections do not compound
from one layer to the next. Zero padding makes border positions see fewer inputs; the correction uses the interior
mean. Whether it helps is measured (benchmarks/quantize.py), not assumed.

The bias of a QDQ conv is an int32 initializer behind a DequantizeLinear (scale = input scale × weight scale); it is
corrected in those units, rounded. A float bias is corrected as is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def correct_biases(fp32_path: Path, int8_path: Path, images: np.ndarray, *, batch: int = 32) -> dict[str, float]:
    """Correct the biases of the quantized convs of `int8_path` in place; returns {conv node: largest |shift|}."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(int8_path))
    producers = {out: node for node in proto.graph.node for out in node.output}
    initializers = {i.name: i for i in proto.graph.initializer}
    shifts = weight_shifts(fp32_path, proto, images, batch=batch)
    for conv in proto.graph.node:
        if conv.name in shifts:
            _subtract(conv, shifts[conv.name], producers, initializers, numpy_helper)
    onnx.save(proto, str(int8_path))
    return {name: float(np.max(np.abs(shift))) for name, shift in shifts.items()}


def weight_shifts(fp32_path: Path, int8: Any, images: np.ndarray, *, batch: int = 32) -> dict[str, np.ndarray]:
    """{conv node: (W_q − W)·E[x] per output channel} for every conv of the int8 model (a path or ModelProto) with
    int8 weights behind a DequantizeLinear and a bias, matched to the fp32 conv by node name."""
    import onnx
    from onnx import numpy_helper

    from export.onnx import with_outputs
    from export.ort_session import make_session

    proto = int8 if isinstance(int8, onnx.ModelProto) else onnx.load(str(int8))
    producers = {out: node for node in proto.graph.node for out in node.output}
    quantized = {i.name: i for i in proto.graph.initializer}
    reference = onnx.load(str(fp32_path))
    floats = {i.name: i for i in reference.graph.initializer}
    fp32_convs = {n.name: n for n in reference.graph.node if n.op_type == "Conv"}
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.name in fp32_convs
             and getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"
             and fp32_convs[n.name].input[1] in floats]
    if not convs:
        return {}
    inputs = sorted({fp32_convs[n.name].input[0] for n in convs})
    session = make_session(with_outputs(reference, inputs).SerializeToString(), device="cpu").session
    name = session.get_inputs()[0].name
    sums: dict[str, Any] = dict.fromkeys(inputs, 0.0)
    count = 0
    for start in range(0, len(images), batch):
        values = session.run(inputs, {name: images[start:start + batch]})
        for tensor, value in zip(inputs, values):  # per-channel sums, NCHW
            sums[tensor] = sums[tensor] + value.astype(np.float64).mean(axis=tuple(range(2, value.ndim))).sum(axis=0)
        count += len(values[0])
    shifts = {}
    for conv in convs:
        reference_conv = fp32_convs[conv.name]
        mean_in = np.asarray(sums[reference_conv.input[0]]) / count
        w = numpy_helper.to_array(floats[reference_conv.input[1]]).astype(np.float64)
        w_q = _dequantized(producers[conv.input[1]], quantized, numpy_helper)
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        per_group = w.shape[1]  # input channels each output channel sees
        out_per_group = w.shape[0] // group
        means = np.stack([mean_in[(o // out_per_group) * per_group:(o // out_per_group + 1) * per_group]
                          for o in range(w.shape[0])])  # (O, C/g)
        delta = (w_q - w).reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (O, C/g): summed over the taps
        shifts[conv.name] = (delta * means).sum(axis=1)
    return shifts


def _dequantized(dq: Any, initializers: dict, numpy_helper: Any) -> np.ndarray:
    """The float values a weight DequantizeLinear gives: (q − zero point) · scale, per channel along its axis."""
    q = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] \
        else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _subtract(conv: Any, shift: np.ndarray, producers: dict, initializers: dict, numpy_helper: Any) -> None:
    bias_name = conv.input[2]
    dq = producers.get(bias_name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in initializers:
        quantized = initializers[dq.input[0]]
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(quantized).astype(np.int64) - np.round(shift / scale).astype(np.int64)
        values = np.clip(values, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        quantized.CopyFrom(numpy_helper.from_array(values, quantized.name))
    elif bias_name in initializers:
        tensor = initializers[bias_name]
        values = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array((values - shift).astype(values.dtype), tensor.name))
