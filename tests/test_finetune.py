"""`zoo finetune`: the frozen backbone (weights and BN statistics) really stays frozen, the two BN modes behave as
documented, the cut is found in zoo and user models, the result exports and passes parity, and bad input fails
with one line."""

import json

import keras
import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke, predict, randomize_bn
from zoo.errors import ZooError

TARGET = "digits+classes=5-9+per-class=8"
QUICK = {"epochs_head": 2, "batch_size": 16, "verbose": 0}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """cnn_bn trained briefly on digits 0-4 at 16×16, with BN statistics moved far from their initial values."""
    from zoo.train import train

    out = tmp_path_factory.mktemp("finetune") / "base"
    train("cnn_bn", dataset="digits+classes=0-4", epochs=1, image_size=16, out=out, verbose=0)
    model = keras.saving.load_model(out / "model.keras")
    randomize_bn(model, moderate=True)  # far from the init, so any update to them is visible
    model.save(out / "model.keras")
    return out


def backbone_state(model):
    """name → value of every backbone variable (trainable and not), from the base or a fine-tuned model."""
    from zoo.adabn import bn_layers

    backbone = model.get_layer("backbone") if "backbone" in [l.name for l in model.layers] else model
    state = {}
    for layer in backbone.layers:
        for variable in layer.weights:
            state[f"{layer.name}/{variable.name}"] = np.array(variable)
    assert len(bn_layers(backbone)) == 2
    return state


def changed(before, after):
    return sorted(name for name in before if name in after and not np.array_equal(before[name], after[name]))


def test_head_training_leaves_the_backbone_and_its_bn_statistics_untouched(base_run, tmp_path):
    from zoo.finetune import finetune

    base = keras.saving.load_model(base_run / "model.keras")
    metrics = finetune(base_run, dataset=TARGET, out=tmp_path / "run", **QUICK)
    tuned = keras.saving.load_model(tmp_path / "run" / "model.keras")
    before, after = backbone_state(base), backbone_state(tuned)
    assert set(before) - {"logits/kernel", "logits/bias"} <= set(after) and not changed(before, after)
    assert tuned.output.shape[-1] == 5 and metrics["cut"] == "flatten" and metrics["outputs"] == "logits"
    assert metrics["trainable_params"] == {"head": tuned.get_layer("head_logits").count_params()}
    for name in ("model.keras", "history.csv", "metrics.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"] == TARGET


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_bn_modes_during_fine_tuning(base_run, tmp_path, bn_mode):
    from zoo.finetune import finetune

    base = backbone_state(keras.saving.load_model(base_run / "model.keras"))
    metrics = finetune(base_run, dataset=TARGET, out=tmp_path / "run", epochs_finetune=2, bn_mode=bn_mode, **QUICK)
    moved = changed(base, backbone_state(keras.saving.load_model(tmp_path / "run" / "model.keras")))
    assert {"block1_conv/kernel", "block2_conv/kernel"} <= set(moved)  # fine-tuning trains the backbone
    bn_variables = {f"block{b}_bn/{v}" for b in (1, 2) for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    if bn_mode == "frozen":
        assert not bn_variables & set(moved)  # statistics, γ and β all as in the base
    else:
        assert bn_variables <= set(moved)
    assert metrics["epochs_finetune"] == 2 and len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 5


def user_classifier():
    """Not a zoo model: conv-BN body, global pooling, Dropout, Dense with softmax, then an Activation."""
    inputs = keras.Input((16, 16, 1), name="pixels")
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inputs, keras.layers.Activation("linear", name="identity")(x))


def test_default_cut_walks_back_to_the_classifier_layer_of_any_model():
    from zoo.finetune import split_model

    model = user_classifier()
    features, tail = split_model(model, None)
    assert features is model.get_layer("drop").output
    assert [layer.name for layer in tail] == ["probs", "identity"]
    features, tail = split_model(model, "bn1")
    assert features is model.get_layer("bn1").output and tail == []


def test_keep_head_reuses_the_base_head_and_new_head_pools_a_feature_map(tmp_path):
    from zoo.finetune import finetune

    model = user_classifier()
    model.save(tmp_path / "user.keras")
    kept = finetune(tmp_path / "user.keras", dataset="digits+classes=0-4+per-class=4", out=tmp_path / "kept",
                    keep_head=True, **QUICK)
    tuned = keras.saving.load_model(tmp_path / "kept" / "model.keras")
    assert [layer.name for layer in tuned.layers[-2:]] == ["probs", "identity"]
    assert kept["outputs"] == "probabilities" and np.isfinite(kept["test_loss"])  # loss not taken from logits
    finetune(tmp_path / "user.keras", dataset="digits+classes=0-2+per-class=4", out=tmp_path / "cut", cut="bn1",
             **QUICK)
    tuned = keras.saving.load_model(tmp_path / "cut" / "model.keras")
    assert [layer.name for layer in tuned.layers[-2:]] == ["head_pool", "head_logits"]
    assert tuned.output.shape[-1] == 3


def test_finetuned_model_exports_with_bn_folded_and_passes_parity(base_run, tmp_path):
    from export.pipeline import check_parity, export_model
    from zoo.finetune import finetune

    finetune(base_run, dataset=TARGET, out=tmp_path / "run", epochs_finetune=1, **QUICK)
    result = export_model(tmp_path / "run" / "model.keras", tmp_path / "export", fold_bn=True, onnx=True)
    assert len(result.fold_report.folded) == 2 and not result.fold_report.kept
    report = check_parity(tmp_path / "export", device="cpu")
    assert report.passed, report.table()
    x = np.random.default_rng(0).random((3, 16, 16, 1), dtype=np.float32)
    folded = keras.saving.load_model(tmp_path / "export" / "model_folded.keras")
    np.testing.assert_allclose(predict(folded, x),
                               predict(keras.saving.load_model(tmp_path / "run" / "model.keras"), x), atol=1e-5)


def test_cli_finetune_writes_the_run(base_run, tmp_path):
    result = invoke("finetune", base_run, "--dataset", TARGET, "--epochs-head", 1, "--epochs-finetune", 1,
                    "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "cut at 'flatten'" in result.output and "after fine-tuning (BN frozen)" in result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["bn_mode"] == "frozen"


@pytest.mark.parametrize("args, message", [
    (["--cut", "nope"], "no layer 'nope' in the model to cut at; its layers are block1_conv"),
    (["--cut", "logits"], "cutting at 'logits' leaves no backbone and head"),
    (["--keep-head", "--dataset", "digits"], "the base's head has 5 outputs but digits has 10 classes"),
    (["--keep-head", "--cut", "flatten"], "cannot be combined with --cut"),
    (["--epochs-head", 0], "epochs_head must be a positive integer"),
    (["--dataset", "digits+classes=5-15"], "digits has classes 0-9"),
])
def test_bad_finetune_input_is_one_line(base_run, tmp_path, args, message):
    if "--dataset" not in args:
        args = [*args, "--dataset", TARGET]
    result = invoke("finetune", base_run, *args, "--out", tmp_path / "run")
    assert_user_error(result, message)
    assert not (tmp_path / "run").exists()


def test_missing_or_corrupt_base_is_one_line(tmp_path):
    assert_user_error(invoke("finetune", tmp_path / "none", "--dataset", TARGET), "does not exist")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    assert_user_error(invoke("finetune", tmp_path / "bad.keras", "--dataset", TARGET), "not a .keras archive")
    with pytest.raises(ZooError, match="bn-mode must be one of frozen, train"):
        from zoo.finetune import finetune

        finetune(tmp_path / "bad.keras", dataset=TARGET, out=tmp_path / "run", bn_mode="batch")
