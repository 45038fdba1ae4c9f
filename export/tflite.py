"""TFLite export: converted from a SavedModel with the named `serving_default` signature, so the .tflite keeps
the model's input and output names in its signature runner and a dynamic batch (and H×W) dimension.

`TFLiteConverter.from_concrete_functions` on our traced function gives a model with uninitialised weights for
Keras 3 variables (measured), and `from_keras_model` names outputs `output_0…`; the SavedModel route has neither
problem. Builtin TFLite ops only: a model that needs TF (Select/Flex) ops is refused with the op and its layer.
With a dynamic H×W, Keras' UpSampling2D (repeat + reshape) hides the channel count from the converter and the
next Conv2D cannot be lowered, so nearest-neighbour UpSampling2D layers (channels-last) are swapped for
NearestUpsampling2D (export/layers.py) — the same function, with the channel count kept — in the copy that is
converted.
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


def export_tflite(model: Any, path: Path | str, *, saved_model: Path | str | None = None,
                  representative: Any = None) -> Path:
    """Write `model` as a .tflite file at `path` (atomic). Pass `saved_model` (written by `export_savedmodel` from
    the same model) to skip writing a temporary one. `representative` (an array of calibration inputs for the
    model's one input) makes it a full-integer model: int8 weights and activations, every op an int8 builtin
    (a model with an op that has no int8 kernel is refused), float32 input and output quantized at the edges so
    callers feed the same arrays as to model.tflite."""
    import tensorflow as tf

    path = Path(path)
    convertible = tflite_ready(model)
    if convertible is not model:
        saved_model = None  # the given SavedModel holds the original layers
    with tempfile.TemporaryDirectory(prefix="zoo-tflite-") as scratch:
        source = Path(saved_model) if saved_model else export_savedmodel(convertible, Path(scratch) / "saved_model")
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
            if representative is not None:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ([x[None]] for x in representative)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            flatbuffer = converter.convert()
        except Exception as e:
            raise ExportError(f"TFLite conversion failed: {_reason(e, model)}") from e
    with atomic_output(path) as tmp:
        tmp.write_bytes(flatbuffer)
    return path


def tflite_ready(model: Any):
    """`model`, or a copy with every nearest, channels-last UpSampling2D replaced by NearestUpsampling2D."""
    import keras

    from export.layers import NearestUpsampling2D
    from export.rewrite import rebuild

    def swap(entry: dict[str, Any]) -> bool:
        config = entry["config"]
        if (entry["class_name"] != "UpSampling2D" or config.get("interpolation", "nearest") != "nearest"
                or config.get("data_format") == "channels_first"):
            return False
        keep = {key: config[key] for key in ("name", "trainable", "dtype") if key in config}
        entry.update(class_name=NearestUpsampling2D.__name__, module=None,
                     registered_name=keras.saving.get_registered_name(NearestUpsampling2D),
                     config={**keep, "factor": list(config["size"])})
        return True

    return rebuild(model, swap)


def _reason(error: Exception, model: Any) -> str:
    """One line from the converter's MLIR dump: which op, in which layer, and what to do."""
    message = str(error)
    select_ops = re.search(r"TF Select ops: ([^\n]+)", message)
    unknown_op = re.search(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
    if not (select_ops or unknown_op):
        return first_line(error)
    location = re.search(r'fused\["[^"]*", "([^"@]+)@', message)
    layer = layer_of_op(location[1], model) if location else None
    where = f" in layer {layer!r}" if layer else ""
    if not select_ops:
        return (f"TensorFlow op {unknown_op[1]}{where} has no builtin TFLite kernel: replace that layer or "
                f"export without --tflite")
    dynamic = any(spec.dynamic_axes for spec in describe(model).inputs)
    hint = (
        "the dynamic input size hides a shape from the converter: export TFLite from a copy of the model with a "
        "fixed input size"
        if dynamic
        else "it would need TensorFlow Select ops, which the TFLite builtin runtime does not have"
    )
    return f"TensorFlow op {select_ops[1].strip()}{where} has no builtin TFLite kernel here; {hint}"
