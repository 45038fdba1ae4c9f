"""ZeroPadding → pooling through ONNX Runtime with its default graph optimisations (export/pad_pool.py).

ORT's Pad_Fusion turns a zero Pad into pool padding, which for MaxPool means -inf and for AveragePool means "not
counted": both change the result. Each model here is checked against Keras with ORT's optimisations on, and the
MaxPool case is also shown to fail without the guard, so the test cannot pass by accident.
"""
import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx import export_onnx
from export.pad_pool import NEG_ZERO_PREFIX, guard_zero_pads_before_pools
from tests.helpers import assert_parity


def _pooled(pool, before=None):
    x = inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", bias_initializer=keras.initializers.Constant(-1.0), name="conv")(x)
    if before is not None:
        x = before(x)
    x = keras.layers.ZeroPadding2D(((1, 2), (2, 1)), name="pad")(x)
    return keras.Model(inputs, pool(name="pool")(x))


def _run(path_or_proto, x):
    model = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _pad_values(proto):
    return [node.input[2] if len(node.input) > 2 else "" for node in proto.graph.node if node.op_type == "Pad"]


# mostly negative conv outputs: padding wins many maxima, and every border mean counts the padding
X = np.random.default_rng(0).normal(size=(2, 11, 10, 3)).astype(np.float32)


@pytest.mark.parametrize("pool", [
    lambda name: keras.layers.MaxPooling2D(3, 2, name=name),
    lambda name: keras.layers.AveragePooling2D(3, 2, name=name),
], ids=["max", "average"])
def test_zero_padding_then_pool_matches_keras_under_ort_optimisations(pool, tmp_path):
    model = _pooled(pool)
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert all(value.startswith(NEG_ZERO_PREFIX) for value in _pad_values(proto))
    assert_parity(model(X).numpy(), _run(str(path), X))
    other_size = X[:, :7, :9]
    assert_parity(model(other_size).numpy(), _run(str(path), other_size))


def test_without_the_guard_ort_changes_the_maxpool_result(tmp_path):
    model = _pooled(lambda name: keras.layers.MaxPooling2D(3, 2, name=name))
    proto = onnx.load(str(export_onnx(model, tmp_path / "m.onnx")))
    for node in proto.graph.node:
        if node.op_type == "Pad":
            del node.input[2:]  # back to tf2onnx's plain zero Pad
    assert np.abs(_run(proto, X) - model(X).numpy()).max() > 0.1


def test_maxpool_after_relu_keeps_the_fusable_zero_pad(tmp_path):
    """Nothing to guard when the pooled values are ≥ 0: the fusion is exact there (ResNet50's stem)."""
    model = _pooled(lambda name: keras.layers.MaxPooling2D(3, 2, name=name), before=keras.layers.ReLU())
    path = export_onnx(model, tmp_path / "m.onnx")
    assert _pad_values(onnx.load(str(path))) == [""]
    assert_parity(model(X).numpy(), _run(str(path), X))


def test_guard_leaves_pads_before_convs_and_nonzero_pads_alone():
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Pad", ["x", "pads"], ["p1"], name="pad_conv"),
            onnx.helper.make_node("Conv", ["p1", "w"], ["c"], kernel_shape=[1, 1]),
            onnx.helper.make_node("Pad", ["c", "pads", "one"], ["p2"], name="pad_one"),
            onnx.helper.make_node("MaxPool", ["p2"], ["y"], kernel_shape=[2, 2]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [
            onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
            onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
            onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    proto = onnx.helper.make_model(graph)
    assert guard_zero_pads_before_pools(proto) == []
