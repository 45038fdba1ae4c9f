"""DnCNN: the model, a few training steps, denoising odd sizes through every format, export with every BN folded
and parity at two sizes, the evaluation against NL-means/TV, and each bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_user_error, bn_layer_names, invoke, predict, randomize_bn

SMALL = {"depth": 5, "filters": 8}


def write_png(path, shape, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def test_dncnn_is_residual_and_fully_convolutional():
    from zoo.registry import create_model

    model = create_model("dncnn")
    assert len(bn_layer_names(model)) == 15  # depth 17: first and last conv have no BN
    small = create_model("dncnn", **SMALL)
    x = np.random.default_rng(0).random((2, 23, 31, 1), dtype=np.float32)
    assert predict(small, x).shape == x.shape
    np.testing.assert_allclose(predict(small, x), x, atol=1e-6)  # zero-initialised last conv: starts as identity
    noise = predict(__import__("keras").Model(small.input, small.get_layer("noise").output), x)
    np.testing.assert_allclose(predict(small, x), x - noise, atol=1e-6)


@pytest.fixture(scope="module")
def dncnn_run(tmp_path_factory):
    from zoo.denoise.train import train_dncnn

    out = tmp_path_factory.mktemp("dncnn") / "run"
    metrics = train_dncnn(out=out, sigma=25, steps=3, patch=16, batch_size=4, verbose=0, **SMALL)
    return out, metrics


def test_training_writes_the_run(dncnn_run):
    out, metrics = dncnn_run
    for name in ("model.keras", "history.csv", "curves.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert set(metrics["held_out_psnr"]) == {"noisy", "dncnn"}
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


def test_export_folds_every_bn_and_denoise_agrees_across_formats(dncnn_run, tmp_path):
    from export.loading import load_keras
    from export.pipeline import check_parity, export_model

    out, _ = dncnn_run
    model = load_keras(out / "model.keras")
    randomize_bn(model, moderate=True)
    model.save(tmp_path / "model.keras")
    result = export_model(tmp_path / "model.keras", tmp_path / "export", fold_bn=True, onnx=True)
    assert len(result.fold_report.folded) == 3 and not result.fold_report.kept
    report = check_parity(tmp_path / "export", device="cpu", sizes=[(32, 32), (27, 41)])
    assert report.passed, report.table()
    images = [write_png(tmp_path / "gray.png", (21, 37)), write_png(tmp_path / "rgb.png", (30, 17, 3), 1)]
    outputs = {}
    for kind, path in [("keras", tmp_path / "model.keras"), ("onnx", tmp_path / "export" / "model.onnx"),
                       ("savedmodel", tmp_path / "export" / "saved_model")]:
        result = invoke("denoise", path, *images, "--sigma", 25, "--out", tmp_path / kind)
        assert result.exit_code == 0, result.output
        outputs[kind] = {p.name: np.asarray(Image.open(tmp_path / kind / p.name)).astype(int) for p in images}
        assert (tmp_path / kind / "gray_noisy.png").is_file()
    for name, pixels in outputs["keras"].items():
        source = Image.open(tmp_path / name)
        assert pixels.shape[:2] == (source.height, source.width)
        for kind in ("onnx", "savedmodel"):
            assert np.abs(pixels - outputs[kind][name]).max() <= 1


def test_eval_denoise_scores_every_method(dncnn_run):
    from zoo.denoise.evaluate import evaluate_denoising

    out, _ = dncnn_run
    report = evaluate_denoising(out / "model.keras", sigmas=(50,), images=("moon",))
    methods = {row["method"]: row for row in report["rows"]}
    assert set(methods) == {"noisy", "dncnn", "nl_means", "tv_chambolle"}
    assert methods["nl_means"]["psnr"] > methods["noisy"]["psnr"]  # the baselines really denoise
    assert methods["tv_chambolle"]["psnr"] > methods["noisy"]["psnr"]
    assert 0 < methods["dncnn"]["ssim"] <= 1


def test_bad_input(dncnn_run, tmp_path):
    out, _ = dncnn_run
    image = write_png(tmp_path / "a.png", (20, 20))
    assert_user_error(invoke("denoise", out, image, "--sigma", 500, "--out", tmp_path / "o"), "sigma must be between")
    assert_user_error(invoke("eval-denoise", out, "--sigma", 0), "sigma must be between")
    (tmp_path / "notes.png").write_text("text")
    assert_user_error(invoke("denoise", out, tmp_path / "notes.png", "--out", tmp_path / "o"), "not a readable image")
    assert_user_error(invoke("train", "dncnn", "--sigma", -3, "--out", tmp_path / "run"), "sigma must be between")
    assert_user_error(invoke("train", "dncnn", "--dataset", "digits", "--out", tmp_path / "run"), "--dataset")
    assert_user_error(invoke("train", "cnn_bn", "--sigma", 25, "--out", tmp_path / "run"), "--sigma")
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()
