"""Style networks: the transformer at any size, losses, training steps, stylize through every format, export
parity at two sizes (one odd), Gatys optimisation, and each bad input at the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_user_error, bn_layer_names, invoke, predict, randomize_bn

TINY = {"width": 4}  # 4-8-16 filters: the real architecture, small enough for CPU tests


def write_png(path, shape, seed=0, mode=None):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_transformer_keeps_any_size_and_range(norm):
    from zoo.registry import create_model

    model = create_model("style_transformer", norm=norm, **TINY)
    for height, width in [(16, 16), (17, 23), (37, 45)]:
        x = np.random.default_rng(0).random((2, height, width, 3), dtype=np.float32)
        y = predict(model, x)
        assert y.shape == x.shape
        assert 0.0 <= y.min() and y.max() <= 1.0
    kinds = {type(layer).__name__ for layer in model.layers}
    assert ("BatchNormalization" in kinds) == (norm == "batch")
    assert ("InstanceNormalization" in kinds) == (norm == "instance")


def test_instance_normalization_matches_numpy():
    from zoo.layers import InstanceNormalization

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 9, 13, 4)) * 3 + 5).astype(np.float32)
    layer = InstanceNormalization(epsilon=1e-3)
    layer.build(x.shape)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    layer.set_weights([gamma, beta])
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(1, 2), keepdims=True), x64.var(axis=(1, 2), keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=2e-5)


def test_transformer_rejects_bad_options():
    from zoo.errors import ZooError
    from zoo.registry import create_model

    with pytest.raises(ZooError, match="norm must be one of"):
        create_model("style_transformer", norm="layer")
    with pytest.raises(ZooError, match="3 channels"):
        create_model("style_transformer", input_shape=(None, None, 1))


def test_gram_and_style_loss_match_numpy():
    from zoo.style.losses import content_loss, gram, style_loss, total_variation

    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    t = rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    flat = f.reshape(2, 30, 3)
    expected = np.einsum("nic,nid->ncd", flat, flat) / 90
    np.testing.assert_allclose(np.asarray(gram(f)), expected, rtol=1e-5)
    g_t = np.asarray(gram(t))
    want = ((expected - g_t) ** 2).sum(axis=(1, 2)) / (g_t ** 2).sum()
    np.testing.assert_allclose(np.asarray(style_loss([gram(f)], [g_t])), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(content_loss(f, f)), 0.0, atol=1e-7)
    tv = ((f[:, 1:] - f[:, :-1]) ** 2).mean(axis=(1, 2, 3)) + ((f[:, :, 1:] - f[:, :, :-1]) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(total_variation(f)), tv, rtol=1e-5)


def test_imagenet_loss_net_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    from zoo.errors import ZooError
    from zoo.style.losses import build_loss_network

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ZooError, match="not in the Keras cache.*--vgg-weights.*--loss-net random"):
        build_loss_network("vgg16")


def test_imagenet_loss_net_loads_weights_from_the_cache_or_a_file(tmp_path, monkeypatch):
    """A no-top VGG16 weights file in Keras' cache (or given as --vgg-weights) is what the loss network holds."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from zoo.errors import ZooError
    from zoo.style.losses import WEIGHT_FILES, build_loss_network

    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(3)
    source.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in source.get_weights()])
    cached = tmp_path / "models" / WEIGHT_FILES["vgg16"]
    cached.parent.mkdir()
    with h5py.File(cached, "w") as f:  # the legacy layout keras.applications' ImageNet files have
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    expected = {w.path: w.numpy() for w in source.weights}

    for net in (build_loss_network("vgg16"), build_loss_network("vgg16", weights_path=cached)):
        assert not net.random and "ImageNet weights" in net.description
        for weight in net.model.weights:
            np.testing.assert_array_equal(weight.numpy(), expected[weight.path])
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ZooError, match="cannot load vgg16 weights from .*broken"):
        build_loss_network("vgg16", weights_path=broken)


@pytest.fixture(scope="module", params=["batch", "instance"])
def style_run(request, tmp_path_factory):
    from zoo.style.train import train_style

    out = tmp_path_factory.mktemp("style") / request.param
    metrics = train_style(style="skimage:brick", out=out, norm=request.param, steps=3, image_size=32,
                          batch_size=2, loss_net="random", verbose=False, **TINY)
    return out, metrics


def test_training_writes_the_run_and_says_the_loss_net_is_random(style_run):
    out, metrics = style_run
    for name in ("model.keras", "losses.csv", "losses.png", "grid.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert metrics["loss_net_random"] is True and "RANDOM" in metrics["loss_net"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["evaluation"]["style_loss_ratio"] > 0
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,total,content,style,tv" and len(rows) == 4


def test_training_lowers_the_style_loss(tmp_path):
    """20 steps on 32-px crops: the training loss's style part falls well below its first value, and held-out
    photos come out with a style loss far below their own (measured: 49 → ~0.5 and 302 → 0.46 after 40 steps)."""
    from zoo.style.train import train_style

    metrics = train_style(style="skimage:brick", out=tmp_path / "run", steps=20, image_size=32, batch_size=2,
                          loss_net="random", verbose=False, **TINY)
    style = [float(row.split(",")[3]) for row in (tmp_path / "run" / "losses.csv").read_text().splitlines()[1:]]
    assert np.mean(style[-5:]) < 0.25 * style[0], style
    evaluation = metrics["evaluation"]
    assert evaluation["stylized_style_loss"] < 0.1 * evaluation["content_images_style_loss"], evaluation


def test_export_folds_every_bn_and_passes_parity_at_two_sizes(style_run, tmp_path):
    from export.loading import load_keras
    from export.pipeline import check_parity, export_model

    out, metrics = style_run
    model = load_keras(out / "model.keras")
    randomize_bn(model, moderate=True)  # 3 training steps leave the statistics near their start
    model.save(tmp_path / "model.keras")
    result = export_model(tmp_path / "model.keras", tmp_path / "export", fold_bn=True, onnx=True, tflite=True)
    folded = load_keras(tmp_path / "export" / "model_folded.keras")
    if metrics["norm"] == "batch":
        assert len(bn_layer_names(model)) == 15 and len(result.fold_report.folded) == 15
    assert bn_layer_names(folded) == []
    report = check_parity(tmp_path / "export", device="cpu", sizes=[(32, 32), (37, 45)])
    runtimes = {row.runtime for row in report.rows}
    assert {"keras-folded", "savedmodel", "ort-cpu", "tflite"} <= runtimes
    assert report.passed, report.table()
    assert any("37x45" in row.inputs for row in report.rows)


def test_stylize_through_keras_savedmodel_onnx_agree_at_odd_sizes(style_run, tmp_path):
    from export.pipeline import export_model

    out, _ = style_run
    export_model(out / "model.keras", tmp_path / "export", fold_bn=True, onnx=True)
    images = [write_png(tmp_path / "rgb.png", (19, 33, 3)), write_png(tmp_path / "gray.png", (40, 17), 1),
              write_png(tmp_path / "rgba.png", (25, 25, 4), 2), write_png(tmp_path / "rgb2.png", (19, 33, 3), 3)]
    results = {}
    for kind, model in [("keras", out / "model.keras"), ("savedmodel", tmp_path / "export" / "saved_model"),
                        ("onnx", tmp_path / "export" / "model.onnx")]:
        result = invoke("stylize", model, *images, "--out", tmp_path / kind, "--batch-size", 2)
        assert result.exit_code == 0, result.output
        results[kind] = {p.name: np.asarray(Image.open(tmp_path / kind / p.name)) for p in images}
    for name, pixels in results["keras"].items():
        source = Image.open(tmp_path / name)
        assert pixels.shape == (source.height, source.width, 3)
        for kind in ("savedmodel", "onnx"):
            assert np.abs(pixels.astype(int) - results[kind][name].astype(int)).max() <= 1, (kind, name)


def test_zoo_export_and_parity_cli_on_a_style_run(style_run):
    out, _ = style_run
    result = invoke("export", out, "--fold-bn", "--onnx", "--size", "32x32", "--size", "25x37")
    assert result.exit_code == 0, result.output
    assert "25x37" in result.output and "FAIL" not in result.output
    result = invoke("parity", out / "export", "--size", "20x20", "--size", "17x31")
    assert result.exit_code == 0, result.output


def test_train_style_cli_and_optimize(tmp_path):
    result = invoke("train", "style", "--style", "skimage:brick", "--loss-net", "random", "--steps", 2,
                    "--image-size", 32, "--batch-size", 2, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and (tmp_path / "run" / "model.keras").is_file()
    content = write_png(tmp_path / "content.png", (30, 40, 3))
    result = invoke("stylize", "--method", "optimize", "--content", content, "--style", "skimage:gravel",
                    "--loss-net", "random", "--steps", 3, "--image-size", 32, "--out", tmp_path / "opt")
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output
    assert Image.open(tmp_path / "opt" / "content_optimized.png").size == (32, 24)


@pytest.fixture()
def keras_style_model(tmp_path):
    from zoo.registry import create_model

    path = tmp_path / "style.keras"
    create_model("style_transformer", **TINY).save(path)
    return path


@pytest.mark.parametrize("make, fragments", [
    (lambda d: d / "missing.png", ["does not exist"]),
    (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", ["not a readable image"]),
    (lambda d: write_png(d / "tiny.png", (10, 40, 3)), ["40×10", "at least 16"]),
    (lambda d: d, ["is a folder"]),
])
def test_stylize_bad_images(tmp_path, keras_style_model, make, fragments):
    image = make(tmp_path)
    result = invoke("stylize", keras_style_model, image, "--out", tmp_path / "out")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_stylize_image_too_large(tmp_path, keras_style_model):
    image = write_png(tmp_path / "big.png", (64, 64, 3))
    result = invoke("stylize", keras_style_model, image, "--max-pixels", 1000, "--out", tmp_path / "out")
    assert_user_error(result, "64×64", "above the limit", "--max-pixels")
    assert not (tmp_path / "out").exists()


def test_stylize_unknown_model_format(tmp_path):
    image = write_png(tmp_path / "a.png", (20, 20, 3))
    (tmp_path / "model.h5").write_text("x")
    assert_user_error(invoke("stylize", tmp_path / "model.h5", image, "--out", tmp_path / "o"), "not a .keras")


def test_train_style_bad_inputs(tmp_path):
    out = tmp_path / "run"
    assert_user_error(invoke("train", "style", "--loss-net", "random", "--out", out), "--style IMAGE")
    assert_user_error(invoke("train", "style", "--style", tmp_path, "--loss-net", "random", "--out", out),
                      "is a folder")
    assert_user_error(invoke("train", "style", "--style", tmp_path / "none.jpg", "--out", out), "does not exist")
    assert_user_error(invoke("train", "style", "--style", "skimage:nope", "--out", out), "unknown bundled image")
    assert_user_error(invoke("train", "cnn_bn", "--style", "skimage:brick", "--out", out), "--style")
    assert_user_error(invoke("train", "style", "--style", "skimage:brick", "--epochs", 3, "--out", out), "--epochs")
    assert not out.exists()


def test_parity_size_must_be_hxw(tmp_path, keras_style_model):
    assert_user_error(invoke("parity", keras_style_model, "--size", "32"), "not HxW")
