"""`--strategy mirrored` on two logical CPU devices: synchronized BN makes N replicas compute what one device
computes for the same global batch; unsynchronized BN does not. Each case runs in its own process, because the
CPU can only be split before TensorFlow starts."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke

ONE_STEP = r"""
import json, sys
import numpy as np
from zoo.distribute import make_strategy, split_cpu, synchronize_bn
split_cpu(2)
import keras

def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.0, name="bn")(x)  # moving stats = this batch's stats
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))

def one_step(model):
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((8, 6, 6, 2)).astype("float32")
    x[4:] = 3 * x[4:] + 2  # the two replicas' halves have different statistics
    model.fit(x, np.zeros(8, "int64"), batch_size=8, epochs=1, shuffle=False, verbose=0)
    bn = model.get_layer("bn")
    return {"mean": np.asarray(bn.moving_mean).tolist(), "var": np.asarray(bn.moving_variance).tolist()}

result = {"single": one_step(build())}
strategy = make_strategy("mirrored")
result["replicas"] = strategy.num_replicas_in_sync
with strategy.scope():
    result["synced"] = one_step(synchronize_bn(build()))
with strategy.scope():
    result["unsynced"] = one_step(build())
print(json.dumps(result))
"""


def run_python(code):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synchronized_bn_on_two_devices_equals_one_device_and_unsynchronized_differs():
    result = run_python(ONE_STEP)
    assert result["replicas"] == 2
    single, synced, unsynced = result["single"], result["synced"], result["unsynced"]
    np.testing.assert_allclose(synced["mean"], single["mean"], rtol=1e-5)
    np.testing.assert_allclose(synced["var"], single["var"], rtol=1e-5)
    assert not np.allclose(unsynced["var"], single["var"], rtol=1e-2)  # per-replica variances miss the gap


def test_mirrored_training_from_the_cli_matches_single_device(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    common = ["train", "cnn_bn", "--dataset", "digits+per-class=8", "--image-size", "16", "--batch-size", "16",
              "--epochs", "2", "--no-augment", "--option", "conv_bias=false"]
    code = "import sys; from zoo.cli import app; sys.argv = ['zoo', *sys.argv[1:]]; app()"
    for name, extra in (("mirrored", ["--strategy", "mirrored", "--cpu-devices", "2"]), ("single", [])):
        subprocess.run([sys.executable, "-c", code, *common, *extra, "--out", str(tmp_path / name)], env=env,
                       check=True, capture_output=True, timeout=300)
    assert json.loads((tmp_path / "mirrored" / "metrics.json").read_text())["replicas"] == 2
    mirrored = keras.saving.load_model(tmp_path / "mirrored" / "model.keras")
    single = keras.saving.load_model(tmp_path / "single" / "model.keras")
    assert all(layer.synchronized for layer in mirrored.layers if isinstance(layer, keras.layers.BatchNormalization))
    # Without conv biases: a bias in front of BN gets only rounding-noise gradients, which Adam turns into
    # full-size steps, so two runs' biases (and the moving means holding them) would wander apart.
    for variable, reference in zip(mirrored.weights, single.weights, strict=True):
        np.testing.assert_allclose(np.asarray(variable), np.asarray(reference), rtol=1e-4, atol=1e-5,
                                   err_msg=variable.path)
    x = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(mirrored(x, training=False), single(x, training=False), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--strategy", "mirrored"], "found no GPU and one CPU device; on a CPU-only machine add --cpu-devices 2"),
    (["--strategy", "ring"], "unknown strategy 'ring'; use one of: none, mirrored, multiworker"),
    (["--cpu-devices", "1"], "--cpu-devices must be an integer >= 2"),
])
def test_bad_strategies_are_one_line(args, message, tmp_path):
    assert_user_error(invoke("train", "cnn_bn", "--epochs", 1, *args, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_on_loopback_train_to_identical_weights(tmp_path):
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    code = "import sys; from zoo.cli import app; sys.argv = ['zoo', *sys.argv[1:]]; app()"
    processes = []
    for index in (0, 1):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config}
        args = ["train", "cnn_bn", "--dataset", "digits+per-class=8", "--image-size", "16", "--batch-size", "16",
                "--epochs", "2", "--no-augment", "--strategy", "multiworker", "--out", str(tmp_path / f"w{index}")]
        processes.append(subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    chief, other = (keras.saving.load_model(tmp_path / f"w{i}" / "model.keras") for i in (0, 1))
    for a, b in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    metrics = json.loads((tmp_path / "w0" / "metrics.json").read_text())
    assert metrics["strategy"] == "multiworker" and metrics["epochs_run"] == 2


@pytest.mark.parametrize("tf_config, message", [
    (None, "--strategy multiworker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not a valid cluster spec"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}', "IndexError"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}', "task type 'ps' is not supported"),
])
def test_bad_tf_config_is_one_line(tf_config, message, tmp_path, monkeypatch):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert_user_error(invoke("train", "cnn_bn", "--epochs", 1, "--strategy", "multiworker", "--out", tmp_path / "r"),
                      message)
    assert not (tmp_path / "r").exists()


def test_worker_port_in_use_is_one_line(tmp_path, monkeypatch):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"localhost:{port}"]},
                                                    "task": {"type": "worker", "index": 0}}))
        assert_user_error(invoke("train", "cnn_bn", "--epochs", 1, "--strategy", "multiworker", "--out",
                                 tmp_path / "r"), f"localhost:{port} cannot be bound")


def test_a_batch_that_does_not_split_across_replicas_is_one_line(tmp_path):
    code = "import sys; from zoo.cli import app; sys.argv = ['zoo', *sys.argv[1:]]; app()"
    done = subprocess.run([sys.executable, "-c", code, "train", "cnn_bn", "--strategy", "mirrored", "--cpu-devices",
                           "2", "--batch-size", "15", "--epochs", "1", "--out", str(tmp_path / "run")],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and not (tmp_path / "run").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --batch-size 15 is not divisible by the 2 replicas; use a multiple of 2 (the batch is split evenly "
        "across them)")
