"""SavedModel / ONNX / TFLite export of tiny models built here (conv+BN+dense with non-zero biases and random BN
statistics from tests.helpers.randomize_bn; Sequential; multiple inputs/outputs; fully convolutional), checked by
reading the ONNX graph and by parity of every runtime against Keras at batch 1 and 7 (and a second H×W for the
fully convolutional one)."""
import json

import keras
import numpy as np
import onnx
import pytest

from export.artifacts import FOLDED, ONNX, ORIGINAL, SAVEDMODEL, TFLITE, runners_for
from export.atomic import MANIFEST, atomic_output
from export.errors import ExportError
from export.onnx import export_onnx
from export.parity import standard_input_sets, make_inputs, run_parity
from export.runtimes import KerasRunner, OrtRunner, TFLiteRunner
from export.savedmodel import export_savedmodel
from export.signature import describe
from export.tflite import export_tflite
from tests.helpers import assert_parity, randomize_bn


def conv_bn_classifier():
    x = inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16, name="fc")(x)
    x = keras.layers.BatchNormalization(name="fc_bn")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="conv_bn_classifier")


def sequential():
    return keras.Sequential(
        [
            keras.Input((10, 10, 2), name="pixels"),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="scores"),
        ],
        name="sequential",
    )


def multi_io():
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((4,), name="extra")
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    features = keras.layers.Concatenate(name="concat")([keras.layers.GlobalAveragePooling2D(name="gap")(x), extra])
    logits = keras.layers.Dense(4, name="logits")(features)
    mask = keras.layers.Conv2D(2, 1, name="mask")(x)
    return keras.Model({"image": image, "extra": extra}, {"logits": logits, "mask": mask}, name="multi_io")


def fully_conv():
    x = inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Conv2DTranspose(8, 2, strides=2, name="up")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1, name="restored")(x), name="fully_conv")


BUILDERS = {"classifier": conv_bn_classifier, "sequential": sequential, "multi_io": multi_io, "fully_conv": fully_conv}


@pytest.fixture(scope="module", params=list(BUILDERS))
def export_dir(request, tmp_path_factory):
    """One export folder per model, in the layout of export/artifacts.py (reused by every test of the module)."""
    out = tmp_path_factory.mktemp(request.param)
    model = BUILDERS[request.param]()
    randomize_bn(model)
    model.save(out / ORIGINAL)
    export_savedmodel(model, out / SAVEDMODEL)
    export_onnx(model, out / ONNX, metadata={"source": "zoo tests"})
    export_tflite(model, out / TFLITE, saved_model=out / SAVEDMODEL)
    return out


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_onnx_has_model_names_and_dynamic_batch(export_dir):
    signature = describe(keras.saving.load_model(export_dir / ORIGINAL))
    graph = onnx.load(export_dir / ONNX).graph
    assert [i.name for i in graph.input] == signature.input_names
    assert [o.name for o in graph.output] == signature.output_names
    assert all(dims(value)[0] == "batch" for value in (*graph.input, *graph.output))
    if export_dir.name.startswith("fully_conv"):
        assert dims(graph.input[0]) == ["batch", "image_height", "image_width", 3]
        assert dims(graph.output[0]) == ["batch", "restored_height", "restored_width", 3]


def test_names_are_the_models_names():
    assert describe(sequential()).input_names == ["pixels"]
    assert describe(sequential()).output_names == ["scores"]
    assert describe(multi_io()).input_names == ["extra", "image"]  # dict inputs: keys in Keras' flatten order
    assert describe(multi_io()).output_names == ["logits", "mask"]


def test_every_runtime_matches_keras(export_dir):
    reference, candidates, _ = runners_for(export_dir, device="cpu")
    report = run_parity(reference, candidates, standard_input_sets(reference.signature.inputs), atol=1e-5, rtol=1e-5)
    assert report.passed, report.table()
    assert {row.runtime for row in report.rows} == {"savedmodel", "ort-cpu", "tflite"}
    labels = {row.inputs for row in report.rows}
    if export_dir.name.startswith("fully_conv"):
        assert labels == {"batch 1 @ 32x32", "batch 7 @ 32x32", "batch 2 @ 48x64"}
    else:
        assert labels == {"batch 1", "batch 7"}
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_tensor_named_outputs_are_renamed_and_put_in_model_order():
    """Older tf2onnx versions name outputs after the TF tensors (Identity:0, …), which come in the flatten order of
    the serving function's {name: tensor} result: sorted names. The model's order here is relu, neg."""
    from onnx import TensorProto, helper

    from export.onnx import _name_outputs
    from export.signature import ModelSignature, TensorInfo

    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2])

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["Identity:0"]), helper.make_node("Relu", ["x"], ["Identity_1:0"])],
        "tf2onnx_names",
        [value("x")],
        [value("Identity:0"), value("Identity_1:0")],
    )
    signature = ModelSignature(
        inputs=(TensorInfo("x", (None, 2), "float32"),),
        outputs=(TensorInfo("relu", (None, 2), "float32"), TensorInfo("neg", (None, 2), "float32")),
        takes_dict=False,
    )
    _name_outputs(graph, signature)
    assert [o.name for o in graph.output] == ["relu", "neg"]
    assert {n.op_type: n.output[0] for n in graph.node} == {"Neg": "neg", "Relu": "relu"}


def test_metadata_props_hold_caller_metadata_and_layout(export_dir):
    props = {p.key: p.value for p in onnx.load(export_dir / ONNX).metadata_props}
    assert props["source"] == "zoo tests"
    assert props["input_layout"] == "NHWC"


@pytest.mark.parametrize("builder", [conv_bn_classifier, fully_conv])
def test_nchw_export_drops_transposes_and_still_matches(builder, tmp_path):
    model = builder()
    randomize_bn(model)
    path = export_onnx(model, tmp_path / "nchw.onnx", nchw=True)
    proto = onnx.load(path)
    assert proto.graph.node[0].op_type != "Transpose"
    assert dims(proto.graph.input[0])[1] == 3
    assert {p.key: p.value for p in proto.metadata_props}["input_layout"] == "NCHW"
    runner = OrtRunner(path, device="cpu")
    spatial = (20, 28) if builder is fully_conv else None
    sets = [(f"batch {b}", make_inputs(describe(model).inputs, batch=b, seed=b, spatial=spatial)) for b in (1, 7)]
    report = run_parity(KerasRunner(model), [runner], sets)
    assert report.passed, report.table()


def test_opset_below_13_is_refused(tmp_path):
    with pytest.raises(ExportError, match="opset 12"):
        export_onnx(sequential(), tmp_path / "old.onnx", opset=12)
    assert not list(tmp_path.iterdir())


def test_unsupported_op_is_named(tmp_path):
    class Igamma(keras.layers.Layer):
        def call(self, x):
            import tensorflow as tf

            return tf.math.igamma(x + 1.0, x + 2.0)

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, Igamma(name="odd")(inputs))
    with pytest.raises(ExportError, match=r"op Igamma in layer 'odd' is not supported"):
        export_onnx(model, tmp_path / "odd.onnx")
    assert not list(tmp_path.iterdir())


def test_tflite_names_the_layer_it_cannot_convert(tmp_path):
    class Determinant(keras.layers.Layer):
        def call(self, x):
            return keras.ops.linalg.det(x)

    inputs = keras.Input((3, 3), name="matrix")
    model = keras.Model(inputs, Determinant(name="det")(inputs))
    with pytest.raises(ExportError, match=r"op MatrixDeterminant in layer 'det' has no builtin TFLite kernel"):
        export_tflite(model, tmp_path / "model.tflite")
    assert not list(tmp_path.iterdir())


def test_tflite_says_when_a_dynamic_size_hides_a_shape(tmp_path):
    """keras.ops.repeat on a dynamic H (as Keras' own UpSampling2D does) hides the channel count from the converter."""
    class RepeatRows(keras.layers.Layer):
        def call(self, x):
            return keras.ops.repeat(x, 2, axis=1)

    inputs = keras.Input((None, None, 3), name="image")
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="after")(RepeatRows(name="rows")(inputs)))
    with pytest.raises(ExportError, match=r"op Conv2D in layer 'after' .*dynamic input size hides a shape"):
        export_tflite(model, tmp_path / "model.tflite")
    assert not list(tmp_path.iterdir())


def test_tflite_upsampling_on_a_dynamic_size_converts_and_matches(tmp_path):
    """Keras' UpSampling2D on a dynamic H×W hides the channel count from the TFLite converter (the next Conv2D
    cannot be lowered); the export converts a copy with NearestUpsampling2D, the same function."""
    x = inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.UpSampling2D((2, 3), name="up")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="after_up")(x))
    randomize_bn(model)
    runner = TFLiteRunner(export_tflite(model, tmp_path / "model.tflite"))
    for shape in [(1, 5, 7, 3), (3, 4, 9, 3)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        assert_parity(model(x).numpy(), runner({"image": x})["after_up"])
    assert [layer.__class__.__name__ for layer in model.layers] == ["InputLayer", "UpSampling2D", "Conv2D"]


def test_failed_exports_leave_nothing_behind(tmp_path, monkeypatch):
    import tensorflow as tf
    import tf2onnx

    model = sequential()

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(tf2onnx.convert, "from_function", broken)
    with pytest.raises(ExportError, match="converter exploded"):
        export_onnx(model, tmp_path / "model.onnx")

    archive_class = type(keras.export.ExportArchive())  # the backend's subclass
    write_out = archive_class.write_out

    def half_written(self, *args, **kwargs):
        write_out(self, *args, **kwargs)  # a SavedModel folder at the temporary path...
        assert list(tmp_path.iterdir())
        raise OSError("disk full")  # ...then the failure

    monkeypatch.setattr(archive_class, "write_out", half_written)
    with pytest.raises(ExportError, match="disk full"):
        export_savedmodel(model, tmp_path / "saved_model")
    monkeypatch.undo()

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", broken)
    with pytest.raises(ExportError, match="TFLite conversion failed: converter exploded"):
        export_tflite(model, tmp_path / "model.tflite")
    assert not list(tmp_path.iterdir())


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "saved_model"
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "v2").write_text("2")
        raise RuntimeError("fail midway")
    assert [p.name for p in target.iterdir()] == ["v1"]  # the old export survives a failed one
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "v3").write_text("3")
    assert [p.name for p in target.iterdir()] == ["v3"]  # a folder replaces a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "saved_model"]  # no temporaries or backups
    with atomic_output(tmp_path / "missing" / "model.onnx") as tmp:  # missing parents are created
        tmp.write_text("onnx")
    assert (tmp_path / "missing" / "model.onnx").read_text() == "onnx"


def test_corrupted_model_fails_parity(tmp_path):
    model = conv_bn_classifier()
    randomize_bn(model)
    path = export_onnx(model, tmp_path / "model.onnx")
    corrupted = keras.models.clone_model(model)
    corrupted.set_weights(model.get_weights())
    kernel = corrupted.get_layer("conv").kernel
    weights = kernel.numpy()
    weights += 1e-2  # every element: one element can hide behind a ReLU or a max-pool
    kernel.assign(weights)
    sets = [("batch 7", make_inputs(describe(model).inputs, batch=7, seed=0))]
    report = run_parity(KerasRunner(corrupted), [OrtRunner(path, device="cpu")], sets)
    assert not report.passed
    assert "FAIL" in report.table()


def test_folded_model_is_a_candidate_when_present(tmp_path):
    model = sequential()
    randomize_bn(model)
    model.save(tmp_path / ORIGINAL)
    model.save(tmp_path / FOLDED)
    reference, candidates, _ = runners_for(tmp_path)
    assert reference.name == "keras"
    assert [runner.name for runner in candidates] == ["keras-folded"]


def _external_data_parity(model, directory):
    reference = KerasRunner(model)
    runner = OrtRunner(directory / ONNX, device="cpu")
    feeds = make_inputs(reference.signature.inputs, batch=3, seed=0)
    want, got = reference(feeds), runner(feeds)
    for name in want:
        assert_parity(want[name], got[name])


def test_onnx_with_external_data_loads_and_matches(tmp_path):
    model = conv_bn_classifier()
    randomize_bn(model)
    export_onnx(model, tmp_path / ONNX, external_data=True, metadata={"source_model": "test"})
    data = tmp_path / (ONNX + ".data")
    assert data.is_file() and data.stat().st_size > (tmp_path / ONNX).stat().st_size
    proto = onnx.load(str(tmp_path / ONNX), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert {p.key: p.value for p in proto.metadata_props}["source_model"] == "test"
    _external_data_parity(model, tmp_path)


def test_large_models_switch_to_external_data_by_themselves(tmp_path, monkeypatch):
    import export.onnx

    model = conv_bn_classifier()
    monkeypatch.setattr(export.onnx, "LARGE_MODEL_BYTES", 1000)  # this model's weights are bigger than that
    export_onnx(model, tmp_path / ONNX)
    assert (tmp_path / (ONNX + ".data")).is_file()
    _external_data_parity(model, tmp_path)


def test_captured_constants_become_initializers_not_inputs(tmp_path):
    """keras.layers.Normalization keeps mean/variance as plain tensors (EfficientNet's stem); tf2onnx makes such
    captures extra graph inputs unless the export bakes them in."""
    x = inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Normalization(mean=[0.2, 0.4, 0.6], variance=[0.1, 0.2, 0.3], name="norm")(x)
    x = keras.layers.Conv2D(2, 3, name="conv", bias_initializer="random_normal")(x)
    model = keras.Model(inputs, x)
    export_onnx(model, tmp_path / ONNX)
    proto = onnx.load(str(tmp_path / ONNX))
    assert [i.name for i in proto.graph.input] == ["image"]
    _external_data_parity(model, tmp_path)


def _gray_residual():
    """1 channel in and out, output = input − conv(input): tf2onnx turns the C=1 Transposes into Reshapes."""
    x = inputs = keras.Input((None, None, 1), name="noisy")
    noise = keras.layers.Conv2D(1, 3, padding="same", name="noise")(keras.layers.Conv2D(4, 3, padding="same")(x))
    return keras.Model(inputs, keras.layers.Subtract(name="denoised")([x, noise]))


def test_one_channel_residual_keeps_its_rank_on_every_conversion(tmp_path):
    """tf2onnx's reshape_optimizer dropped the output Squeeze in ~1 of 8 conversions of this graph (rank 5 out)."""
    import onnxruntime as ort

    model = _gray_residual()
    x = np.random.default_rng(0).random((2, 9, 7, 1), dtype=np.float32)
    for attempt in range(12):
        path = export_onnx(model, tmp_path / f"{attempt}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"noisy": x})[0], model(x).numpy(), atol=1e-5)


def test_an_output_of_the_wrong_rank_is_refused():
    from export.onnx import _check_output_ranks

    model = _gray_residual()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Unsqueeze", ["noisy", "axes"], ["denoised"])], "wrong",
        [onnx.helper.make_tensor_value_info("noisy", onnx.TensorProto.FLOAT, ["batch", "h", "w", 1])],
        [onnx.helper.make_tensor_value_info("denoised", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    with pytest.raises(ExportError, match="'denoised' has rank 5, the model's has rank 4"):
        _check_output_ranks(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
                            describe(model))
