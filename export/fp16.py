"""Float16 ONNX: the exported (already folded, fp32) graph converted once to float16 weights and compute, with
float32 inputs and outputs so callers feed and read the same arrays as for model.onnx.

Why after folding: folding multiplies weights by γ/√(var+ε), which can push a weight or bias past float16's range
(65504) or below its smallest normal (6.1e-5). The fold is done in float32 (float64 arithmetic, cast once), and the
weights are range-checked here before the one cast:
- any |w| > 65504 in a float tensor is an ExportError naming the tensor (it would become ±inf);
- a tensor where at least `subnormal_share` of the non-zero values fall below 6.1e-5 (they lose precision as
  float16 subnormals, and below 6.0e-8 they cannot be represented at all) gets a warning naming the tensor.

The conversion is onnxconverter-common's `convert_float_to_float16(keep_io_types=True)`, told float16's real limits
(it would otherwise clip silently to ±1e4 and to 1e-7). The model's metadata gets `precision: float16`, which is how
runners (and so parity, with its float16 tolerance) know what they run.

ONNX Runtime's CPU provider has float16 kernels for few ops on x86; for the others it inserts Cast nodes at session
creation and computes in float32, so on CPU a float16 model is mostly a half-size file, not a faster one
(measured: docs/benchmarks.md, `zoo bench`).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.atomic import atomic_output
from export.errors import ExportError, first_line

PRECISION_KEY = "precision"  # metadata_props key; "float16" for models written here
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5: smaller magnitudes are subnormal (fewer significant bits)
FP16_MIN_SUBNORMAL = 2.0**-24  # 6.0e-8: smaller non-zero magnitudes cannot be represented
SUBNORMAL_SHARE = 0.01  # warn when this share of a tensor's non-zero values falls below FP16_MIN_NORMAL
FP16_TOLERANCE = 1e-3  # parity atol = rtol for float16 models (float32 models: 1e-5)


@dataclass
class Fp16Report:
    tensors: int = 0  # float tensors converted
    values: int = 0  # float values converted
    casts: int = 0  # Cast nodes in the float16 graph (the float32 inputs/outputs and ops kept in float32)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"float16: {self.values:,} weights in {self.tensors} tensors converted, {self.casts} Cast nodes"
                + "".join(f"\nwarning: {w}" for w in self.warnings))


def check_fp16_range(model: Any, *, subnormal_share: float = SUBNORMAL_SHARE) -> list[str]:
    """Raise ExportError when a float tensor (initializer or Constant) of the ONNX `model` holds a value beyond
    float16's range; return one warning per tensor with many values that float16 can only hold as subnormals."""
    found = []
    for name, values in _float_tensors(model):
        finite = values[np.isfinite(values)]
        if finite.size and (peak := float(np.abs(finite).max())) > FP16_MAX:
            count = int((np.abs(finite) > FP16_MAX).sum())
            raise ExportError(f"cannot convert to float16: tensor {name!r} holds {count} value(s) beyond ±{FP16_MAX:g} "
                              f"(largest |w| = {peak:.4g}); they would become inf. Export without --fp16")
        nonzero = np.abs(finite[finite != 0])
        small = int((nonzero < FP16_MIN_NORMAL).sum())
        if nonzero.size and small and small >= subnormal_share * nonzero.size:
            lost = int((nonzero < FP16_MIN_SUBNORMAL).sum())
            found.append(f"tensor {name!r}: {small} of {nonzero.size} non-zero weights ({100 * small / nonzero.size:.1f}%) "
                         f"are below float16's smallest normal {FP16_MIN_NORMAL:.2g} and lose precision"
                         + (f"; {lost} are below {FP16_MIN_SUBNORMAL:.2g} and are rounded up to it" if lost else ""))
    return found


def convert_fp16(src: Path | str, dst: Path | str, *, subnormal_share: float = SUBNORMAL_SHARE) -> Fp16Report:
    """Write the float16 version of the ONNX model at `src` to `dst` (atomic), inputs and outputs kept float32."""
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    if dict((p.key, p.value) for p in model.metadata_props).get(PRECISION_KEY) == "float16":
        raise ExportError(f"{src} is already a float16 model")
    report = Fp16Report(warnings=check_fp16_range(model, subnormal_share=subnormal_share))
    tensors = list(_float_tensors(model))
    report.tensors, report.values = len(tensors), sum(v.size for _, v in tensors)
    props = {p.key: p.value for p in model.metadata_props}
    try:
        with warnings.catch_warnings():  # its clipping warnings: the range was checked above
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(model, min_positive_val=FP16_MIN_SUBNORMAL, max_finite_val=FP16_MAX,
                                            keep_io_types=True)
    except Exception as e:
        raise ExportError(f"float16 conversion of {src} failed: {first_line(e)}") from e
    onnx.helper.set_model_props(half, {**props, PRECISION_KEY: "float16"})
    report.casts = sum(node.op_type == "Cast" for node in half.graph.node)
    try:
        onnx.checker.check_model(half)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the float16 ONNX model is invalid: {first_line(e)}") from e
    with atomic_output(Path(dst)) as tmp:
        onnx.save(half, str(tmp))
    return report


def _float_tensors(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, values) of every float32 initializer and Constant-node tensor, subgraphs included."""
    from onnx import TensorProto, numpy_helper

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.g.node or attribute.g.initializer:
                    yield from graphs(attribute.g)
                for sub in attribute.graphs:
                    yield from graphs(sub)

    for graph in graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.FLOAT:
                yield tensor.name, numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                        yield node.output[0], numpy_helper.to_array(attribute.t)
