"""`zoo parity --localize` (export/localize.py): the first Keras layer where a runtime departs, on exports of models
built here and tampered with in one known place, so the right answer is known in advance."""
import json

import keras
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.localize import localize_export
from export.pipeline import check_parity, export_model
from tests.helpers import assert_user_error, invoke, randomize_bn


def _classifier(tmp_path, *, tflite=False, fp16=False):
    """stem conv+BN+ReLU → a conv in the middle ('mid_conv', no BN after it) → conv+BN → GAP → Dense, exported."""
    x = inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="mid_conv")(x)
    x = keras.layers.ReLU(name="mid_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="last_conv")(x)
    x = keras.layers.BatchNormalization(name="last_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    randomize_bn(model, seed=1, moderate=True)
    model.save(tmp_path / "m.keras")
    export_model(tmp_path / "m.keras", tmp_path / "export", fold_bn=True, onnx=True, tflite=tflite, fp16=fp16)
    return model, tmp_path / "export"


def _scale_onnx_weight(path, layer, factor):
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "Conv" and f"/{layer}_1/" in n.name)
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(proto, str(path))


def _first(report, runtime):
    return report.to_dict()["runtimes"][runtime]["first_divergent_layer"]


def test_a_scaled_conv_in_onnx_is_named_for_ort_only(tmp_path):
    _, export = _classifier(tmp_path)
    _scale_onnx_weight(export / "model.onnx", "mid_conv", 1.001)
    report = localize_export(export, device="cpu")
    assert _first(report, "ort-cpu") == "mid_conv"
    assert _first(report, "keras-folded") is None and _first(report, "savedmodel") is None
    layers = {e["layer"]: e for e in report.to_dict()["runtimes"]["ort-cpu"]["layers"]}
    assert layers["stem_bn"]["passed"] and layers["stem_relu"]["passed"]  # before the tampered layer: exact
    assert not layers["mid_conv"]["passed"] and 1e-4 < layers["mid_conv"]["rel_to_scale"] < 1e-2
    assert not report.passed


def test_b_pad_fusion_is_found_at_the_pool_and_gone_with_the_optimiser_off(tmp_path):
    x = inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", bias_initializer=keras.initializers.Constant(-1.0), name="conv")(x)
    x = keras.layers.ZeroPadding2D(((1, 2), (2, 1)), name="pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="pool")(x)
    x = keras.layers.Conv2D(4, 1, name="head")(x)
    keras.Model(inputs, x).save(tmp_path / "m.keras")
    export = tmp_path / "export"
    export_model(tmp_path / "m.keras", export, fold_bn=False, onnx=True, savedmodel=False)
    proto = onnx.load(str(export / "model.onnx"))  # the test hook: take away the -0.0 pad guard (export/pad_pool.py)
    for node in proto.graph.node:
        if node.op_type == "Pad":
            del node.input[2:]
    onnx.save(proto, str(export / "model.onnx"))

    report = localize_export(export, device="cpu")
    ort = report.to_dict()["runtimes"]["ort-cpu"]
    assert ort["first_divergent_layer"] == "pool" and ort["first_divergent_op"] == "MaxPool"
    assert {"layer": "pad", "reason": ort["unmapped"][0]["reason"]} in ort["unmapped"]  # fused away: said, not hidden
    assert "remove" in ort["unmapped"][0]["reason"]
    assert any("changed ONNX Runtime's result" in note for note in ort["notes"])
    assert _first(report, "keras-folded") is None if "keras-folded" in report.to_dict()["runtimes"] else True

    clean = localize_export(export, device="cpu", ort_disabled=("Pad_Fusion",))
    assert _first(clean, "ort-cpu") is None and clean.passed
    assert "pad" in {e["layer"] for e in clean.to_dict()["runtimes"]["ort-cpu"]["layers"]}  # now observable


def test_c_a_tampered_tflite_kernel_is_named(tmp_path):
    model, export = _classifier(tmp_path, tflite=True)
    kernel = model.get_layer("mid_conv").kernel.numpy()
    blob = (export / "model.tflite").read_bytes()
    stored = np.ascontiguousarray(np.transpose(kernel, (3, 0, 1, 2))).tobytes()  # TFLite conv weights are OHWI
    assert blob.count(stored) == 1
    tampered = np.ascontiguousarray(np.transpose(kernel * np.float32(1.001), (3, 0, 1, 2))).tobytes()
    (export / "model.tflite").write_bytes(blob.replace(stored, tampered))
    report = localize_export(export, device="cpu")
    # TFLite fuses the ReLU into the conv: one op, one tensor, named after both layers; it is the ReLU's output
    assert _first(report, "tflite") == "mid_relu"
    assert report.to_dict()["runtimes"]["tflite"]["first_divergent_op"] == "CONV_2D"
    unmapped = {u["layer"]: u["reason"] for u in report.to_dict()["runtimes"]["tflite"]["unmapped"]}
    assert unmapped["mid_conv"].startswith("fused with mid_relu into one CONV_2D op")
    assert all(_first(report, name) is None for name in ("keras-folded", "savedmodel", "ort-cpu"))


def test_d_passing_export_nested_two_inputs_two_outputs(tmp_path):
    inner_in = keras.Input((None, None, 4))
    y = keras.layers.Conv2D(4, 3, padding="same", name="inner_conv")(inner_in)
    y = keras.layers.BatchNormalization(name="inner_bn")(y)
    backbone = keras.Model(inner_in, keras.layers.ReLU(name="inner_relu")(y), name="backbone")
    image = keras.Input((None, None, 3), name="image")
    extra = keras.Input((2,), name="extra")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(image)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = backbone(x)
    mask = keras.layers.Conv2D(1, 1, name="mask")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    joined = keras.layers.Concatenate(name="join")([pooled, extra])
    model = keras.Model({"image": image, "extra": extra},
                        {"mask": mask, "score": keras.layers.Dense(3, name="score")(joined)})
    randomize_bn(model, seed=2, moderate=True)
    model.save(tmp_path / "m.keras")
    export = tmp_path / "export"
    export_model(tmp_path / "m.keras", export, fold_bn=True, onnx=True, tflite=True)

    report = localize_export(export, device="cpu").to_dict()
    parity = check_parity(export, device="cpu").to_dict()
    assert report["passed"] and parity["passed"]
    assert set(report["runtimes"]) == {"keras-folded", "savedmodel", "ort-cpu", "tflite"}
    for name, runtime in report["runtimes"].items():
        assert runtime["first_divergent_layer"] is None, (name, runtime)
        layers = {e["layer"]: e for e in runtime["layers"]}
        for output in ("mask", "score"):  # the last layers' errors are normal parity's
            rows = [row["outputs"][output]["max_abs"] for row in parity["rows"] if row["runtime"] == name]
            assert layers[output]["max_abs"] == max(rows), (name, output)
        assert {"backbone/inner_bn", "backbone/inner_relu", "join"} <= set(layers) | {
            u["layer"] for u in runtime["unmapped"]}  # nested layers are reported, compared or unmapped
    folded = {u["layer"]: u["reason"] for u in report["runtimes"]["ort-cpu"]["unmapped"]}
    assert "backbone/inner_conv" in folded and "folded" in folded["backbone/inner_conv"]
    assert "backbone/inner_bn" in {e["layer"] for e in report["runtimes"]["ort-cpu"]["layers"]}


def test_cli_localize_table_json_and_exit_code(tmp_path):
    _, export = _classifier(tmp_path)
    ok = invoke("parity", export, "--localize", "--device", "cpu", "--json", tmp_path / "ok.json")
    assert ok.exit_code == 0, ok.output
    assert "first divergent layer" in ok.output and "PASS" in ok.output
    data = json.loads((tmp_path / "ok.json").read_text())
    for runtime in data["runtimes"].values():
        assert runtime["first_divergent_layer"] is None
        assert {"layer", "runtime_tensor", "max_abs", "rel_to_scale"} <= set(runtime["layers"][0])

    _scale_onnx_weight(export / "model.onnx", "last_bn", 1.01)  # folding gave last_conv the BN's name
    bad = invoke("parity", export, "--localize", "--device", "cpu", "--json", tmp_path / "bad.json")
    assert_user_error(bad, "per-layer parity FAILED", "ort-cpu")
    assert json.loads((tmp_path / "bad.json").read_text())["runtimes"]["ort-cpu"]["first_divergent_layer"] == "last_bn"
    (tmp_path / "mine.json").write_text("the user's")
    again = invoke("parity", export, "--localize", "--device", "cpu", "--json", tmp_path / "mine.json")
    assert_user_error(again, "mine.json")  # a file zoo did not write is not replaced without --overwrite
    assert (tmp_path / "mine.json").read_text() == "the user's"


@pytest.mark.parametrize("fp16", [True])
def test_fp16_runtime_is_judged_at_its_own_tolerance(tmp_path, fp16):
    _, export = _classifier(tmp_path, fp16=fp16)
    report = localize_export(export, device="cpu").to_dict()
    half = report["runtimes"]["ort-cpu-fp16"]
    assert half["atol"] == 1e-3 and half["layers"]
    assert half["first_divergent_layer"] is None, half
