"""BN folding: each pattern on a tiny model with non-zero biases and random statistics; parity and which BNs remain."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from export.errors import ExportError  # noqa: E402
from export.fold_bn import bn_affine, fold_batchnorm, fold_into_consumer, fold_into_producer  # noqa: E402
from tests.helpers import assert_parity, bn_layer_names, predict, randomize_bn  # noqa: E402


def chain(shape, *layers, name="chain"):
    x = keras.Input(shape, name="x")
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y, name=name)


def fold_and_check(model, shape, kept=(), seed=0, batch=3):
    """Fold `model`, assert outputs match at two batch sizes and exactly the BN layers in `kept` remain."""
    randomize_bn(model, seed)
    before = [w.copy() for w in model.get_weights()]
    folded, report = fold_batchnorm(model)
    rng = np.random.default_rng(seed)
    for n in (batch, 1):
        x = rng.uniform(size=(n, *shape)).astype("float32")
        assert_parity(predict(model, x), predict(folded, x))
    assert sorted(bn_layer_names(folded)) == sorted(kept)
    assert sorted(k.bn.split("/")[-1] for k in report.kept) == sorted(kept)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "input model was modified"
    return folded, report


# ------------------------------------------------------------------------------------- fold math


def test_bn_affine_matches_numpy_float64_reference():
    bn = L.BatchNormalization(epsilon=0.01)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype("float32")
    bn(x)
    randomize_bn(keras.Sequential([keras.Input((6,)), bn]))
    s, t = bn_affine(bn)
    g, b, m, v = (np.asarray(w, dtype=np.float64) for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    reference = (x.astype(np.float64) - m) / np.sqrt(v + 0.01) * g + b
    np.testing.assert_allclose(x * s + t, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(bn(x, training=False)), reference, rtol=1e-5, atol=1e-5)


def test_producer_fold_math_against_numpy():
    rng = np.random.default_rng(2)
    w = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}
    s, t = rng.normal(size=4), rng.normal(size=4)
    x = rng.normal(size=(7, 3))
    expected = (x @ w["kernel"] + w["bias"]) * s + t
    fold_into_producer("Dense", w, s, t)
    np.testing.assert_allclose(x @ w["kernel"] + w["bias"], expected, rtol=1e-12)


def test_consumer_fold_math_against_numpy():
    rng = np.random.default_rng(3)
    w = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}
    s, t = rng.normal(size=3), rng.normal(size=3)
    x = rng.normal(size=(7, 3))
    expected = (x * s + t) @ w["kernel"] + w["bias"]
    fold_into_consumer(w, s, t, absorb_shift=True)
    np.testing.assert_allclose(x @ w["kernel"] + w["bias"], expected, rtol=1e-12)


# ------------------------------------------------------------------------------- producer → BN


@pytest.mark.parametrize(
    "shape, producer",
    [
        ((9, 9, 3), lambda: L.Conv2D(4, 3, padding="same")),
        ((9, 9, 3), lambda: L.Conv2D(4, 3, use_bias=False, strides=2)),
        ((10, 3), lambda: L.Conv1D(4, 3)),
        ((5, 5, 5, 2), lambda: L.Conv3D(3, 2)),
        ((9, 9, 3), lambda: L.DepthwiseConv2D(3, depth_multiplier=1)),
        ((9, 9, 3), lambda: L.DepthwiseConv2D(3, depth_multiplier=3, use_bias=False)),
        ((10, 3), lambda: L.DepthwiseConv1D(3, depth_multiplier=2)),
        ((9, 9, 3), lambda: L.SeparableConv2D(5, 3, depth_multiplier=2)),
        ((10, 3), lambda: L.SeparableConv1D(5, 3)),
        ((6, 6, 3), lambda: L.Conv2DTranspose(5, 3, strides=2)),
        ((6, 3), lambda: L.Conv1DTranspose(5, 3, strides=2, use_bias=False)),
        ((3, 3, 3, 2), lambda: L.Conv3DTranspose(3, 2, strides=2)),
        ((6,), lambda: L.Dense(5)),
        ((4, 6), lambda: L.Dense(5, use_bias=False)),
        ((9, 9, 3), lambda: L.Conv2D(6, 3, groups=3)),
    ],
)
def test_producer_then_bn_folds(shape, producer):
    model = chain(shape, producer(), L.BatchNormalization(), L.ReLU())
    folded, report = fold_and_check(model, shape)
    assert len(report.folded) == 1 and "→ BN" in report.folded[0].pattern


@pytest.mark.parametrize(
    "bn",
    [
        lambda: L.BatchNormalization(center=False),
        lambda: L.BatchNormalization(scale=False),
        lambda: L.BatchNormalization(center=False, scale=False),
        lambda: L.BatchNormalization(epsilon=0.3),
        lambda: L.BatchNormalization(trainable=False),
        lambda: L.BatchNormalization(synchronized=True),
    ],
)
def test_bn_variants_fold(bn):
    fold_and_check(chain((8, 8, 3), L.Conv2D(4, 3), bn(), L.ReLU()), (8, 8, 3))


def test_channels_first_conv_folds():
    fold_and_check(chain((3, 8, 8), L.Conv2D(4, 3, data_format="channels_first"), L.BatchNormalization(axis=1)),
                   (3, 8, 8))


# ------------------------------------------------------------------------------- BN → consumer


@pytest.mark.parametrize(
    "shape, consumer, pattern",
    [
        ((6,), lambda: L.Dense(4), "BN → Dense"),
        ((3, 6), lambda: L.Dense(4, use_bias=False), "BN → Dense"),
        ((9, 9, 3), lambda: L.Conv2D(4, 3), "BN → Conv2D"),
        ((9, 9, 3), lambda: L.Conv2D(4, 3, strides=2, dilation_rate=1), "BN → Conv2D"),
        ((10, 3), lambda: L.Conv1D(4, 3), "BN → Conv1D"),
        ((9, 9, 3), lambda: L.Conv2D(4, 3, padding="same"), "input offset"),
        ((9, 9, 3), lambda: L.Conv2D(4, 3, padding="same", strides=2), "input offset"),
        ((9, 9, 3), lambda: L.Conv2D(4, 3, padding="same", dilation_rate=2), "input offset"),
        ((10, 3), lambda: L.Conv1D(4, 3, padding="causal"), "input offset"),
        ((5, 5, 5, 2), lambda: L.Conv3D(3, 3, padding="same", use_bias=False), "input offset"),
    ],
)
def test_bn_then_consumer_folds(shape, consumer, pattern):
    # the ReLU first: the BN has no producer to fold into, so it must go into the consumer
    _, report = fold_and_check(chain(shape, L.ReLU(), L.BatchNormalization(), consumer()), shape)
    assert pattern in report.folded[0].pattern


def test_bn_before_same_conv_channels_first():
    fold_and_check(chain((3, 8, 8), L.ReLU(), L.BatchNormalization(axis=1),
                         L.Conv2D(4, 3, padding="same", data_format="channels_first")), (3, 8, 8))


def test_zero_gamma_before_same_conv_is_kept():
    bn = L.BatchNormalization(name="bn")
    model = chain((8, 8, 3), L.ReLU(), bn, L.Conv2D(4, 3, padding="same"))
    randomize_bn(model)
    gamma = np.asarray(bn.gamma).copy()
    gamma[1] = 0.0
    bn.gamma.assign(gamma)
    folded, report = fold_batchnorm(model)
    assert bn_layer_names(folded) == ["bn"] and "γ has zeros" in report.kept[0].reason


def test_zero_gamma_after_conv_still_folds():
    bn = L.BatchNormalization(name="bn")
    model = chain((8, 8, 3), L.Conv2D(4, 3), bn)
    randomize_bn(model)
    bn.gamma.assign(np.array([0.0, 1.0, -2.0, 0.5], "float32"))
    folded, _ = fold_batchnorm(model)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert bn_layer_names(folded) == []
    assert_parity(predict(model, x), predict(folded, x))


# -------------------------------------------------------------------------------------- guards


def test_activation_in_producer_keeps_bn():
    _, report = fold_and_check(chain((8, 8, 3), L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(name="bn"),
                                     L.ReLU()), (8, 8, 3), kept=["bn"])
    assert "activation 'relu'" in report.kept[0].reason


def test_bn_axis_not_channel_axis_is_kept():
    _, report = fold_and_check(chain((8, 8, 3), L.Conv2D(4, 3), L.BatchNormalization(axis=1, name="bn"),
                                     L.ReLU()), (8, 8, 3), kept=["bn"])
    assert "not the channel axis" in report.kept[0].reason


def test_producer_with_two_consumers_is_kept():
    x = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 3)(x)
    y = L.Add()([L.BatchNormalization(name="bn")(c), c])
    _, report = fold_and_check(keras.Model(x, y), (8, 8, 3), kept=["bn"])
    assert "2 consumers" in report.kept[0].reason


def test_shared_conv_is_kept():
    x = keras.Input((8, 8, 4))
    conv = L.Conv2D(4, 3, padding="same")
    y = conv(L.BatchNormalization(name="bn")(conv(x)))
    _, report = fold_and_check(keras.Model(x, y), (8, 8, 4), kept=["bn"])
    assert "shared" in report.kept[0].reason


def test_unknown_neighbours_are_kept_with_reason():
    _, report = fold_and_check(chain((8, 8, 3), L.MaxPooling2D(), L.BatchNormalization(name="bn"), L.ReLU()),
                               (8, 8, 3), kept=["bn"])
    assert "MaxPooling2D" in report.kept[0].reason and "ReLU" in report.kept[0].reason
    assert report.summary().startswith("folded 0 of 1 BN layers; kept 1: bn:")


# ------------------------------------------------------------------------------ model structures


def test_sequential_model_folds():
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                              L.Flatten(), L.Dense(3), L.BatchNormalization()])
    folded, report = fold_and_check(model, (8, 8, 3))
    assert report.summary() == "folded 2 of 2 BN layers"


def test_unbuilt_sequential_is_a_clear_error():
    with pytest.raises(ExportError, match="no input shape"):
        fold_batchnorm(keras.Sequential([L.Dense(3), L.BatchNormalization()]))


def test_nested_model_folds_recursively():
    backbone = chain((8, 8, 3), L.Conv2D(4, 3), L.BatchNormalization(name="inner_bn"), L.ReLU(), name="backbone")
    x = keras.Input((8, 8, 3))
    y = L.BatchNormalization(name="outer_bn")(L.Dense(3)(L.GlobalAveragePooling2D()(backbone(x))))
    folded, report = fold_and_check(keras.Model(x, y), (8, 8, 3))
    assert {f.bn for f in report.folded} == {"backbone/inner_bn", "outer_bn"}


def test_bn_after_nested_model_is_kept():
    backbone = chain((8, 8, 3), L.Conv2D(4, 3), name="backbone")
    x = keras.Input((8, 8, 3))
    y = L.ReLU()(L.BatchNormalization(name="bn")(backbone(x)))
    _, report = fold_and_check(keras.Model(x, y), (8, 8, 3), kept=["bn"])
    assert "backbone" in report.kept[0].reason


def test_multi_input_multi_output_keeps_output_names():
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((6,), name="b")
    ya = L.GlobalAveragePooling2D()(L.BatchNormalization()(L.Conv2D(4, 3)(a)))
    yb = L.Dense(4)(L.BatchNormalization()(b))
    model = keras.Model([a, b], [L.Add(name="sum")([ya, yb]), L.BatchNormalization(name="head")(L.Dense(2)(yb))])
    randomize_bn(model)
    folded, report = fold_batchnorm(model)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(size=(2, 8, 8, 3)).astype("float32"), rng.uniform(size=(2, 6)).astype("float32")]
    assert_parity(predict(model, xs), predict(folded, xs))
    assert report.summary() == "folded 3 of 3 BN layers"
    assert folded.output_names == ["sum", "head"] and [i.name for i in folded.inputs] == ["a", "b"]


def test_folded_model_with_input_offset_saves_and_loads(tmp_path):
    model = chain((8, 8, 3), L.ReLU(), L.BatchNormalization(), L.Conv2D(4, 3, padding="same"))
    folded, _ = fold_and_check(model, (8, 8, 3))
    folded.save(tmp_path / "f.keras")
    loaded = keras.saving.load_model(tmp_path / "f.keras", safe_mode=True)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert_parity(predict(model, x), predict(loaded, x))


def test_report_json_lists_every_bn():
    model = chain((8, 8, 3), L.Conv2D(4, 3), L.BatchNormalization(name="a"), L.MaxPooling2D(),
                  L.BatchNormalization(name="b"), L.ReLU())
    _, report = fold_and_check(model, (8, 8, 3), kept=["b"])
    d = report.to_dict()
    assert (d["total"], d["folded_count"], d["kept_count"]) == (2, 1, 1)
    assert d["folded"][0] == {"bn": "a", "into": report.folded[0].into, "pattern": "Conv2D → BN"}


def test_subclassed_model_is_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = L.Conv2D(2, 3), L.BatchNormalization()

        def call(self, x):
            return self.bn(self.conv(x))

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ExportError, match="subclassed"):
        fold_batchnorm(net)
