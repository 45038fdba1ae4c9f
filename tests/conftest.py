import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cnn_bn_run(tmp_path_factory):
    """One small `zoo train cnn_bn` run on the bundled digits (3 epochs, 16×16) shared by the CLI tests."""
    from tests.helpers import invoke

    out = tmp_path_factory.mktemp("runs") / "cnn_bn"
    result = invoke("train", "cnn_bn", "--epochs", 3, "--image-size", 16, "--out", out)
    assert result.exit_code == 0, result.output
    return out
