"""The export signature of a Keras model: stable input/output names, shapes with a dynamic batch, dtypes, and the
named `tf.function` that every exporter traces.

Names are what a user of the exported model sees, so they must not depend on Keras' global name counters:
- inputs: the keys when the model takes a dict, else the names of its `InputLayer`s (saved in `.keras`);
- outputs: the keys when the model returns a dict, else `model.output_names` (the producing layers' names),
  made unique with `_1`, `_2` suffixes when one layer produces several outputs.
Keras tensor names (`keras_tensor_17`) are never used: they change from one process to the next.

Order: inputs and outputs follow `model.inputs` / `model.outputs`, which is the flatten order of the model's
structure (dict keys sorted, lists in order) — the same order `keras.tree.flatten` gives a call's result.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from export.errors import ExportError


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: `shape[0]` is the batch (always None); other None dims are dynamic (e.g. H×W)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Non-batch axes whose size is only known at run time."""
        return tuple(axis for axis, size in enumerate(self.shape) if axis > 0 and size is None)


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    takes_dict: bool  # the model is called with {name: tensor} rather than a tensor or a list

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def model_inputs(self, tensors: Sequence[Any]) -> Any:
        """Arrange tensors given in `input_names` order the way the model's call expects them."""
        if self.takes_dict:
            return dict(zip(self.input_names, tensors))
        return tensors[0] if len(tensors) == 1 else list(tensors)

    def named_outputs(self, result: Any) -> dict[str, Any]:
        """Key a model call's result by output name (dict results flatten in sorted-key order, like model.outputs)."""
        import keras

        flat = keras.tree.flatten(result)
        if len(flat) != len(self.outputs):
            raise ExportError(f"the model returned {len(flat)} tensors but declares {len(self.outputs)} outputs")
        return dict(zip(self.output_names, flat))

    def call(self, model: Any, feeds: dict[str, Any]) -> dict[str, Any]:
        """model(inputs, training=False) with feeds keyed by input name; outputs keyed by output name."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExportError(f"missing model input(s) {missing}; the model takes {self.input_names}")
        return self.run(model, [feeds[n] for n in self.input_names])

    def run(self, model: Any, tensors: Sequence[Any]) -> dict[str, Any]:
        """model(inputs, training=False) with tensors in `input_names` order; outputs keyed by output name."""
        return self.named_outputs(model(self.model_inputs(tensors), training=False))


def describe(model: Any) -> ModelSignature:
    """The export signature of a functional or Sequential Keras model (single or multiple inputs/outputs)."""
    try:
        input_tensors = list(model.inputs)
        output_tensors = list(model.outputs)
    except (AttributeError, ValueError) as e:
        raise ExportError(
            f"model {getattr(model, 'name', model)!r} has no defined inputs: build it from keras.Input "
            "(functional, or Sequential starting with keras.Input) before exporting"
        ) from e
    input_struct = getattr(model, "_inputs_struct", None)
    output_struct = getattr(model, "_outputs_struct", None)
    takes_dict = isinstance(input_struct, dict)
    input_names = _dict_keys_in_flat_order(input_struct) if takes_dict else [_layer_name(t) for t in input_tensors]
    if isinstance(output_struct, dict):
        output_names = _dict_keys_in_flat_order(output_struct)
    else:
        output_names = _unique(getattr(model, "output_names", None) or [_layer_name(t) for t in output_tensors])
    return ModelSignature(
        inputs=tuple(_info(n, t) for n, t in zip(input_names, input_tensors)),
        outputs=tuple(_info(n, t) for n, t in zip(output_names, output_tensors)),
        takes_dict=takes_dict,
    )


def tensor_specs(signature: ModelSignature) -> list[Any]:
    """Named `tf.TensorSpec`s, one per input, batch dimension None."""
    import tensorflow as tf

    return [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in signature.inputs]


def serving_function(model: Any, signature: ModelSignature | None = None) -> Any:
    """A `tf.function` with the named input signature returning {output name: tensor}: the one traced function that
    SavedModel, ONNX (tf2onnx.from_function, which also works for Sequential models) and TFLite exports share."""
    import tensorflow as tf

    signature = signature or describe(model)

    @tf.function(input_signature=tensor_specs(signature), autograph=False)
    def serve(*tensors):
        return signature.run(model, tensors)

    return serve


def layer_of_op(op_name: str, model: Any) -> str | None:
    """The layer of `model` (nested models included) that a traced op belongs to, for error messages:
    'functional_1/odd_1/Igamma' -> 'odd' (tracing appends _N to name scopes)."""
    names = _layer_names(model)
    for scope in reversed(op_name.split("/")[:-1]):
        for candidate in (scope, re.sub(r"_\d+$", "", scope)):
            if candidate in names:
                return candidate
    return None


def _layer_names(layer: Any) -> set[str]:
    names = {layer.name}
    for sublayer in getattr(layer, "layers", []):
        names |= _layer_names(sublayer)
    return names


def _dict_keys_in_flat_order(struct: dict) -> list[str]:
    import keras

    return keras.tree.flatten({key: key for key in struct})


def _layer_name(tensor: Any) -> str:
    """Name of the layer that produced a Keras tensor (the InputLayer for an input); stable across save/load."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def _unique(names: Sequence[str]) -> list[str]:
    used: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 0
        while candidate in used:
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate)
        result.append(candidate)
    return result


def _info(name: str, tensor: Any) -> TensorInfo:
    return TensorInfo(name=name, shape=(None, *tuple(tensor.shape)[1:]), dtype=str(tensor.dtype))


def runner_inputs(runner: Any) -> list[TensorInfo]:
    """The inputs of any runner of export/runtimes.py (its input_names, input_shapes, input_dtypes) as TensorInfo,
    for `parity.make_inputs`."""
    return [TensorInfo(n, runner.input_shapes[n], runner.input_dtypes[n]) for n in runner.input_names]
