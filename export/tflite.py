"""TFLite export: converted from a SavedModel with the named `serving_default` signature, so the .tflite keeps
the model's input and output names in its signature runner and a dynamic batch (and H×W) dimension.

`TFLiteConverter.from_concrete_functions` on our traced function gives a model with uninitialised weights for
Keras 3 variables (measured), and `from_keras_model` names outputs `output_0…`; the SavedModel route has neither
problem. Builtin TFLite ops only: a model that needs TF (Select/Flex) ops is refused with the op and its layer.
Known case: with a dynamic H×W, Keras' UpSampling2D (repeat + reshape) hides the channel count from the converter
and the next Conv2D cannot be lowered.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from export.atomic import atomic_output
from export.errors import ExportError, first_line
from export.savedmodel import export_savedmodel
from export.signature import describe, layer_of_op


def export_tflite(model: Any, path: Path | str, *, saved_model: Path | str | None = None) -> Path:
    """Write `model` as a .tflite file at `path` (atomic). Pass `saved_model` (written by `export_savedmodel` from
    the same model) to skip writing a temporary one."""
    import tensorflow as tf

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="zoo-tflite-") as scratch:
        source = Path(saved_model) if saved_model else export_savedmodel(model, Path(scratch) / "saved_model")
        try:
            flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(source)).convert()
        except Exception as e:
            raise ExportError(f"TFLite conversion failed: {_reason(e, model)}") from e
    with atomic_output(path) as tmp:
        tmp.write_bytes(flatbuffer)
    return path


def _reason(error: Exception, model: Any) -> str:
    """One line from the converter's MLIR dump: which op, in which layer, and what to do."""
    message = str(error)
    select_ops = re.search(r"TF Select ops: ([^\n]+)", message)
    if not select_ops:
        return first_line(error)
    location = re.search(r'fused\["[^"]*", "([^"@]+)@', message)
    layer = layer_of_op(location[1], model) if location else None
    where = f" in layer {layer!r}" if layer else ""
    dynamic = any(spec.dynamic_axes for spec in describe(model).inputs)
    hint = (
        "the dynamic input size hides a shape from the converter (e.g. after UpSampling2D): export TFLite from a "
        "copy of the model with a fixed input size"
        if dynamic
        else "it would need TensorFlow Select ops, which the TFLite builtin runtime does not have"
    )
    return f"TensorFlow op {select_ops[1].strip()}{where} has no builtin TFLite kernel here; {hint}"
