"""Fold BatchNormalization into neighbouring layers of any Keras 3 model, exactly, at the Keras level.

In inference mode a BN layer is an affine map per channel:

    BN(x) = s·x + t,   s = γ / √(moving_var + ε),   t = β − moving_mean·s
    (γ = 1 when scale=False, β = 0 when center=False)

so it can be merged into a linear neighbour. Keras 3 lowers BN to plain Mul+Add, which neither tf2onnx nor
Grappler folds once a conv has a non-zero bias (see DESIGN.md §2); folding here, before tracing, is what makes
every exported format BN-free.

Patterns (W = kernel, b = bias; "in"/"out" = the kernel's input/output-channel axis):

    Before                                  After
    producer → BN   (Conv1D/2D/3D, Dense)   W' = W·s on out,            b' = b·s + t
    ConvTranspose → BN                      W' = W·s on out (axis −2),  b' = b·s + t
    DepthwiseConv → BN                      W'[.., c, m] = W·s[c·M+m],  b' = b·s + t
    SeparableConv → BN                      pointwise W' = W·s on out,  b' = b·s + t
    BN → Dense / Conv('valid')              W' = W·s on in,             b' = b + Σ W·t
    BN → Conv('same' | 'causal')            W' = W·s on in, b kept, and an Add of t/s on the input
                                            (conv_same(W, s·x + t) = conv_same(W·s, x + t/s): the zero padding
                                            lands on x + t/s, so borders stay exact; needs every s ≠ 0)

Conditions (a BN that fails them is kept, with the reason in the report — never an exception):
  * the BN is called once, and its axis is the neighbour's channel axis;
  * producer side: the producer is called once, has a linear activation, and its output feeds only the BN;
  * consumer side: the BN's output feeds only that consumer, called once (groups = 1 for convs).

The arithmetic runs in float64 and is cast once to the layer's variable dtype. The result is a new model
built from the rewritten config (Sequential models come back as Functional ones with the same layer names);
nested models are folded recursively; the input model is never modified.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from export.errors import ExportError
from export.rewrite import walk

BN_CLASS = "BatchNormalization"
_NESTED_MODEL_CLASSES = {"Functional", "Sequential", "Model"}
_CONV_CLASSES = {"Conv1D", "Conv2D", "Conv3D"}
_TRANSPOSE_CLASSES = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
_DEPTHWISE_CLASSES = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE_CLASSES = {"SeparableConv1D", "SeparableConv2D"}
PRODUCER_CLASSES = {"Dense"} | _CONV_CLASSES | _TRANSPOSE_CLASSES | _DEPTHWISE_CLASSES | _SEPARABLE_CLASSES
CONSUMER_CLASSES = {"Dense"} | _CONV_CLASSES


# ----------------------------------------------------------------------------------------------- report


@dataclass
class FoldedBN:
    bn: str
    into: str
    pattern: str


@dataclass
class KeptBN:
    bn: str
    reason: str


@dataclass
class FoldReport:
    """What folding did: every BN layer of the model (nested ones as `outer/inner`) is either folded or kept."""

    folded: list[FoldedBN] = field(default_factory=list)
    kept: list[KeptBN] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.folded) + len(self.kept)

    def summary(self) -> str:
        line = f"folded {len(self.folded)} of {self.total} BN layers"
        if self.kept:
            line += f"; kept {len(self.kept)}: " + "; ".join(f"{k.bn}: {k.reason}" for k in self.kept)
        return line

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "folded_count": len(self.folded),
            "kept_count": len(self.kept),
            "folded": [asdict(f) for f in self.folded],
            "kept": [asdict(k) for k in self.kept],
            "summary": self.summary(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def extend(self, other: "FoldReport", prefix: str) -> None:
        self.folded += [FoldedBN(f"{prefix}/{f.bn}", f"{prefix}/{f.into}", f.pattern) for f in other.folded]
        self.kept += [KeptBN(f"{prefix}/{k.bn}", k.reason) for k in other.kept]


# ------------------------------------------------------------------------------------------ fold math


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 such that BN(x) = s·x + t per channel, in inference mode."""
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
    s = gamma / np.sqrt(var + float(bn.epsilon))
    return s, beta - mean * s


def fold_into_producer(cls: str, weights: dict, s: np.ndarray, t: np.ndarray, depth_multiplier: int = 1) -> None:
    """producer → BN: scale the output channels of the producer's kernel, b' = b·s + t (in place)."""
    if cls in _SEPARABLE_CLASSES:
        weights["pointwise_kernel"] = weights["pointwise_kernel"] * s
    elif cls in _DEPTHWISE_CLASSES:
        kernel = weights["kernel"]  # (*k, in, multiplier); output channel c·M + m
        weights["kernel"] = kernel * s.reshape(kernel.shape[-2], depth_multiplier)
    elif cls in _TRANSPOSE_CLASSES:
        weights["kernel"] = weights["kernel"] * s[:, None]  # (*k, out, in)
    else:  # Dense, Conv1D/2D/3D: (*k, in, out)
        weights["kernel"] = weights["kernel"] * s
    weights["bias"] = weights["bias"] * s + t


def fold_into_consumer(weights: dict, s: np.ndarray, t: np.ndarray, *, absorb_shift: bool) -> None:
    """BN → Dense/Conv: scale the input channels of the kernel (*k, in, out) (in place).

    With `absorb_shift` (Dense, 'valid' conv: every output sees a full window) the shift moves into the bias,
    b' = b + Σ W·t. Otherwise the caller keeps the shift as an input offset t/s (padded convs).
    """
    kernel = weights["kernel"]
    if absorb_shift:
        weights["bias"] = weights["bias"] + (kernel * t[:, None]).reshape(-1, kernel.shape[-1]).sum(axis=0)
    weights["kernel"] = kernel * s[:, None]


# ------------------------------------------------------------------------------------- config graph


def _is_ref(obj) -> bool:
    return isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__"


def _walk_refs_entries(obj, fn):
    """Call fn(ref_dict) on every keras-tensor reference (the whole record, with shape and dtype)."""
    walk(obj, _is_ref, fn)


def _walk_refs(obj, fn):
    """Call fn(history_list) on every keras-tensor reference inside a node's args/kwargs."""
    walk(obj, _is_ref, lambda ref: fn(ref["config"]["keras_history"]))


def _walk_io(obj, fn):
    """Call fn on every [layer, node, tensor] leaf of `input_layers` / `output_layers`."""
    walk(obj, lambda o: isinstance(o, list) and len(o) == 3 and isinstance(o[0], str), fn)


def _ref_of(obj) -> tuple | None:
    """The single tensor a layer node is called on, or None when it takes several."""
    found = []
    _walk_refs(obj, lambda h: found.append(tuple(h)))
    return found[0] if len(found) == 1 else None


class _Graph:
    """A functional model config as a graph of layers and the tensors flowing between them."""

    def __init__(self, config: dict):
        self.config = config
        self.layers = {entry["name"]: entry for entry in config["layers"]}

    def consumers(self, tensor: tuple) -> list[str]:
        """Layers that read `tensor` (one entry per use); "<output>" for each model output it is."""
        found = []
        for entry in self.config["layers"]:
            _walk_refs(entry["inbound_nodes"], lambda h, n=entry["name"]: tuple(h) == tensor and found.append(n))
        _walk_io(self.config["output_layers"], lambda h: tuple(h) == tensor and found.append("<output>"))
        return found

    def input_of(self, name: str) -> tuple | None:
        nodes = self.layers[name]["inbound_nodes"]
        return _ref_of(nodes[0]) if len(nodes) == 1 else None

    def input_shape(self, name: str) -> list | None:
        """Shape of the tensor a singly-called layer reads (from the config's tensor record)."""
        found = []
        nodes = self.layers[name]["inbound_nodes"]
        if nodes:
            _walk_refs_entries(nodes[0], found.append)
        return found[0]["config"].get("shape") if len(found) == 1 else None

    def redirect(self, old: tuple, new: tuple) -> None:
        """Make every reader of tensor `old` read tensor `new` instead."""

        def swap(history):
            if tuple(history) == old:
                history[:] = list(new)

        for entry in self.config["layers"]:
            _walk_refs(entry["inbound_nodes"], swap)
        _walk_io(self.config["output_layers"], swap)

    def remove(self, name: str) -> None:
        self.config["layers"] = [e for e in self.config["layers"] if e["name"] != name]
        del self.layers[name]

    def rename(self, old: str, new: str) -> None:
        entry = self.layers.pop(old)
        entry["name"] = new
        entry["config"]["name"] = new
        self.layers[new] = entry

        def swap(history):
            if history[0] == old:
                history[0] = new

        for e in self.config["layers"]:
            _walk_refs(e["inbound_nodes"], swap)
        _walk_io(self.config["output_layers"], swap)
        _walk_io(self.config["input_layers"], swap)

    def insert_before(self, anchor: str, entry: dict) -> None:
        index = next(i for i, e in enumerate(self.config["layers"]) if e["name"] == anchor)
        self.config["layers"].insert(index, entry)
        self.layers[entry["name"]] = entry


# ------------------------------------------------------------------------------------------- planning


def _rank_axis(axis: int, shape: list | None) -> int | None:
    if axis >= 0:
        return axis
    return None if shape is None else len(shape) + axis


def _channel_axis(entry: dict, rank: int) -> int:
    return 1 if entry["config"].get("data_format") == "channels_first" else rank - 1


def _blocker(entry: dict, calls: int) -> str | None:
    """Why a weighted neighbour cannot take a fold at all (None when it can)."""
    cfg = entry["config"]
    if calls != 1:
        return f"'{entry['name']}' is shared (called {calls} times)"
    if cfg.get("lora_rank"):
        return f"'{entry['name']}' uses LoRA"
    dtype = cfg.get("dtype")
    policy = dtype.get("config", {}).get("name", "") if isinstance(dtype, dict) else str(dtype or "")
    if "int" in policy or "float8" in policy:
        return f"'{entry['name']}' is quantized ({policy})"
    return None


def _plan_producer(graph: _Graph, bn_name: str, bn_axis: int) -> tuple[str | None, str]:
    """(producer name, "") when BN can fold into the layer before it, else (None, reason)."""
    tensor = graph.input_of(bn_name)
    if tensor is None:
        return None, "BN has no single input"
    producer = graph.layers[tensor[0]]
    cls, name = producer["class_name"], producer["name"]
    if cls not in PRODUCER_CLASSES:
        return None, f"input from '{name}' ({cls}) has no kernel to fold into"
    blocked = _blocker(producer, len(producer["inbound_nodes"]))
    if blocked:
        return None, blocked
    if producer["config"].get("activation", "linear") != "linear":
        return None, f"'{name}' applies activation '{producer['config']['activation']}' before the BN"
    readers = graph.consumers(tensor)
    if readers != [bn_name]:
        return None, f"output of '{name}' has {len(readers)} consumers"
    shape = graph.input_shape(bn_name)
    rank = len(shape) if shape else None
    if rank is None or _rank_axis(bn_axis, shape) != _channel_axis(producer, rank):
        return None, f"BN axis {bn_axis} is not the channel axis of '{name}'"
    return name, ""


def _plan_consumer(graph: _Graph, bn_name: str, bn_axis: int, s: np.ndarray) -> tuple[str | None, str, bool]:
    """(consumer name, "", absorb_shift) when BN can fold into the layer after it, else (None, reason, False)."""
    readers = graph.consumers((bn_name, 0, 0))
    if len(readers) != 1 or readers[0] == "<output>":
        what = "is a model output" if "<output>" in readers else f"has {len(readers)} consumers"
        return None, f"BN output {what}", False
    consumer = graph.layers[readers[0]]
    cls, name, cfg = consumer["class_name"], consumer["name"], consumer["config"]
    if cls not in CONSUMER_CLASSES:
        return None, f"output to '{name}' ({cls}) has no kernel to fold into", False
    blocked = _blocker(consumer, len(consumer["inbound_nodes"]))
    if blocked:
        return None, blocked, False
    if cfg.get("groups", 1) != 1:
        return None, f"'{name}' is a grouped conv", False
    shape = graph.input_shape(bn_name)
    rank = len(shape) if shape else None
    if rank is None or _rank_axis(bn_axis, shape) != _channel_axis(consumer, rank):
        return None, f"BN axis {bn_axis} is not the input channel axis of '{name}'", False
    absorb = cls == "Dense" or cfg.get("padding") == "valid"
    if not absorb and np.any(s == 0):
        return None, f"γ has zeros, so the shift before padded '{name}' cannot move past it", False
    return name, "", absorb


# ------------------------------------------------------------------------------------------ weights


def _weights_of(layer) -> dict:
    """A layer's kernel(s) and bias as float64 arrays (a zero bias when it has none)."""
    names = ["depthwise_kernel", "pointwise_kernel"] if hasattr(layer, "pointwise_kernel") else ["kernel"]
    weights = {n: np.asarray(getattr(layer, n), dtype=np.float64) for n in names}
    out_channels = layer.filters if hasattr(layer, "filters") and layer.filters else None
    if getattr(layer, "bias", None) is not None:
        weights["bias"] = np.asarray(layer.bias, dtype=np.float64)
    else:
        if out_channels is None:  # Dense units, or depthwise in·M
            out_channels = getattr(layer, "units", None) or int(np.prod(weights["kernel"].shape[-2:]))
        weights["bias"] = np.zeros(out_channels, dtype=np.float64)
    return weights


def _assign(layer, weights: dict) -> None:
    for name, value in weights.items():
        variable = getattr(layer, name)
        variable.assign(value.astype(variable.dtype))


def _copy_weights(live: dict, dst_model, changed: dict, replaced: dict, sources: dict) -> None:
    """Fill the rebuilt model: folded layers get their new weights, every other layer its old ones."""
    for layer in dst_model.layers:
        if layer.name in changed:
            _assign(layer, changed[layer.name])
        elif layer.name in replaced:
            layer.set_weights(replaced[layer.name].get_weights())
        elif layer.weights:
            layer.set_weights(live[sources.get(layer.name, layer.name)].get_weights())


# ------------------------------------------------------------------------------------------- driver


def _sequential_config(model) -> dict:
    """The config of a Functional model equivalent to a built Sequential one (same layer names)."""
    import keras

    if not model.built or not model.inputs:
        raise ExportError(
            f"Sequential model '{model.name}' has no input shape; build it (keras.Input or call it once) first"
        )
    cfg = model.get_config()
    declared = [e for e in cfg["layers"] if e["class_name"] == "InputLayer"]
    entries = [e for e in cfg["layers"] if e["class_name"] != "InputLayer"]
    input_name = declared[0]["config"]["name"] if declared else f"{model.name}_input"
    input_entry = keras.saving.serialize_keras_object(
        keras.layers.InputLayer(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype, name=input_name)
    )
    input_entry["name"], input_entry["inbound_nodes"] = input_name, []
    layers, previous, shape = [input_entry], input_name, list(model.inputs[0].shape)
    for entry, layer in zip(entries, model.layers):
        entry["name"] = entry["config"]["name"]
        ref = {"class_name": "__keras_tensor__",
               "config": {"shape": shape, "dtype": "float32", "keras_history": [previous, 0, 0]}}
        entry["inbound_nodes"] = [{"args": [ref], "kwargs": {}}]
        layers.append(entry)
        previous, shape = entry["name"], list(layer.output.shape)
    return {"name": cfg["name"], "trainable": cfg.get("trainable", True), "layers": layers,
            "input_layers": [input_name, 0, 0], "output_layers": [previous, 0, 0]}


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _functional_config(model) -> dict:
    import keras

    if isinstance(model, keras.Sequential):
        return _sequential_config(model)
    try:
        config = model.get_config()
    except Exception:  # subclassed models often cannot describe themselves
        config = None
    if not (isinstance(config, dict) and "layers" in config and "output_layers" in config):
        raise ExportError(
            f"model '{model.name}' is a subclassed Keras model with no layer graph; BN folding needs a "
            "Functional or Sequential model (export it without --fold-bn)"
        )
    return copy.deepcopy(config)


def fold_batchnorm(model) -> tuple[object, FoldReport]:
    """Return (new model with every exactly-foldable BN merged into a neighbour, report). `model` is untouched."""
    import keras

    config = _functional_config(model)
    graph = _Graph(config)
    live = {op.name: op for op in getattr(model, "operations", None) or model.layers}  # layers and bare ops
    report = FoldReport()
    changed: dict[str, dict] = {}  # layer name in the new model -> its folded float64 weights
    sources: dict[str, str] = {}  # new name -> name in the source model, for layers renamed while folding
    replaced: dict[str, object] = {}  # nested model name -> its folded copy

    for entry in list(config["layers"]):
        if entry["class_name"] in _NESTED_MODEL_CLASSES and "layers" in entry["config"]:
            inner, inner_report = fold_batchnorm(live[entry["name"]])
            report.extend(inner_report, entry["name"])
            new_entry = keras.saving.serialize_keras_object(inner)
            new_entry["name"], new_entry["inbound_nodes"] = entry["name"], entry["inbound_nodes"]
            config["layers"][config["layers"].index(entry)] = graph.layers[entry["name"]] = new_entry
            replaced[entry["name"]] = inner

    def weights_for(name: str) -> dict:
        return changed.setdefault(name, _weights_of(live[sources.get(name, name)]))

    for entry in list(config["layers"]):
        name = entry["name"]
        if entry["class_name"] != BN_CLASS:
            if _is_bn(live.get(name)):
                report.kept.append(KeptBN(name, f"custom BatchNormalization subclass {entry['class_name']}"))
            continue
        bn = live[name]
        if len(entry["inbound_nodes"]) != 1:
            report.kept.append(KeptBN(name, f"BN is shared (called {len(entry['inbound_nodes'])} times)"))
            continue
        s, t = bn_affine(bn)
        tensor = graph.input_of(name)

        producer, why_not_producer = _plan_producer(graph, name, bn.axis)
        if producer:
            cls = graph.layers[producer]["class_name"]
            layer = live[sources.get(producer, producer)]
            fold_into_producer(cls, weights_for(producer), s, t, getattr(layer, "depth_multiplier", 1) or 1)
            graph.layers[producer]["config"]["use_bias"] = True
            graph.remove(name)
            if graph.consumers((name, 0, 0)):  # the BN was a model output: keep the output's name
                graph.rename(producer, name)
                changed[name], sources[name] = changed.pop(producer), sources.pop(producer, producer)
                tensor = (name, *tensor[1:])
            graph.redirect((name, 0, 0), tensor)
            report.folded.append(FoldedBN(name, producer, f"{cls} → BN"))
            continue

        consumer, why_not_consumer, absorb = _plan_consumer(graph, name, bn.axis, s)
        if consumer:
            target = graph.layers[consumer]
            fold_into_consumer(weights_for(consumer), s, t, absorb_shift=absorb)
            target["config"]["use_bias"] = True
            graph.remove(name)
            if absorb:
                graph.redirect((name, 0, 0), tensor)
                pattern = f"BN → {target['class_name']}"
            else:
                offset = _offset_layer(name, t / s, target, tensor, graph.input_shape(consumer))
                graph.insert_before(consumer, offset)
                graph.redirect((name, 0, 0), (offset["name"], 0, 0))
                pattern = f"BN → {target['class_name']}('{target['config']['padding']}') with input offset"
            report.folded.append(FoldedBN(name, consumer, pattern))
            continue

        report.kept.append(KeptBN(name, f"{why_not_producer}; {why_not_consumer}"))

    try:
        new_model = keras.Model.from_config(config)
    except Exception as exc:  # a config keras cannot rebuild is reported as one line
        raise ExportError(f"could not rebuild model '{model.name}' after folding: {exc}") from exc
    _copy_weights(live, new_model, changed, replaced, sources)
    return new_model, report


def _offset_layer(bn_name: str, offset: np.ndarray, consumer: dict, tensor: tuple, shape: list | None) -> dict:
    """A Rescaling(scale=1, offset=t/s) layer entry that adds the BN shift before a padded conv."""
    import keras

    values = offset.tolist()
    if consumer["config"].get("data_format") == "channels_first" and shape:
        values = np.reshape(offset, (-1,) + (1,) * (len(shape) - 2)).tolist()
    layer = keras.layers.Rescaling(scale=1.0, offset=values, name=f"{bn_name}_offset",
                                   dtype=consumer["config"].get("dtype"))
    entry = keras.saving.serialize_keras_object(layer)
    entry["name"] = layer.name
    ref = {"class_name": "__keras_tensor__",
           "config": {"shape": shape, "dtype": "float32", "keras_history": list(tensor)}}
    entry["inbound_nodes"] = [{"args": [ref], "kwargs": {}}]
    return entry
