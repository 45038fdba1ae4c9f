"""Every model in `zoo list` trains from the CLI, exports with --fold-bn --onnx and passes parity (tiny inputs, a
few steps), plus what each new family promises about its shape and its BN folding."""

import json

import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke, predict, randomize_bn
from zoo.registry import create_model, list_models

# the CLI arguments that make each model's run tiny; a model missing here fails the completeness test below
TINY = {
    "cnn_bn": ["--image-size", 16],
    "resnet20": ["--image-size", 16],
    "resnet56": ["--image-size", 8, "--option", "shortcut=B"],
    "preact_resnet18": ["--image-size", 8],
    "mobilenet_v2": ["--image-size", 16, "--option", "alpha=0.25"],
    "vgg_bn": ["--image-size", 16, "--option", "depth=11", "--option", "width=0.125"],
    "dncnn": ["--steps", 2, "--patch", 16, "--batch-size", 2, "--option", "depth=4", "--option", "filters=4"],
    "style_transformer": ["--style", "skimage:brick", "--loss-net", "random", "--steps", 1, "--image-size", 32,
                          "--batch-size", 1, "--option", "width=4"],
}
CLASSIFIER_DATA = ["--dataset", "digits+per-class=2", "--epochs", 1, "--batch-size", 8]


def test_every_registered_model_has_a_tiny_run():
    assert sorted(TINY) == sorted(spec.name for spec in list_models())


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_from_the_cli_exports_folded_and_passes_parity(name, tmp_path):
    spec = next(s for s in list_models() if s.name == name)
    command = "style" if spec.task == "style_transfer" else name
    args = CLASSIFIER_DATA if spec.task == "classification" else []
    run = tmp_path / "run"
    result = invoke("train", command, *args, *TINY[name], "--out", run)
    assert result.exit_code == 0, result.output
    sizes = ["--size", "32x32"] if spec.default_input_shape[0] is None else []
    result = invoke("export", run, "--fold-bn", "--onnx", *sizes)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "FAIL" not in result.output
    report = json.loads((run / "export" / "fold_report.json").read_text())
    assert report["total"] == len(report["folded"]) + len(report["kept"])


def test_cifar_resnets_have_the_papers_depth_and_size():
    for name, blocks, params in (("resnet20", 3, 0.27e6), ("resnet56", 9, 0.85e6)):
        model = create_model(name)
        convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
        assert len(convs) + 1 == 6 * blocks + 2  # + the Dense: 6n + 2 weighted layers (option A: no shortcut convs)
        assert abs(model.count_params() - params) / params < 0.02
        assert model.output_shape == (None, 10)
    with_b = create_model("resnet20", shortcut="B")
    assert {"stage2_block1_proj_conv", "stage3_block1_proj_conv"} <= {l.name for l in with_b.layers}


def test_option_a_shortcut_is_subsampled_identity_with_zero_channels():
    import keras

    model = create_model("resnet20", input_shape=(8, 8, 3))
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    block_in = keras.Model(model.input, model.get_layer("stage1_block3_relu").output)
    widened = keras.Model(model.input, model.get_layer("stage2_block1_widen").output)
    before, after = predict(block_in, x), predict(widened, x)
    np.testing.assert_array_equal(after[..., :16], before[:, ::2, ::2, :])
    assert not after[..., 16:].any() and after.shape == (1, 4, 4, 32)


def test_preact_input_bn_folds_forward_into_the_same_padded_stem_conv():
    from export.fold_bn import fold_batchnorm

    model = create_model("preact_resnet18", input_shape=(12, 12, 3))
    randomize_bn(model, moderate=True)
    folded, report = fold_batchnorm(model)
    into = {f.bn: f.into for f in report.folded}
    assert into["input_bn"] == "stem_conv"
    kept = {k.bn for k in report.kept}
    assert {f"stage{s}_block{b}_pre_bn" for s in (1, 2, 3, 4) for b in (1, 2)} | {"final_bn"} == kept
    x = np.random.default_rng(1).random((2, 12, 12, 3), dtype=np.float32) * 4  # borders matter: 'same' padding
    np.testing.assert_allclose(predict(folded, x), predict(model, x), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("side, final", [(32, 4), (224, 7)])
def test_mobilenet_v2_strides_follow_the_input_size(side, final):
    model = create_model("mobilenet_v2", input_shape=(side, side, 3))
    assert model.get_layer("head_relu6").output.shape[1:3] == (final, final)
    depthwise = [l for l in model.layers if l.__class__.__name__ == "DepthwiseConv2D"]
    assert len(depthwise) == 17 and sum(1 for l in model.layers if l.name.endswith("_add")) == 10
    assert model.count_params() == 2_257_984 + 1281 * 10  # keras.applications.MobileNetV2 without top, + 10 logits
    slim = create_model("mobilenet_v2", input_shape=(side, side, 3), alpha=0.35)
    assert all(l.output.shape[-1] % 8 == 0 for l in slim.layers if l.name.endswith("_project_conv"))


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_depths_have_a_bn_after_every_conv(depth, convs):
    model = create_model("vgg_bn", depth=depth, width=0.125, input_shape=(28, 28, 1))
    names = [l.name for l in model.layers]
    assert sum(n.endswith("_conv") for n in names) == convs == sum(n.endswith("_bn") for n in names)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("args, message", [
    (["resnet20", "--option", "shortcut=C"], "shortcut must be 'A'"),
    (["vgg_bn", "--option", "depth=12"], "depth must be one of 11, 13, 16, 19"),
    (["mobilenet_v2", "--option", "alpha=0"], "alpha must be a number in (0, 4]"),
    (["resnet20", "--option", "shortcut"], "write KEY=VALUE"),
    (["resnet20", "--option", "colour=red"], "has no option 'colour'"),
    (["dncnn", "--option", "width=3"], "dncnn has no training option width"),
])
def test_bad_model_options_are_one_line(args, message, tmp_path):
    assert_user_error(invoke("train", *args, "--epochs", 1, "--out", tmp_path / "run")
                      if args[0] != "dncnn" else invoke("train", *args, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def test_sizes_for_a_fixed_size_model_fail_before_anything_is_written(cnn_bn_run, tmp_path):
    result = invoke("export", cnn_bn_run, "--fold-bn", "--size", "32x32", "--out", tmp_path / "export")
    assert_user_error(result, "fixed input size")
    assert not (tmp_path / "export").exists()
