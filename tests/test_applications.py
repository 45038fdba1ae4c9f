"""BN folding and export on real architectures no one here wrote (keras.applications, weights=None).

The fast test runs by default (a small MobileNetV2 through the whole export pipeline); the slow ones
(`pytest -m slow tests/test_applications.py`) fold eight architectures and check parity at 1e-5 and exactly which BN
layers remain, with the expectation computed from the Keras graph here, not from the fold report.
"""
from collections import Counter

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from export.fold_bn import fold_batchnorm  # noqa: E402
from tests.helpers import assert_parity, bn_layer_names, predict, randomize_bn  # noqa: E402

KERNEL_LAYERS = {
    "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Dense",
}
CONSUMER_LAYERS = {"Conv1D", "Conv2D", "Conv3D", "Dense"}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()  # eight large models in one process: let each one go


def onnx_ops(path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


# ------------------------------------------------------------------------------------------------ fast


def test_mobilenetv2_folds_every_bn_and_exports_without_mul(tmp_path):
    from export.pipeline import check_parity, export_model

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    randomize_bn(model, seed=1)
    depthwise = sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers)
    assert depthwise == 17 and len(bn_layer_names(model)) == 52  # MobileNetV2: every BN follows a conv/depthwise

    folded, report = fold_batchnorm(model)
    assert (len(report.folded), report.kept) == (52, [])
    assert bn_layer_names(folded) == []

    src = tmp_path / "mobilenetv2.keras"
    model.save(src)
    result = export_model(src, tmp_path / "folded", onnx=True, savedmodel=True)
    assert result.fold_report.summary() == "folded 52 of 52 BN layers"
    parity = check_parity(tmp_path / "folded", device="cpu")
    assert parity.passed, parity.table()
    assert {row.runtime for row in parity.rows} == {"keras-folded", "savedmodel", "ort-cpu"}

    export_model(src, tmp_path / "unfolded", fold_bn=False, onnx=True, savedmodel=False)
    folded_ops, unfolded_ops = onnx_ops(tmp_path / "folded" / "model.onnx"), onnx_ops(tmp_path / "unfolded" / "model.onnx")
    assert folded_ops["BatchNormalization"] == 0 and folded_ops["Mul"] == 0
    # Unfolded, Grappler merges the Mul of each BN after a bias-free Conv2D, but the 17 depthwise BNs stay Mul+Add.
    assert unfolded_ops["Mul"] == depthwise
    assert unfolded_ops["Add"] - folded_ops["Add"] == depthwise
    assert folded_ops["Conv"] == unfolded_ops["Conv"] == 52


# ------------------------------------------------------------------------------------------------ slow

# name -> (scale of [0, 1) inputs: 255 for the models that rescale internally, BN layers kept by construction)
ARCHITECTURES = {
    "ResNet50": (1.0, 0),
    "ResNet50V2": (1.0, 3 + 4 + 6 + 3 + 1),  # pre-activation BN of every block (after Add / pool) + post_bn
    "MobileNetV2": (1.0, 0),
    "MobileNetV3Small": (255.0, 0),
    "EfficientNetB0": (255.0, 0),
    "DenseNet121": (1.0, 6 + 12 + 24 + 16 + 3 + 1),  # first BN of every dense block, 3 transition BNs, final bn
    "Xception": (1.0, 0),
    "InceptionV3": (1.0, 0),
}
def expected_kept_bns(model) -> set[str]:
    """BN layers that cannot fold, read off the Keras graph: the input does not come from a kernel layer with a
    linear activation whose output only this BN reads, and the output does not go to a single Conv/Dense alone."""
    readers: dict[int, list] = {}
    for op in model.operations:
        for node in op._inbound_nodes:
            for tensor in node.input_tensors:
                readers.setdefault(id(tensor), []).append(op)
    for tensor in model.outputs:
        readers.setdefault(id(tensor), []).append("<output>")

    kept = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        (node,) = layer._inbound_nodes
        (source,) = node.input_tensors
        channel_axis = layer.axis in (-1, len(source.shape) - 1)
        producer = source._keras_history.operation
        into_producer = (
            type(producer).__name__ in KERNEL_LAYERS
            and getattr(producer.activation, "__name__", "") == "linear"
            and len(readers[id(source)]) == 1
            and channel_axis
        )
        after = readers.get(id(layer.output), [])
        into_consumer = (
            len(after) == 1
            and type(after[0]).__name__ in CONSUMER_LAYERS
            and getattr(after[0], "groups", 1) == 1
            and channel_axis
        )
        if not (into_producer or into_consumer):
            kept.add(layer.name)
    return kept


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_application_folds_exactly(name, tmp_path):
    from export.onnx import export_onnx
    from export.parity import make_inputs
    from export.runtimes import OrtRunner
    from export.signature import describe

    scale, kept_by_construction = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        input_shape=(96, 96, 3), weights=None, classes=10, classifier_activation=None
    )
    randomize_bn(model, moderate=True)

    folded, report = fold_batchnorm(model)
    expected = expected_kept_bns(model)
    assert len(expected) == kept_by_construction
    assert {k.bn for k in report.kept} == expected
    assert set(bn_layer_names(folded)) == expected
    assert len(report.folded) == len(bn_layer_names(model)) - len(expected)

    signature = describe(model)
    (input_name,), (output_name,) = signature.input_names, signature.output_names
    inputs = []
    for batch in (1, 4):
        x = make_inputs(signature.inputs, batch=batch, seed=batch)[input_name] * np.float32(scale)
        inputs.append((x, predict(model, x)))
        assert_parity(inputs[-1][1], predict(folded, x))

    # ORT with its default graph optimisations: ResNet50V2's zero Pad → MaxPool needs export/pad_pool.py's guard,
    # EfficientNetB0's Normalization constants need export/onnx.py's captured-constant baking
    export_onnx(folded, tmp_path / "folded.onnx")
    ort_default = OrtRunner(tmp_path / "folded.onnx", device="cpu")
    assert ort_default.input_names == [input_name]
    for x, reference in inputs:
        assert_parity(reference, ort_default({input_name: x})[output_name])
