"""`zoo train --resume`: a run killed with SIGKILL mid-epoch continues from its last completed epoch and ends
exactly where the uninterrupted run ends; a checkpoint from other settings is refused."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import zoo.train
from zoo.errors import ZooError
from zoo.train import train

EPOCHS = 6
SETTINGS = ["--dataset", "digits", "--image-size", 16, "--batch-size", 16, "--epochs", EPOCHS, "--lr", 1e-3]


def zoo_command(*args):
    code = "import sys; from zoo.cli import app; sys.argv = ['zoo', *sys.argv[1:]]; app()"
    return [sys.executable, "-c", code, *map(str, args)]


def weights(path):
    return keras.saving.load_model(path).get_weights()


def test_sigkill_mid_training_then_resume_matches_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "killed"
    state = tmp_path / ".killed.checkpoint" / "state.json"
    process = subprocess.Popen(zoo_command("train", "cnn_bn", *SETTINGS, "--out", out, "--resume"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["epoch"]
    assert 2 <= killed_at < EPOCHS and not out.exists()
    assert any(p.name.startswith(".killed.partial-") for p in tmp_path.iterdir())  # SIGKILL cannot clean up

    resumed = subprocess.run(zoo_command("train", "cnn_bn", *SETTINGS, "--out", out, "--resume"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and metrics["resumed_from_epoch"] == killed_at
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert not state.parent.exists()  # removed once the run is published
    assert not any(p.name.startswith(".killed.partial-") for p in tmp_path.iterdir())  # the killed run's, removed

    straight = tmp_path / "straight"
    subprocess.run(zoo_command("train", "cnn_bn", *SETTINGS, "--out", straight), env=env, check=True,
                   capture_output=True, timeout=300)
    for resumed_w, straight_w in zip(weights(out / "model.keras"), weights(straight / "model.keras"), strict=True):
        np.testing.assert_allclose(resumed_w, straight_w, rtol=1e-5, atol=1e-6)
    first = list(csv.DictReader((straight / "history.csv").open()))
    np.testing.assert_allclose([float(r["loss"]) for r in rows], [float(r["loss"]) for r in first], rtol=1e-4)


@pytest.fixture
def failed_run(tmp_path, monkeypatch):
    """A run that trained 2 epochs and then failed, leaving its checkpoint."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(zoo.train, "plot_curves", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
        with pytest.raises(RuntimeError):
            train("cnn_bn", dataset="digits+per-class=5", image_size=16, epochs=2, out=out, verbose=0)
    return out


def test_resume_after_the_last_epoch_only_finishes_the_run(failed_run):
    metrics = train("cnn_bn", dataset="digits+per-class=5", image_size=16, epochs=2, out=failed_run, verbose=0,
                    resume=True)
    assert metrics["resumed_from_epoch"] == 2 and (failed_run / "model.keras").is_file()


def test_resume_with_other_settings_is_refused(failed_run):
    with pytest.raises(ZooError, match=r"is from another run: lr 0.003 \(now 0.01\).*delete"):
        train("cnn_bn", dataset="digits+per-class=5", image_size=16, epochs=2, lr=0.01, out=failed_run, resume=True)
    with pytest.raises(ZooError, match="is from another run: model 'cnn_bn' \\(now 'resnet20'\\)"):
        train("resnet20", dataset="digits+per-class=5", image_size=16, epochs=2, out=failed_run, resume=True)
    fresh = train("cnn_bn", dataset="digits+per-class=5", image_size=16, epochs=1, out=failed_run, verbose=0)
    assert fresh["resumed_from_epoch"] == 0  # without --resume a new run starts over
