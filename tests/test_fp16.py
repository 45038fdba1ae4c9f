"""`--fp16`: model_fp16.onnx next to model.onnx, float16 weights, float32 inputs/outputs, parity at 1e-3 while the
other runtimes keep 1e-5, and weights float16 cannot hold refused before anything is written."""
import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.artifacts import ONNX, ONNX_FP16
from export.errors import ExportError
from export.fp16 import check_fp16_range
from export.pipeline import check_parity, export_model
from tests.helpers import assert_user_error, invoke, randomize_bn


def small_model():
    x = inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    randomize_bn(model, 0, moderate=True)
    return model


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp16")
    small_model().save(tmp / "model.keras")
    result = export_model(tmp / "model.keras", tmp / "export", fold_bn=True, onnx=True, savedmodel=False, fp16=True)
    assert result.fp16_report is not None and result.fp16_report.tensors > 0
    return result.directory


def test_fp16_model_has_half_weights_and_float_io(export_dir):
    assert (export_dir / ONNX_FP16).is_file() and (export_dir / ONNX).is_file()
    model = onnx.load(export_dir / ONNX_FP16)
    types = {t.data_type for t in model.graph.initializer}
    assert TensorProto.FLOAT16 in types and TensorProto.FLOAT not in types
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "float16"
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]  # converted after folding
    weights = {t.name: t for t in onnx.load(export_dir / ONNX).graph.initializer if t.data_type == TensorProto.FLOAT}
    halves = {t.name: t for t in model.graph.initializer if t.name in weights}
    assert set(halves) == set(weights)
    assert sum(len(t.raw_data) for t in halves.values()) * 2 == sum(len(t.raw_data) for t in weights.values())


def test_fp16_parity_passes_at_its_own_tolerance(export_dir):
    report = check_parity(export_dir, device="cpu")
    assert report.passed, report.table()
    rows = {(row.runtime, row.inputs): row for row in report.rows}
    fp16 = rows[("ort-cpu-fp16", "batch 1")]
    assert (fp16.atol, fp16.rtol) == (1e-3, 1e-3)
    assert (rows[("ort-cpu", "batch 1")].atol, rows[("ort-cpu", "batch 1")].rtol) == (1e-5, 1e-5)
    assert fp16.max_abs > rows[("ort-cpu", "batch 1")].max_abs  # it really computes in float16
    assert report.tolerances == {"ort-cpu-fp16": (1e-3, 1e-3)}
    assert "ort-cpu-fp16: atol=0.001 rtol=0.001" in report.table()
    assert report.to_dict()["tolerances"] == {"ort-cpu-fp16": {"atol": 1e-3, "rtol": 1e-3}}
    assert "float16 weights" in report.runtimes["ort-cpu-fp16"]


def test_weights_beyond_fp16_range_are_refused(tmp_path):
    model = small_model()
    model.get_layer("logits").bias.assign(np.full(5, 1e5, np.float32))
    model.save(tmp_path / "big.keras")
    with pytest.raises(ExportError, match=r"cannot convert to float16: tensor '.*' holds 5 value\(s\) beyond ±65504"):
        export_model(tmp_path / "big.keras", tmp_path / "export", fold_bn=True, onnx=True, savedmodel=False, fp16=True)
    assert not (tmp_path / "export").exists()  # atomic: nothing half-written


def test_many_subnormal_weights_are_named_in_a_warning():
    values = np.array([1e-6, 2e-9, 0.5, 0.0], np.float32)
    tensor = helper.make_tensor("tiny_w", TensorProto.FLOAT, [4], values.tolist())
    graph = helper.make_graph([helper.make_node("Add", ["x", "tiny_w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [tensor])
    (warning,) = check_fp16_range(helper.make_model(graph))
    assert warning.startswith("tensor 'tiny_w': 2 of 3 non-zero weights") and "1 are below 6e-08" in warning


def test_fp16_without_onnx_is_a_one_line_error(tmp_path):
    small_model().save(tmp_path / "m.keras")
    assert_user_error(invoke("export", tmp_path / "m.keras", "--fp16", "--no-parity"), "--fp16", "--onnx")
