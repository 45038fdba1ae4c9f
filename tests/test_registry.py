"""The model registry, cnn_bn's shape and names, and the shared layer blocks."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from zoo import registry
from zoo.errors import ZooError
from zoo.layers import conv_bn_act, norm_layer
from zoo.registry import create_model, get_model_spec, list_models, register_model


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a test can register models without leaking them."""
    list_models()  # load the real families first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_registry_module_imports_no_tensorflow():
    code = (
        "import sys, zoo.registry, zoo.errors; "
        "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_list_models_is_sorted_and_has_cnn_bn():
    names = [spec.name for spec in list_models()]
    assert "cnn_bn" in names
    assert names == sorted(names)


def test_spec_describes_cnn_bn():
    spec = get_model_spec("cnn_bn")
    assert (spec.default_input_shape, spec.task) == ((28, 28, 1), "classification")
    assert spec.description
    assert {"input_shape", "num_classes", "conv_bias"} <= set(spec.options)
    with pytest.raises(AttributeError):
        spec.name = "other"  # frozen


def test_cnn_bn_defaults_and_layer_names():
    model = create_model("cnn_bn")
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    assert model.inputs[0].name == "image"
    names = [layer.name for layer in model.layers]
    assert names == [
        "image",
        "block1_conv", "block1_bn", "block1_relu", "block1_pool",
        "block2_conv", "block2_bn", "block2_relu", "block2_pool",
        "flatten", "logits",
    ]  # fmt: skip
    assert model.get_layer("block1_conv").use_bias  # trained convs carry a bias; folding must cope
    assert model.get_layer("logits").activation is keras.activations.linear


def test_cnn_bn_shape_classes_and_bias_are_configurable():
    model = create_model("cnn_bn", input_shape=(32, 32, 3), num_classes=7, conv_bias=False)
    assert model.input_shape == (None, 32, 32, 3)
    assert model(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 7)
    assert not model.get_layer("block2_conv").use_bias


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"num_classes": "10"}, "num_classes must be a positive integer"),
        ({"num_classes": True}, "num_classes must be a positive integer"),
        ({"input_shape": (28, 28)}, "input_shape must be (height, width, channels)"),
        ({"input_shape": (28, 28, 0)}, "channels must be a positive integer"),
        ({"input_shape": (2, 2, 1)}, "must be known and >= 4"),
        ({"input_shape": (None, None, 1)}, "must be known"),
        ({"conv_bias": "yes"}, "conv_bias must be true or false"),
        ({"widht": 3}, "has no option 'widht'; options: input_shape, num_classes, conv_bias"),
    ],
)
def test_bad_config_is_a_zoo_error(config, message):
    with pytest.raises(ZooError, match="cnn_bn") as error:
        create_model("cnn_bn", **config)
    assert message in str(error.value)


@pytest.mark.parametrize(("name", "shape", "message"), [
    ("cnn_bn", (3, 28, 1), "must be known and >= 4"),
    ("resnet20", (2, 32, 3), "must be known and >= 4"),
    ("preact_resnet18", (32, 4, 3), "must be known and >= 8"),
    ("mobilenet_v2", (None, 32, 3), "must be known and >= 16"),
    ("vgg_bn", (8, 8, 3), "must be known and >= 16"),
    ("style_transformer", (None, 8, 3), "must be >= 16"),
])
def test_every_builder_words_a_too_small_input_alike(name, shape, message):
    """zoo/checks.py `check_input_side`: one input-size check, one wording, for every builder."""
    with pytest.raises(ZooError) as error:
        create_model(name, input_shape=shape)
    assert str(error.value) == f"model {name!r}: input height and width {message}, not {shape}"


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ZooError) as error:
        create_model("resnet9000")
    message = str(error.value)
    assert message.startswith("unknown model 'resnet9000'; available: ")
    assert "cnn_bn" in message and "`zoo list`" in message and "\n" not in message


def test_register_and_create(scratch_registry):
    @register_model("tiny_dense", description="test model", default_input_shape=(4, 4, 1))
    def tiny_dense(input_shape, num_classes=3):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))

    assert create_model("tiny_dense").output_shape == (None, 3)
    assert get_model_spec("tiny_dense").builder is tiny_dense
    assert "tiny_dense" in [spec.name for spec in list_models()]


def test_duplicate_name_is_an_error(scratch_registry):
    with pytest.raises(ValueError, match="'cnn_bn' is already registered by zoo.models.cnn_bn.cnn_bn"):
        register_model("cnn_bn", description="again", default_input_shape=(28, 28, 1))(lambda **config: None)


def test_conv_bn_act_names_and_instance_norm():
    inputs = keras.Input((8, 8, 3))
    outputs = conv_bn_act(inputs, 4, 3, name="stem", norm="instance", strides=2)
    model = keras.Model(inputs, outputs)
    assert [layer.name for layer in model.layers[1:]] == ["stem_conv", "stem_in", "stem_relu"]
    assert model.output_shape == (None, 4, 4, 4)
    assert not model.get_layer("stem_conv").use_bias


def test_instance_norm_normalises_each_sample_and_channel():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 5, 3)).astype("float32")
    layer = norm_layer("instance", "norm")
    expected = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + layer.epsilon)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)
    assert isinstance(norm_layer("batch", "bn"), keras.layers.BatchNormalization)
    with pytest.raises(ValueError, match="norm kind must be one of batch, instance"):
        norm_layer("layer", "ln")


@pytest.mark.parametrize("name", [spec.name for spec in list_models()])
def test_every_bn_of_every_model_comes_from_the_one_factory(name):
    """zoo/layers.py `batch_norm`: momentum 0.9 (small datasets) and epsilon 1e-3 in every registered model."""
    from zoo.layers import BN_EPSILON, BN_MOMENTUM

    model = create_model(name)
    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    off = [(bn.name, bn.momentum, bn.epsilon) for bn in bns if (bn.momentum, bn.epsilon) != (BN_MOMENTUM, BN_EPSILON)]
    assert bns and not off  # every model's default build has BN (style_transformer's default norm is batch)
