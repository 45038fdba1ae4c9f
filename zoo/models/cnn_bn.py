"""`cnn_bn`: the classic two-block BatchNorm classifier (~99 % on MNIST).

image → [conv 3×3 → BN → ReLU → maxpool 2] × 2 (32, 64 filters) → flatten → dense logits (no softmax).
"""

from __future__ import annotations

import keras

from zoo.checks import check_input_side
from zoo.errors import ZooError
from zoo.layers import conv_bn_act
from zoo.registry import register_model

FILTERS = (32, 64)


@register_model(
    "cnn_bn",
    description="Two conv→BN→ReLU→maxpool blocks and a dense classifier; the classic BN CNN for MNIST-sized images.",
    default_input_shape=(28, 28, 1),
)
def cnn_bn(input_shape=(28, 28, 1), num_classes: int = 10, *, conv_bias: bool = True) -> keras.Model:
    """`conv_bias=True` (the default) keeps the conv biases a typical trained net has, so exporting it exercises
    folding a BN into a conv with a non-zero bias."""
    check_input_side("cnn_bn", input_shape, 2 ** len(FILTERS))
    if not isinstance(conv_bias, bool):
        raise ZooError(f"model 'cnn_bn': conv_bias must be true or false, not {conv_bias!r}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, filters in enumerate(FILTERS, start=1):
        x = conv_bn_act(x, filters, 3, name=f"block{block}", use_bias=conv_bias)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="cnn_bn")
