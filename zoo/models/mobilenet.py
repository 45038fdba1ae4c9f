"""`mobilenet_v2`: Sandler et al. (2018) inverted residuals with a width multiplier, sized by the input.

Stem conv 3×3 (32·α, stride 2) → 17 inverted-residual blocks (expand 1×1 → depthwise 3×3 → project 1×1, each
followed by BN; ReLU6 after expand and depthwise, none after the linear projection; a residual Add where stride 1
keeps the channels) → conv 1×1 (1280, or 1280·α for α > 1) → global pooling → Dense logits. Channel counts are
multiples of 8 (the paper's `make_divisible`). Blocks (expansion t, channels c, repeats n, first stride s) are the
paper's table. For inputs under 96 px (CIFAR's 32×32) the stem and the first stride-2 stage stride 1 instead, so a
32×32 image ends on a 4×4 map rather than 1×1 (the usual CIFAR adaptation); from 96 px up (224×224 ImageNet) the
strides are the paper's. Every BN follows a conv or depthwise conv, so all of them fold on export.
"""

from __future__ import annotations

import keras

from zoo.checks import check_input_side
from zoo.errors import ZooError
from zoo.layers import batch_norm
from zoo.registry import register_model

# (expansion t, output channels c, repeats n, first stride s), Sandler et al. Table 2
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
SMALL_INPUT = 96


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below 90 % of `value` (the reference implementation's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _bn_relu6(x, name: str, activation: bool = True):
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


@register_model("mobilenet_v2", description="Sandler et al. MobileNetV2: inverted residuals (1×1 expand → depthwise 3×3 → 1×1 project, BN each), ReLU6, width multiplier alpha; 32×32 or 224×224.",
                default_input_shape=(32, 32, 3))
def mobilenet_v2(input_shape=(32, 32, 3), num_classes: int = 10, *, alpha: float = 1.0) -> keras.Model:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 4:
        raise ZooError(f"model 'mobilenet_v2': alpha must be a number in (0, 4], not {alpha!r}")
    check_input_side("mobilenet_v2", input_shape, 16)
    height, width, _ = input_shape
    small = min(height, width) < SMALL_INPUT
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    channels = make_divisible(32 * alpha)
    x = keras.layers.Conv2D(channels, 3, strides=1 if small else 2, padding="same", use_bias=False,
                            name="stem_conv")(inputs)
    x = _bn_relu6(x, "stem")
    index = 0
    for stage, (expansion, filters, repeats, stride) in enumerate(BLOCKS):
        out_channels = make_divisible(filters * alpha)
        if small and stage == 1:
            stride = 1
        for repeat in range(repeats):
            index += 1
            name = f"block{index}"
            strides = stride if repeat == 0 else 1
            y = x
            if expansion != 1:
                y = keras.layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(y)
                y = _bn_relu6(y, f"{name}_expand")
            y = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                             name=f"{name}_depthwise_conv")(y)
            y = _bn_relu6(y, f"{name}_depthwise")
            y = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_project_conv")(y)
            y = _bn_relu6(y, f"{name}_project", activation=False)
            x = keras.layers.Add(name=f"{name}_add")([x, y]) if strides == 1 and channels == out_channels else y
            channels = out_channels
    head = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = keras.layers.Conv2D(head, 1, use_bias=False, name="head_conv")(x)
    x = _bn_relu6(x, "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="mobilenet_v2")
