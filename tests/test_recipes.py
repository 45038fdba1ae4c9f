"""Training recipes (optimizer, schedule, weight decay, label smoothing), early stopping and keep-best."""

import json

import keras
import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke
from zoo.errors import ZooError
from zoo.recipes import DEFAULT, HE_CIFAR, SmoothedSparseCrossentropy, compile_with, recipe_for
from zoo.train import BestEpoch, train


def tiny_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_paper_recipe_is_he_et_al_for_cifar_resnets():
    assert recipe_for("resnet20", "paper") is HE_CIFAR is recipe_for("resnet56", "paper")
    model = tiny_model()
    compile_with(model, HE_CIFAR, steps=64_000)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert optimizer.weight_decay == pytest.approx(1e-4)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    rates = [float(schedule(step)) for step in (0, 31_999, 32_001, 47_999, 48_001, 63_999)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    assert HE_CIFAR.batch_size == 128 and HE_CIFAR.epochs == 164


def test_default_recipe_warms_up_then_decays_to_zero():
    model = tiny_model()
    compile_with(model, DEFAULT.with_overrides(lr=0.01), steps=1000)
    schedule = model.optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.001) and float(schedule(100)) == pytest.approx(0.01)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-8)


def test_label_smoothing_matches_the_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
    labels = np.array([0, 2])
    loss = float(SmoothedSparseCrossentropy(smoothing=0.1)(labels, logits))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[labels]
    assert loss == pytest.approx(float(-(target * log_p).sum(axis=1).mean()), rel=1e-5)


def test_early_stopping_counts_epochs_without_improvement_and_keep_best_restores():
    model = tiny_model()
    model.stop_training = False
    best = BestEpoch(patience=2, restore=True, history={})
    best.set_model(model)
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65, 0.69]):
        model.layers[-1].bias.assign(np.full(3, epoch, np.float32))
        best.on_epoch_end(epoch, {"val_accuracy": score})
        assert model.stop_training == (epoch >= 3)  # epochs 2 and 3 did not beat epoch 1: stop after 3
        model.stop_training = False
    best.finish(model)
    assert best.best_epoch == 1 and np.all(np.asarray(model.layers[-1].bias) == 1)


def test_recipe_options_reach_training_and_metrics(tmp_path):
    metrics = train("cnn_bn", dataset="digits+per-class=4", image_size=16, epochs=2, out=tmp_path / "run",
                    optimizer="sgd", weight_decay=1e-4, schedule="step", label_smoothing=0.1, batch_size=8,
                    keep_best=True, early_stopping=5, verbose=0)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key, value in (("optimizer", "sgd"), ("weight_decay", 1e-4), ("schedule", "step"),
                       ("label_smoothing", 0.1), ("batch_size", 8), ("kept", "best"), ("epochs_run", 2), ("epochs", 2)):
        assert metrics[key] == value == saved[key], key
    assert keras.saving.load_model(tmp_path / "run" / "model.keras").count_params() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"recipe": "paper"}, "no published recipe for 'cnn_bn'; --recipe paper is for preact_resnet18, resnet20"),
    ({"recipe": "fast"}, "unknown recipe 'fast'"),
    ({"optimizer": "lion"}, "optimizer must be one of adam, sgd"),
    ({"schedule": "linear"}, "schedule must be one of cosine, step, constant"),
    ({"label_smoothing": 1.5}, "label_smoothing must be a number in"),
    ({"early_stopping": 0}, "early_stopping must be a positive integer"),
])
def test_bad_recipe_options_are_zoo_errors(kwargs, message, tmp_path):
    with pytest.raises(ZooError, match=message):
        train("cnn_bn", out=tmp_path / "run", **kwargs)


def test_classifier_options_are_refused_for_other_models(tmp_path):
    assert_user_error(invoke("train", "dncnn", "--recipe", "paper", "--out", tmp_path / "d"),
                      "--recipe is for classifiers, not `zoo train dncnn`")
    assert_user_error(invoke("train", "style", "--keep-best", "--out", tmp_path / "s"),
                      "--keep-best is for classifiers")


def test_mixed_precision_and_xla_train_and_save_a_float32_model_that_exports(tmp_path):
    from export.pipeline import check_parity, export_model

    metrics = train("cnn_bn", dataset="digits+per-class=4", image_size=16, epochs=1, out=tmp_path / "run",
                    mixed_precision=True, jit=True, verbose=0)
    assert metrics["precision"] == "mixed_bfloat16" and metrics["jit"] is True  # no GPU here: bfloat16
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    export_model(tmp_path / "run" / "model.keras", tmp_path / "export", fold_bn=True, onnx=True)
    report = check_parity(tmp_path / "export", device="cpu")
    assert report.passed, report.table()


def test_default_epochs_come_from_the_dataset_and_are_reported(tmp_path):
    metrics = train("cnn_bn", dataset="digits+per-class=2", image_size=16, out=tmp_path / "run", verbose=0)
    assert metrics["epochs"] == metrics["epochs_run"] == 40  # digits' default; the recipe leaves it open
