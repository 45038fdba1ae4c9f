"""The `zoo` commands end to end through typer's CliRunner: train → export --fold-bn --onnx → parity, bad input."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from tests.helpers import assert_user_error, invoke


@pytest.fixture(scope="module")
def run_dir(cnn_bn_run):
    return cnn_bn_run


@pytest.fixture(scope="module")
def export_dir(run_dir):
    result = invoke("export", run_dir, "--fold-bn", "--onnx")
    assert result.exit_code == 0, result.output
    assert "folded 2 of 2 BN layers" in result.output
    assert "PASS" in result.output and "FAIL" not in result.output
    return run_dir / "export"


def test_help_does_not_import_tensorflow():
    code = "import sys, zoo.cli; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_list_shows_cnn_bn_with_params_and_shape():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("cnn_bn"))
    assert "28×28×1" in row and any(ch.isdigit() for ch in row.split()[1])


def test_train_writes_the_run(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"model.keras", "history.csv", "metrics.json", "curves.png"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_export_writes_bn_free_onnx_with_stable_names(export_dir):
    names = {p.name for p in export_dir.iterdir()}
    assert {"model.keras", "model_folded.keras", "fold_report.json", "saved_model", "model.onnx", "parity.json"} <= names
    graph = onnx.load(export_dir / "model.onnx").graph
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops
    assert ops.count("Add") <= 1  # the Dense bias; the two BN Mul+Add pairs are gone
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    meta = {p.key: p.value for p in onnx.load(export_dir / "model.onnx").metadata_props}
    assert meta["fold_report"] == "folded 2 of 2 BN layers" and "class_names" in meta


def test_parity_command_passes_and_writes_json(export_dir, tmp_path):
    report = tmp_path / "parity.json"
    result = invoke("parity", export_dir, "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True
    runtimes = {row["runtime"] for row in data["rows"]}
    assert {"keras-folded", "savedmodel", "ort-cpu"} <= runtimes
    assert {row["inputs"] for row in data["rows"]} >= {"batch 1", "batch 7"}


def test_parity_can_switch_off_an_ort_optimizer(export_dir, tmp_path):
    report = tmp_path / "parity.json"
    result = invoke("parity", export_dir, "--ort-disable", "Pad_Fusion", "--json", report)
    assert result.exit_code == 0, result.output
    assert "optimizers off: Pad_Fusion" in json.loads(report.read_text())["runtimes"]["ort-cpu"]


def test_parity_fails_on_a_corrupted_model(export_dir, tmp_path):
    import keras

    broken = tmp_path / "export"
    import shutil

    shutil.copytree(export_dir, broken)
    model = keras.saving.load_model(broken / "model_folded.keras")
    kernel = model.get_layer("logits").kernel
    kernel.assign(kernel.numpy() + 1e-2)
    model.save(broken / "model_folded.keras")
    result = invoke("parity", broken)
    assert result.exit_code == 1
    assert "FAIL" in result.output and "keras-folded" in result.output


def test_parity_of_a_bare_keras_file(run_dir):
    result = invoke("parity", run_dir / "model.keras")
    assert result.exit_code == 0, result.output
    assert "ort-cpu" in result.output and "tflite" in result.output


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_model(tmp_path):
    assert_user_error(invoke("train", "nope", "--out", tmp_path / "r"), "unknown model 'nope'", "zoo list")
    assert not (tmp_path / "r").exists()


def test_unknown_dataset(tmp_path):
    assert_user_error(invoke("train", "cnn_bn", "--dataset", "imagenet9", "--out", tmp_path / "r"), "imagenet9")
    assert not (tmp_path / "r").exists()


def test_npz_missing_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8), "uint8"))
    assert_user_error(invoke("train", "cnn_bn", "--dataset", f"npz:{path}", "--out", tmp_path / "r"), "y_train")
    assert not (tmp_path / "r").exists()


def test_unreadable_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"not an npz")
    assert_user_error(invoke("train", "cnn_bn", "--dataset", f"npz:{path}", "--out", tmp_path / "r"), str(path))


def test_folder_without_images(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("no images here")
    assert_user_error(invoke("train", "cnn_bn", "--dataset", f"folder:{tmp_path / 'imgs'}", "--out", tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_out_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert_user_error(invoke("train", "cnn_bn", "--out", blocker / "run"), "--out")


def test_export_missing_source(tmp_path):
    assert_user_error(invoke("export", tmp_path / "missing.keras", "--fold-bn", "--onnx"), "does not exist")


def test_export_corrupt_keras(tmp_path):
    path = tmp_path / "bad.keras"
    path.write_bytes(b"garbage")
    assert_user_error(invoke("export", path, "--fold-bn", "--onnx"), "not a .keras archive")
    assert not (tmp_path / "bad_export").exists()


def test_export_truncated_keras_archive(tmp_path):
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{broken")
    assert_user_error(invoke("export", path, "--onnx"), "cannot load")
    assert not (tmp_path / "bad_export").exists()


def test_a_failing_command_that_loads_tensorflow_prints_one_line(tmp_path):
    """TensorFlow's C++ start-up log (absl's pre-init warning, oneDNN, CUDA drivers, cuInit) stays off stderr."""
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{broken")
    code = ("import sys\nfrom zoo.cli import app\nsys.argv = ['zoo', *sys.argv[1:]]\n"
            "try:\n    app()\nfinally:\n    print('tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", code, "export", str(path), "--onnx"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert result.stdout.strip() == "True"  # the failure came after TensorFlow loaded
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: cannot load"), result.stderr


def test_options_of_another_kind_of_model_are_refused(tmp_path):
    assert_user_error(invoke("train", "dncnn", "--no-augment", "--out", tmp_path / "r"),
                      "--no-augment is for classifiers, not `zoo train dncnn`")
    assert_user_error(invoke("train", "cnn_bn", "--steps", 3, "--sigma", 5, "--out", tmp_path / "r"),
                      "--steps, --sigma are for `zoo train style` or `zoo train dncnn`, not `zoo train cnn_bn`")
    assert not (tmp_path / "r").exists()


def test_export_run_dir_without_model(tmp_path):
    assert_user_error(invoke("export", tmp_path, "--onnx"), "no model.keras")


def test_export_failure_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
    import export.onnx

    def broken(*args, **kwargs):
        raise export.onnx.ExportError("ONNX conversion failed: simulated")

    monkeypatch.setattr(export.onnx, "export_onnx", broken)
    out = tmp_path / "exp"
    assert_user_error(invoke("export", run_dir, "--fold-bn", "--onnx", "--out", out), "simulated")
    assert list(tmp_path.iterdir()) == []
