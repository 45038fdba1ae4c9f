"""Building blocks shared by the model families, with explicit, predictable layer names.

`conv_bn_act(x, 32, 3, name="block1")` makes `block1_conv`, `block1_bn`, `block1_relu`: conv→norm pairs are easy
to find (BN folding, debugging) and exported graphs stay readable.
"""

from __future__ import annotations

import keras

NORM_KINDS = {"batch": "bn", "instance": "in"}  # kind -> layer-name suffix
# Keras' default BN momentum, 0.99, averages over ~100 steps; on small datasets (digits: 40 steps an epoch) the
# moving statistics then lag the weights for many epochs and validation accuracy sits near chance early on.
# 0.9 (PyTorch's default) tracks within ~10 steps.
BN_MOMENTUM = 0.9


def norm_layer(kind: str, name: str) -> keras.layers.Layer:
    """A normalisation layer over the channel axis (NHWC).

    "instance" is GroupNormalization with one group per channel: per-sample, per-channel statistics, no running
    averages (what feed-forward style transfer wants); unlike BN it cannot be folded into the conv.
    """
    if kind == "batch":
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)
    if kind == "instance":
        return keras.layers.GroupNormalization(groups=-1, name=name)
    raise ValueError(f"norm kind must be one of {', '.join(NORM_KINDS)}, not {kind!r}")


def conv_bn_act(
    x,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    name: str,
    activation: str | None = "relu",
    use_bias: bool = False,
    norm: str = "batch",
):
    """Conv2D('same') → norm → activation, named f"{name}_conv", f"{name}_bn" (or _in), f"{name}_{activation}".

    `use_bias` defaults to False because the norm's shift makes a conv bias redundant; pass True to model nets
    trained with one (BN folding must cope with non-zero biases).
    """
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=use_bias, name=f"{name}_conv"
    )(x)
    x = norm_layer(norm, f"{name}_{NORM_KINDS.get(norm, 'norm')}")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x
