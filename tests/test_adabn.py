"""AdaBN: recalibration changes only BN statistics, equals a NumPy population average, works on nested models,
and recovers accuracy under a real domain shift; `zoo recalibrate-bn` end to end and its bad input."""

import json

import keras
import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke, randomize_bn
from zoo.adabn import bn_layers, recalibrate_bn


def tiny_net():
    x = inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.BatchNormalization(name="input_bn")(x)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def batches(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(5, 8, 8, 3)) * 2 + 3).astype(np.float32) for _ in range(n)]


def test_statistics_are_the_numpy_population_average_and_nothing_else_changes():
    model = tiny_net()
    randomize_bn(model)
    before = {w.path: np.array(w) for w in model.weights}
    data = batches()
    recalibrate_bn(model, data)
    everything = np.concatenate(data).reshape(-1, 3).astype(np.float64)
    first = model.get_layer("input_bn")
    np.testing.assert_allclose(np.array(first.moving_mean), everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.array(first.moving_variance), everything.var(axis=0), rtol=1e-5)
    # the second BN sees the conv output of inputs normalised with the *new* first-layer statistics
    features = keras.Model(model.input, model.get_layer("conv").output)
    conv_out = np.concatenate([np.asarray(features(b, training=False)) for b in data]).reshape(-1, 4)
    second = model.get_layer("conv_bn")
    np.testing.assert_allclose(np.array(second.moving_mean), conv_out.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(second.moving_variance), conv_out.var(axis=0), rtol=1e-5, atol=1e-6)
    for w in model.weights:
        if "moving_" not in w.path:
            np.testing.assert_array_equal(np.array(w), before[w.path], err_msg=w.path)


def test_nested_backbone_is_recalibrated():
    backbone = tiny_net()
    inputs = keras.Input((8, 8, 3), name="outer")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(backbone(inputs)))
    shifts = recalibrate_bn(model, batches(1))
    assert [s.layer for s in shifts] == ["input_bn", "conv_bn"]
    assert len(bn_layers(model)) == 2
    mean = np.concatenate(batches(1)).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(np.array(backbone.get_layer("input_bn").moving_mean), mean, rtol=1e-6)


def test_no_bn_is_an_error():
    from zoo.errors import ZooError

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ZooError, match="no BatchNormalization"):
        recalibrate_bn(model, [np.zeros((2, 4), np.float32)])


@pytest.fixture(scope="module")
def digits_run(cnn_bn_run):
    return cnn_bn_run


def test_cli_recalibrates_on_brighter_digits_and_recovers_accuracy(digits_run, tmp_path):
    report_path = tmp_path / "report.json"
    result = invoke("recalibrate-bn", digits_run, "--dataset", "digits+brightness", "--batches", 10,
                    "--out", tmp_path / "adabn.keras", "--json", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert [row["layer"] for row in report["layers"]] == ["block1_bn", "block2_bn"]
    assert report["test_accuracy_after"] > report["test_accuracy_before"] + 0.2, report
    assert (tmp_path / "adabn.keras").is_file()
    export = invoke("export", tmp_path / "adabn.keras", "--fold-bn", "--onnx")
    assert export.exit_code == 0 and "FAIL" not in export.output, export.output


def test_cli_bad_input(digits_run, tmp_path):
    assert_user_error(invoke("recalibrate-bn", tmp_path / "none.keras", "--dataset", "digits"), "does not exist")
    assert_user_error(invoke("recalibrate-bn", digits_run, "--dataset", "digits+blur"), "unknown dataset modifier")
    assert_user_error(invoke("recalibrate-bn", digits_run, "--dataset", "digits", "--out", tmp_path / "x.h5"),
                      "must end in .keras")
    assert_user_error(invoke("recalibrate-bn", digits_run, "--dataset", "digits", "--batches", 0), "batches")
    assert not list(tmp_path.iterdir())


def test_out_may_be_a_folder_like_every_command_s(digits_run, tmp_path):
    result = invoke("recalibrate-bn", digits_run, "--dataset", "digits+invert", "--batches", 2, "--no-evaluate",
                    "--out", tmp_path / "recalibrated")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "recalibrated" / "model_adabn.keras").is_file()
    assert f"wrote {tmp_path / 'recalibrated' / 'model_adabn.keras'}" in result.output
