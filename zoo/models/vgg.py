"""`vgg_bn`: Simonyan & Zisserman's VGG with BN after every conv (VGG-11/13/16/19 by `depth`).

Configurations A (11), B (13), D (16), E (19): stacks of conv 3×3-BN-ReLU separated by 2×2 max pools ('same', so
any input ≥ 32 works and 28×28 digits too). The classifier is global average pooling → Dense logits, the common
CIFAR form (at 32×32 the last map is 1×1, so this equals Flatten); at 224×224 it replaces the paper's two
4096-wide FC layers (123 M of VGG-16's 138 M parameters) — a documented departure. Every BN follows a conv, so all
of them fold on export.
"""

from __future__ import annotations

import keras

from zoo.checks import check_input_side
from zoo.errors import ZooError
from zoo.layers import conv_bn_act
from zoo.registry import register_model

# filters per conv, "M" = max pool
CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


@register_model("vgg_bn", description="VGG with BN after every conv (depth 11/13/16/19, default 16), global pooling → Dense logits.",
                default_input_shape=(32, 32, 3))
def vgg_bn(input_shape=(32, 32, 3), num_classes: int = 10, *, depth: int = 16, width: float = 1.0) -> keras.Model:
    """`width` scales every conv's filters (e.g. 0.25 for quick experiments)."""
    if depth not in CONFIGS:
        raise ZooError(f"model 'vgg_bn': depth must be one of {', '.join(map(str, CONFIGS))}, not {depth!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise ZooError(f"model 'vgg_bn': width must be a number in (0, 4], not {width!r}")
    check_input_side("vgg_bn", input_shape, 16)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, block, conv = inputs, 1, 1
    for item in CONFIGS[depth]:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
            block, conv = block + 1, 1
        else:
            x = conv_bn_act(x, max(1, round(item * width)), 3, name=f"block{block}_{conv}")
            conv += 1
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name=f"vgg{depth}_bn")
