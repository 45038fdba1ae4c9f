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
# (folded, kept) BN layers of each tiny run: every BN after a conv with one consumer folds; preact_resnet18 keeps its
# 8 pre-activation BNs and final_bn (they follow an Add) and folds input_bn forward into the stem conv
FOLDED = {"cnn_bn": (2, 0), "resnet20": (19, 0), "resnet56": (57, 0), "preact_resnet18": (9, 9),
          "mobilenet_v2": (52, 0), "vgg_bn": (8, 0), "dncnn": (2, 0), "style_transformer": (15, 0)}


def test_every_registered_model_has_a_tiny_run():
    assert sorted(TINY) == sorted(spec.name for spec in list_models()) == sorted(FOLDED)


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_from_the_cli_exports_folded_and_passes_parity(name, tmp_path):
    spec = next(s for s in list_models() if s.name == name)
    command = "style" if spec.task == "style_transfer" else name
    args = CLASSIFIER_DATA if spec.task == "classification" else []
    run = tmp_path / "run"
    result = invoke("train", command, *args, *TINY[name], "--out", run)
    assert result.exit_code == 0, result.output
    _far_from_initial(run / "model.keras")
    sizes = ["--size", "32x32"] if spec.default_input_shape[0] is None else []
    result = invoke("export", run, "--fold-bn", "--onnx", *sizes)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "FAIL" not in result.output
    report = json.loads((run / "export" / "fold_report.json").read_text())
    assert (len(report["folded"]), len(report["kept"])) == FOLDED[name]


def _far_from_initial(path):
    """A few training steps leave BN near its initial statistics and DnCNN, whose last conv starts at zero, near
    the identity, where a fold that drops ε or mixes up γ and β still passes parity. Random kernels (std
    1/√fan-in), BN statistics and biases (moderate, so a 57-BN net stays in range) make every fold term count."""
    import keras

    import zoo.layers  # noqa: F401 - zoo's registered layers

    model = keras.saving.load_model(path)
    rng = np.random.default_rng(2)
    for layer in model._flatten_layers(include_self=False):
        for kernel in (getattr(layer, name, None) for name in ("kernel", "depthwise_kernel", "pointwise_kernel")):
            if kernel is not None:
                shape = tuple(kernel.shape)
                kernel.assign(rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape).astype("float32"))
    randomize_bn(model, seed=1, moderate=True)
    model.save(path)


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
