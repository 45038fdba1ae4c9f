"""Set-up every benchmark shares, in one place: benchmarks import this module, never tests/ or each other.

Importing it puts the repository root on sys.path (benchmarks run as `python benchmarks/NAME.py` from a clone) and
keeps TensorFlow's C++ start-up log quiet. tests/helpers.py takes `randomize_bn` from here too.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def randomize_bn(model, seed: int = 0, *, moderate: bool = False) -> None:
    """Give every BN random γ/β/mean/variance and every other bias non-zero values (nested layers too).

    Default (tests): γ, β, mean ~ N(0,1), var ~ |N(0,1)|+0.5, biases ~ N(0,1) — far from the initial values.
    `moderate` (deep keras.applications nets): γ ~ U(0.5,1.5), β, mean ~ N(0,0.1), var ~ U(0.5,1.5),
    biases ~ N(0,0.1), so a 100-layer net keeps its activations in range.
    """
    import keras

    rng = np.random.default_rng(seed)
    small = 0.1 if moderate else 1.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            if layer.scale:
                gamma = rng.uniform(0.5, 1.5, n) if moderate else rng.normal(size=n)
                layer.gamma.assign(gamma.astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, small, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, small, n).astype("float32"))
            var = rng.uniform(0.5, 1.5, n) if moderate else np.abs(rng.normal(size=n)) + 0.5
            layer.moving_variance.assign(var.astype("float32"))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, small, tuple(layer.bias.shape)).astype("float32"))


CONV_CLASSES = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D"}
MIN_SIZE = {"Xception": 71, "InceptionV3": 75}  # keras.applications' smallest inputs (others: 32)


def build_application(name: str, size: int, seed: int = 0, *, conv_bias: bool = False):
    """keras.applications `name` (weights=None, 10 classes, logits) with random BN statistics and biases: the
    real architectures of benchmarks/applications.py, localize_cost.py, localize_pad_fusion.py and quantize.py.

    Most keras.applications convs that feed a BN have use_bias=False (ResNet50's have a bias). `conv_bias=True` rebuilds the
    same architecture with a bias on every Conv2D/DepthwiseConv2D/SeparableConv2D, as a net trained with biases
    has: then Grappler can no longer merge any BN into a conv while tracing, and every BN reaches the export."""
    import keras

    if size < MIN_SIZE.get(name, 32):
        raise SystemExit(f"{name} needs an input of at least {MIN_SIZE.get(name, 32)}×{MIN_SIZE.get(name, 32)}")
    keras.utils.set_random_seed(seed)  # the same kernels on every run
    builder = getattr(keras.applications, name)
    model = builder(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    if conv_bias:
        config = model.get_config()
        for entry in config["layers"]:
            if entry["class_name"] in CONV_CLASSES:
                entry["config"]["use_bias"] = True
        model = keras.Model.from_config(config)
    randomize_bn(model, seed, moderate=True)
    return model


def export_cnn_bn(directory: Path) -> Path:
    """zoo's cnn_bn (28×28×1, 10 classes) with random moderate BN statistics, BN folded, as directory/model.onnx:
    the model the serving benchmarks serve."""
    from export.fold_bn import fold_batchnorm
    from export.onnx import export_onnx
    from zoo.registry import create_model

    model = create_model("cnn_bn", input_shape=(28, 28, 1), num_classes=10)
    randomize_bn(model, moderate=True)
    folded, _ = fold_batchnorm(model)
    return export_onnx(folded, Path(directory) / "model.onnx")


def environment(**extra: Any) -> dict[str, Any]:
    """Where and with what the figures were measured: versions, CPU and its instruction sets (AVX-512, VNNI, …:
    what int8 and bfloat16 speed depends on), load at the start (and `extra` settings)."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from export.cpu_features import cpu_features

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(),
            "machine": platform.machine(), "processor": platform.processor(),
            "cpu_features": sorted(name for name, present in cpu_features().items() if present),
            "loadavg_start": list(os.getloadavg()), **extra}


def ort_session(path: Path, level: str, threads: int, spin: bool = True):
    """x -> outputs of an ONNX Runtime CPU session at graph optimisation `level` (the project's session factory)."""
    from export.ort_session import make_session

    made = make_session(path, device="cpu", graph_optimization=level, threads=threads, allow_spinning=spin)
    name = made.session.get_inputs()[0].name
    return lambda x: made.session.run(None, {name: x})


def savedmodel_function(path: Path):
    """x -> outputs of a SavedModel's serving_default signature (its one input)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures["serving_default"]
    (keyword,) = function.structured_input_signature[1]

    def call(x):
        return function(**{keyword: x})

    call.loaded = loaded  # keep the variables alive
    return call
