"""Shared test helpers: realistic BN statistics and the one parity assertion every test uses."""

import numpy as np


def randomize_bn(model, seed: int = 0, *, moderate: bool = False) -> None:
    """Give every BN random γ/β/mean/variance and every other bias non-zero values (nested layers too).

    Default (tests): γ, β, mean ~ N(0,1), var ~ |N(0,1)|+0.5, biases ~ N(0,1) — far from the initial values.
    `moderate` (deep keras.applications nets): γ ~ U(0.5,1.5), β, mean ~ N(0,0.1), var ~ U(0.5,1.5),
    biases ~ N(0,0.1), so a 100-layer net keeps its activations in range.
    """
    import keras

    rng = np.random.default_rng(seed)
    small = 0.1 if moderate else 1.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            if layer.scale:
                gamma = rng.uniform(0.5, 1.5, n) if moderate else rng.normal(size=n)
                layer.gamma.assign(gamma.astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, small, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, small, n).astype("float32"))
            var = rng.uniform(0.5, 1.5, n) if moderate else np.abs(rng.normal(size=n)) + 0.5
            layer.moving_variance.assign(var.astype("float32"))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, small, tuple(layer.bias.shape)).astype("float32"))


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
