"""CIFAR ResNets: He et al. (2016) `resnet20` / `resnet56` (post-activation) and a pre-activation ResNet-18
(`preact_resnet18`, He et al., "Identity Mappings", 2016).

resnet20/56: conv3×3(16)-BN-ReLU, then 3 stages of n basic blocks (n = 3 / 9; 16, 32, 64 filters; the first block
of stages 2 and 3 strides 2), global average pooling, Dense logits: 6n + 2 weighted layers. A basic block is
conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU. Shortcuts where the shape changes:
- option "A" (the paper's CIFAR choice, default): parameter-free — the identity subsampled by 2 (a 1×1 max pool
  with stride 2 picks every other pixel, exactly) and widened with zero channels (`ZeroPadChannels`);
- option "B": a 1×1 conv (stride 2, no bias) + BN projection.
Every BN follows a conv, so all of them fold on export.

preact_resnet18: [2, 2, 2, 2] pre-activation basic blocks (64, 128, 256, 512 filters) on a 3×3 stem, as used for
CIFAR. A block is BN-ReLU-conv3×3-BN-ReLU-conv3×3 + shortcut (identity, or a 1×1 conv on the pre-activated input
where the shape changes); a final BN-ReLU before pooling. With `input_bn=True` (default) a BN without γ/β
normalises the raw image before the stem conv, as in MXNet's ResNet-v2 (`bn_data`): that BN *precedes* a conv
with 'same' padding, so export folds it forward into the conv (the exact BN→Conv fold with the border
correction). The BNs that open each block follow an Add and precede a ReLU, so no linear neighbour can take them:
they stay (like keras.applications ResNet50V2), and the fold report says why.
"""

from __future__ import annotations

import keras

from zoo.checks import check_input_side
from zoo.errors import ZooError
from zoo.layers import ZeroPadChannels, batch_norm, conv_bn_act
from zoo.registry import register_model

STAGE_FILTERS = (16, 32, 64)
PREACT_FILTERS = (64, 128, 256, 512)
SHORTCUTS = ("A", "B")


def cifar_resnet(name: str, blocks: int, input_shape, num_classes: int, shortcut: str) -> keras.Model:
    if shortcut not in SHORTCUTS:
        raise ZooError(f"model {name!r}: shortcut must be 'A' (zero-padding identity) or 'B' (1×1 conv), not {shortcut!r}")
    check_input_side(name, input_shape, 4)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = conv_bn_act(inputs, STAGE_FILTERS[0], 3, name="stem")
    channels = STAGE_FILTERS[0]
    for stage, filters in enumerate(STAGE_FILTERS, start=1):
        for block in range(1, blocks + 1):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            y = conv_bn_act(x, filters, 3, strides=strides, name=f"{prefix}_1")
            y = conv_bn_act(y, filters, 3, name=f"{prefix}_2", activation=None)
            if strides != 1 or channels != filters:
                if shortcut == "A":
                    x = keras.layers.MaxPooling2D(1, strides=strides, name=f"{prefix}_subsample")(x)
                    x = ZeroPadChannels(filters - channels, name=f"{prefix}_widen")(x)
                else:
                    x = conv_bn_act(x, filters, 1, strides=strides, name=f"{prefix}_proj", activation=None)
            x = keras.layers.Add(name=f"{prefix}_add")([x, y])
            x = keras.layers.Activation("relu", name=f"{prefix}_relu")(x)
            channels = filters
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name=name)


@register_model("resnet20", description="He et al. CIFAR ResNet-20: 3 stages × 3 basic blocks (16/32/64), option-A shortcuts; 0.27 M params.",
                default_input_shape=(32, 32, 3))
def resnet20(input_shape=(32, 32, 3), num_classes: int = 10, *, shortcut: str = "A") -> keras.Model:
    return cifar_resnet("resnet20", 3, input_shape, num_classes, shortcut)


@register_model("resnet56", description="He et al. CIFAR ResNet-56: 3 stages × 9 basic blocks (16/32/64), option-A shortcuts; 0.85 M params.",
                default_input_shape=(32, 32, 3))
def resnet56(input_shape=(32, 32, 3), num_classes: int = 10, *, shortcut: str = "A") -> keras.Model:
    return cifar_resnet("resnet56", 9, input_shape, num_classes, shortcut)


@register_model("preact_resnet18", description="Pre-activation ResNet-18 for CIFAR (BN-ReLU-conv blocks, 64-512 filters), input BN folded forward into the stem conv.",
                default_input_shape=(32, 32, 3))
def preact_resnet18(input_shape=(32, 32, 3), num_classes: int = 10, *, input_bn: bool = True) -> keras.Model:
    if not isinstance(input_bn, bool):
        raise ZooError(f"model 'preact_resnet18': input_bn must be true or false, not {input_bn!r}")
    check_input_side("preact_resnet18", input_shape, 8)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if input_bn:
        x = batch_norm("input_bn", center=False, scale=False)(x)
    x = keras.layers.Conv2D(PREACT_FILTERS[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    channels = PREACT_FILTERS[0]
    for stage, filters in enumerate(PREACT_FILTERS, start=1):
        for block in (1, 2):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            pre = batch_norm(f"{prefix}_pre_bn")(x)
            pre = keras.layers.Activation("relu", name=f"{prefix}_pre_relu")(pre)
            y = conv_bn_act(pre, filters, 3, strides=strides, name=f"{prefix}_1")
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_2_conv")(y)
            if strides != 1 or channels != filters:
                x = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{prefix}_proj_conv")(pre)
            x = keras.layers.Add(name=f"{prefix}_add")([x, y])
            channels = filters
    x = batch_norm("final_bn")(x)
    x = keras.layers.Activation("relu", name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="preact_resnet18")
