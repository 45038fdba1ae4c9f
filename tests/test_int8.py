"""`zoo export --int8` (export/int8.py, zoo/int8_data.py): a real ONNX Runtime static quantization of the folded
model, calibrated on training images, gated on test images; nothing written when the gate fails."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import assert_user_error, invoke


def _digits_npz(path, *, blank_train=False, train_range=None, test_range=None):
    """The bundled digits as an npz dataset (8×8 grey, uint8); optionally blank or value-banded splits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * 255 / 16).astype(np.uint8)
    y = digits.target.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    if blank_train:
        x_train = np.zeros_like(x_train)
    if train_range:
        x_train = np.full_like(x_train, 0) + np.linspace(*train_range, x_train.size).astype(np.uint8).reshape(x_train.shape)
    if test_range:
        x_test = np.full_like(x_test, 0) + np.linspace(*test_range, x_test.size).astype(np.uint8).reshape(x_test.shape)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def int8_export(cnn_bn_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--calib-images", 256, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def _producers(proto):
    return {output: node for node in proto.graph.node for output in node.output}


def test_int8_file_runs_quantized_convs_with_int8_weights(int8_export):
    out, printed = int8_export
    proto = onnx.load(str(out / "model_int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    producers = _producers(proto)
    initializers = {i.name: i for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        weight = producers[conv.input[1]]
        assert weight.op_type == "DequantizeLinear"
        assert numpy_helper.to_array(initializers[weight.input[0]]).dtype == np.int8  # per-channel int8 weights
        scales = numpy_helper.to_array(initializers[weight.input[1]])
        assert scales.ndim == 1 and scales.size > 1  # one scale per output channel
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8"
    report = json.loads((out / "int8_report.json").read_text())
    assert report["gate"]["passed"] and report["gate"]["agreement"] >= 0.99
    assert report["calibration_source"].startswith("digits training split")
    assert "int8:" in printed and "ort-cpu-int8" in printed  # the summary and the parity row


def test_parity_and_localize_treat_int8_as_a_quantized_runtime(int8_export):
    from export.localize import localize_export
    from export.pipeline import check_parity

    out, _ = int8_export
    parity = check_parity(out, device="cpu")
    rows = [row for row in parity.rows if row.runtime == "ort-cpu-int8"]
    assert rows and all(row.passed for row in rows) and rows[0].atol == 0.15
    assert any("export gate" in note for note in parity.notes)
    report = localize_export(out, device="cpu").to_dict()["runtimes"]["ort-cpu-int8"]
    assert report["first_divergent_layer"] is None and report["lowest_sqnr_layers"]
    assert all(np.isfinite(e["sqnr_db"]) and e["sqnr_db"] > 10 for e in report["layers"])


def test_keep_float_leaves_that_layer_in_float(cnn_bn_run, tmp_path):
    out = tmp_path / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--calib-images", 64,
                    "--keep-float", "block2_bn", "--no-parity", "--out", out)
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out / "model_int8.onnx"))
    producers = _producers(proto)
    initializers = {i.name for i in proto.graph.initializer}
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    kept = [n for name, n in convs.items() if "/block2_bn_1/" in name]
    others = [n for name, n in convs.items() if "/block2_bn_1/" not in name]
    assert kept and others
    assert all(n.input[1] in initializers for n in kept)  # float weights, no DequantizeLinear
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)
    assert json.loads((out / "int8_report.json").read_text())["kept_float"].keys() == {"block2_bn"}

    unknown = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--keep-float", "no_such_layer",
                     "--out", tmp_path / "other")
    assert_user_error(unknown, "no_such_layer")
    assert not (tmp_path / "other").exists()


def test_failing_gate_exits_1_and_writes_nothing(cnn_bn_run, tmp_path):
    blank = _digits_npz(tmp_path / "blank.npz", blank_train=True)  # calibrating on black images: ranges collapse
    out = tmp_path / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--calib-dataset", blank, "--out", out)
    assert_user_error(result, "accuracy gate", "nothing was written", "SQNR", "keep them in float")
    assert not out.exists() and not list(tmp_path.glob(".export.partial*"))


def test_keep_float_auto_keeps_layers_until_the_gate_passes(cnn_bn_run, tmp_path):
    strict = ["--int8-min-agreement", 100, "--int8-max-drop", 0, "--calib-images", 256, "--no-parity"]
    plain = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", *strict, "--out", tmp_path / "plain")
    assert_user_error(plain, "accuracy gate")  # one flipped answer is enough to fail a 100 % gate
    out = tmp_path / "auto"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", *strict, "--keep-float", "auto",
                    "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "int8_report.json").read_text())
    assert report["gate"]["passed"] and report["gate"]["agreement"] == 1.0 and report["kept_float"]
    assert any(note.startswith("--keep-float auto kept") for note in report["notes"])
    proto = onnx.load(str(out / "model_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # still an int8 model, not all float


def test_calibration_reads_only_the_training_split(cnn_bn_run, tmp_path):
    from zoo.int8_data import int8_settings

    spec = _digits_npz(tmp_path / "banded.npz", train_range=(0, 100), test_range=(155, 255))
    settings = int8_settings(cnn_bn_run / "model.keras", dataset=spec, run_dataset=None, images=200, seed=3)
    assert settings.calibration.max() <= 100 / 255 + 1e-6  # every calibration image comes from x_train
    assert settings.evaluation.min() >= 155 / 255 - 1e-6  # and the gate's from x_test
    assert len(settings.calibration) == 200 and settings.labels is not None
    again = int8_settings(cnn_bn_run / "model.keras", dataset=spec, run_dataset=None, images=200, seed=3)
    other = int8_settings(cnn_bn_run / "model.keras", dataset=spec, run_dataset=None, images=200, seed=4)
    assert np.array_equal(settings.calibration, again.calibration)  # seeded
    assert not np.array_equal(settings.calibration, other.calibration)


def test_bad_int8_input_is_one_error_line(cnn_bn_run, tmp_path):
    keras_file = cnn_bn_run / "model.keras"
    assert_user_error(invoke("export", keras_file, "--fold-bn", "--onnx", "--int8", "--out", tmp_path / "a"),
                      "--calib-dataset")  # a bare .keras has no recorded dataset
    assert_user_error(invoke("export", cnn_bn_run, "--fold-bn", "--int8", "--no-onnx", "--out", tmp_path / "b"),
                      "--onnx")
    assert_user_error(invoke("export", cnn_bn_run, "--onnx", "--int8", "--calib-method", "magic",
                             "--out", tmp_path / "c"), "magic")
    assert_user_error(invoke("export", cnn_bn_run, "--onnx", "--keep-float", "x", "--out", tmp_path / "d"), "--int8")
    assert_user_error(invoke("export", cnn_bn_run, "--onnx", "--int8-weights", "per-tensor", "--int8-bias-correction",
                             "--out", tmp_path / "e"), "--int8-bias-correction and --int8-weights apply to --int8")
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_tflite_int8_tensors_are_int8(cnn_bn_run, tmp_path):
    from export.runtimes import _tflite_interpreter

    out = tmp_path / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--tflite", "--int8", "--calib-images", 64,
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "tflite-int8" in result.output  # its parity row (on the kept held-out images)
    interpreter_class, _ = _tflite_interpreter()
    interpreter = interpreter_class(model_path=str(out / "model_int8.tflite"))
    ops = interpreter._get_ops_details()
    convs = [op for op in ops if op["op_name"] == "CONV_2D"]
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    assert convs and all(tensors[int(op["inputs"][1])]["dtype"] == np.int8 for op in convs)  # int8 weights
    assert all(tensors[int(op["inputs"][0])]["dtype"] == np.int8 for op in convs)  # int8 activations
    assert all(tensors[int(op["outputs"][0])]["dtype"] == np.int8 for op in convs)
    gate = json.loads((out / "int8_report.json").read_text())["tflite_gate"]  # gated like model_int8.onnx
    assert gate["passed"] and gate["agreement"] >= 0.99 and gate["images"] > 100

    from export.localize import localize_export

    layers = localize_export(out, device="cpu").to_dict()["runtimes"]["tflite-int8"]["layers"]
    inner = [e for e in layers if e["layer"] != "logits"]
    assert inner and all(e["sqnr_db"] > 15 for e in inner)  # int8 tensors read back as real values (dequantized)


def test_denoiser_gate_is_psnr(tmp_path):
    from export.int8 import Int8Settings, check_gate

    import keras

    from export.onnx import export_onnx

    x = inputs = keras.Input((None, None, 1), name="noisy")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    residual = keras.layers.Conv2D(1, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Subtract(name="clean")([inputs, residual]))
    export_onnx(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    clean = rng.random((4, 16, 16, 1), np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    settings = Int8Settings(calibration=noisy, evaluation=noisy, targets=clean)
    same = check_gate(tmp_path / "m.onnx", tmp_path / "m.onnx", settings)
    assert same["passed"] and same["psnr_drop"] == 0 and "agreement" not in same
    settings.max_psnr_drop = -1.0  # an impossible gate fails and says by how much
    assert not check_gate(tmp_path / "m.onnx", tmp_path / "m.onnx", settings)["passed"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")  # as tests/test_serve.py
def test_serve_answers_with_the_int8_model(int8_export):
    import onnxruntime as ort
    from starlette.testclient import TestClient

    from zoo.serving.app import create_app

    out, _ = int8_export
    path = out / "model_int8.onnx"
    x = np.load(out / "int8_sample.npz")["x"][:3]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    body = {"inputs": [{"name": session.get_inputs()[0].name, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}
    with TestClient(create_app(path, name="digits_int8", device="cpu")) as client:
        response = client.post("/v2/models/digits_int8/infer", json=body)
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)  # the int8 model's own answer, served


def _first_conv_mean_shift(fp32_path, int8_path, images):
    """Per-channel mean of (int8 − fp32) output of the first conv, both read as graph outputs."""
    from export.onnx import with_outputs
    from export.ort_session import make_session

    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    conv = next(n for n in int8.graph.node if n.op_type == "Conv")
    twin = next(n for n in fp32.graph.node if n.name == conv.name)
    values = []
    for proto, tensor in ((fp32, twin.output[0]), (int8, conv.output[0])):
        session = make_session(with_outputs(proto, [tensor]).SerializeToString(), device="cpu").session
        values.append(session.run([tensor], {session.get_inputs()[0].name: images})[0])
    return conv.name, (values[1].astype(np.float64) - values[0]).mean(axis=(0, 2, 3))


def test_bias_correction_removes_the_weight_rounding_shift(int8_export, tmp_path):
    import shutil

    from export.bias_correction import correct_biases, weight_shifts

    out, _ = int8_export
    images = np.load(out / "int8_sample.npz")["x"]
    corrected = tmp_path / "model_int8.onnx"
    shutil.copyfile(out / "model_int8.onnx", corrected)
    name, measured = _first_conv_mean_shift(out / "model.onnx", corrected, images)
    predicted = weight_shifts(out / "model.onnx", corrected, images)[name]
    assert np.abs(measured).max() > 1e-3  # rounding the weights did shift the channel means
    np.testing.assert_allclose(predicted, measured, atol=0.2 * np.abs(measured).max())  # (W_q − W)·E[x] predicts it
    correct_biases(out / "model.onnx", corrected, images)
    _, after = _first_conv_mean_shift(out / "model.onnx", corrected, images)
    assert np.abs(after).max() < 0.2 * np.abs(measured).max()


def test_bias_correction_flag_is_recorded(cnn_bn_run, tmp_path):
    out = tmp_path / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--int8-bias-correction",
                    "--calib-images", 64, "--no-parity", "--out", out)
    assert result.exit_code == 0, result.output
    notes = json.loads((out / "int8_report.json").read_text())["notes"]
    assert any(note.startswith("bias correction: 2 convs") for note in notes), notes


def test_per_tensor_weights_take_one_scale_per_conv(cnn_bn_run, tmp_path):
    out = tmp_path / "export"
    result = invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--int8-weights", "per-tensor",
                    "--calib-images", 64, "--no-parity", "--out", out)
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out / "model_int8.onnx"))
    producers, initializers = _producers(proto), {i.name: i for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        scales = numpy_helper.to_array(initializers[producers[conv.input[1]].input[1]])
        assert scales.size == 1  # one scale for the whole weight tensor
    assert json.loads((out / "int8_report.json").read_text())["weights"] == "int8 (symmetric, per tensor)"
    assert_user_error(invoke("export", cnn_bn_run, "--fold-bn", "--onnx", "--int8", "--int8-weights", "per-row",
                             "--out", tmp_path / "bad"), "--int8-weights 'per-row'", "per-channel or per-tensor")


def test_denoiser_calibrates_on_noisy_training_crops_and_gates_on_held_out_photos(cnn_bn_run, tmp_path):
    from zoo.denoise.data import HELD_OUT
    from zoo.errors import ZooError
    from zoo.int8_data import DENOISE_CROP, int8_settings

    metrics = {"task": "denoising", "sigma": 25.0, "channels": 1}
    settings = int8_settings(cnn_bn_run / "model.keras", dataset=None, run_dataset=None, images=16,
                             run_metrics=metrics, bias_correction=True)
    assert settings.calibration.shape == (16, DENOISE_CROP, DENOISE_CROP, 1) and settings.bias_correction
    assert settings.targets is not None and settings.targets.shape == settings.evaluation.shape
    assert settings.evaluation.shape[0] == 4 * len(HELD_OUT) and settings.labels is None
    noise = settings.evaluation - settings.targets  # the gate's inputs are the clean crops plus σ = 25 noise
    assert 0.05 < float(noise.std()) < 0.15
    assert "training photos" in settings.calibration_source and all(n in settings.evaluation_source
                                                                     for n in HELD_OUT)
    with pytest.raises(ZooError, match="larger than the smallest photo"):
        int8_settings(cnn_bn_run / "model.keras", dataset=None, run_dataset=None, images=4, run_metrics=metrics,
                      size=(5000, 5000))
