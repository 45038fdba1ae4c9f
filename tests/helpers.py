"""Shared test helpers: realistic BN statistics and the one parity assertion every test uses."""

import numpy as np

from benchmarks._common import randomize_bn  # noqa: F401 - one implementation for tests and benchmarks


def bn_layer_names(model) -> list[str]:
    import keras

    return [l.name for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]


def predict(model, x):
    import keras

    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


def assert_parity(ref, out, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Every element within atol OR rtol·|ref| (Polygraphy's rule), through the project's one comparison."""
    from export.parity import compare

    refs = ref if isinstance(ref, list) else [ref]
    outs = out if isinstance(out, list) else [out]
    assert len(refs) == len(outs)
    for r, o in zip(refs, outs):
        result = compare(np.asarray(r), np.asarray(o), atol=atol, rtol=rtol)
        assert result["passed"], result


def invoke(*args):
    """Run the `zoo` CLI in-process (typer's CliRunner) with the arguments as strings."""
    from typer.testing import CliRunner

    from zoo.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit 1, one `error:` line naming the problem, and no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
