"""`train`: a short run writes a complete run directory; bad input fails early and writes nothing."""

import csv
import json

import keras
import numpy as np
import pytest

import zoo.train
from zoo import registry
from zoo.errors import ZooError
from zoo.registry import list_models, register_model
from export.atomic import MANIFEST, read_manifest, record_written
from export.errors import ExportError
from zoo.train import RUN_FILES, train


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """An easy 3-class 8×8 task (a bright row whose position is the class), small enough to fit in seconds."""
    rng = np.random.default_rng(0)

    def images(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8), dtype=np.uint8)
        x[np.arange(n), 1 + 3 * y] = 255
        return x, y

    (x_train, y_train), (x_test, y_test) = images(150), images(30)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def run(tiny_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nested" / "run"
    metrics = train("cnn_bn", dataset=tiny_npz, epochs=4, batch_size=8, lr=1e-3, out=out, verbose=0)
    return out, metrics


def test_run_directory_has_all_files(run):
    out, _ = run
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, MANIFEST])
    assert read_manifest(out)["kind"] == "run" and set(read_manifest(out)["entries"]) == set(RUN_FILES)
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    model = keras.saving.load_model(out / "model.keras")
    assert model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 3)
    assert not [p for p in out.parent.iterdir() if p.name != "run"]  # no staging directory left behind


def test_metrics_are_sensible(run):
    out, metrics = run
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9  # the task is easy; a broken pipeline would sit near 1/3
    assert metrics["test_loss"] > 0 and 0 <= metrics["val_accuracy"] <= 1
    assert (metrics["model"], metrics["epochs"], metrics["batch_size"], metrics["lr"]) == ("cnn_bn", 4, 8, 1e-3)
    assert (metrics["image_size"], metrics["class_names"], metrics["seed"]) == (8, ["0", "1", "2"], 0)
    assert metrics["augment"] is True and metrics["channels"] == 1
    assert metrics["samples"] == {"train": 135, "val": 15, "test": 30}
    assert metrics["params"] == keras.saving.load_model(out / "model.keras").count_params()
    assert metrics["wall_time_s"] > 0 and metrics["zoo_version"]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])


@pytest.mark.parametrize("blocker", ["file", "parent_file"])
def test_unwritable_out_fails_before_training_and_writes_nothing(tmp_path, blocker):
    (tmp_path / "afile").write_text("in the way")
    out = tmp_path / "afile" if blocker == "file" else tmp_path / "afile" / "run"
    with pytest.raises((ZooError, ExportError)) as error:  # both are one `error:` line on the command line
        train("cnn_bn", dataset="no-such-dataset", out=out)  # the out check comes first
    expected = "is a file; a run is a folder" if blocker == "file" else "afile is a file, not a folder"
    assert expected in str(error.value) and "choose another --out" in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_failure_after_training_leaves_out_as_it_was(tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    record_written(out / "metrics.json", kind="run")  # as an earlier zoo run left it

    def broken_plot(history, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zoo.train, "plot_curves", broken_plot)
    with pytest.raises(RuntimeError, match="disk full"):
        train("cnn_bn", dataset=tiny_npz, epochs=1, out=out, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.checkpoint", "run"]  # kept for --resume
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "metrics.json"]
    assert (out / "metrics.json").read_text() == "old"


def test_bad_arguments_are_zoo_errors(tmp_path, tiny_npz, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(ZooError, match="unknown dataset 'nope'"):
        train("cnn_bn", dataset="nope", out=out)
    with pytest.raises(ZooError, match="unknown model 'nope'"):
        train("nope", out=out)
    with pytest.raises(ZooError, match="batch_size must be a positive integer, not 0"):
        train("cnn_bn", batch_size=0, out=out)
    with pytest.raises(ZooError, match="num_classes come from the dataset"):
        train("cnn_bn", model_config={"num_classes": 3}, out=out)
    with pytest.raises(ZooError, match="has no option 'depth'"):
        train("cnn_bn", dataset=tiny_npz, model_config={"depth": 3}, out=out)
    list_models()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("denoiser", description="test", default_input_shape=(8, 8, 1), task="denoising")(lambda **c: None)
    with pytest.raises(ZooError, match="'denoiser' is a denoising model"):
        train("denoiser", out=out)
    assert list(tmp_path.iterdir()) == []
