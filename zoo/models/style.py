"""`style_transformer`: the feed-forward style-transfer network of Johnson et al. (2016).

image [0, 1] RGB → pad H, W to multiples of 4 (mirror) → c9s1-32 → d64 → d128 → 5 residual blocks of 128 →
nearest ×2 upsample + conv 64 → nearest ×2 upsample + conv 32 (upsample-then-conv, no checkerboard) → c9s1-3 →
sigmoid → crop back to the input's H×W. Output: RGB in [0, 1], the input's size, for any H×W (not only multiples
of 4). Every conv is mirror-padded ('reflect') and has a bias, as in pytorch/examples; `norm="batch"` puts a BN
after every conv but the last (all of them fold on export), `norm="instance"` zoo's InstanceNormalization (which stays).
"""

from __future__ import annotations

import keras

from zoo.checks import check_input_side, check_positive
from zoo.errors import ZooError
from export.layers import NearestUpsampling2D
from zoo.layers import NORM_KINDS, CropLike, PadToMultiple, conv_bn_act
from zoo.registry import register_model

RESIDUAL_BLOCKS = 5
MIN_SIDE = 16  # smaller inputs leave the 4×-downsampled residual trunk under the reflection padding's reach


@register_model(
    "style_transformer",
    description="Johnson et al. feed-forward style network (BN or instance norm), any H×W, RGB [0,1] in and out.",
    default_input_shape=(None, None, 3),
    task="style_transfer",
)
def style_transformer(input_shape=(None, None, 3), *, norm: str = "batch", width: int = 32) -> keras.Model:
    """`width` is the first conv's filter count (32 in the paper); the stages use width, 2×, 4×."""
    if norm not in NORM_KINDS:
        raise ZooError(f"model 'style_transformer': norm must be one of {', '.join(NORM_KINDS)}, not {norm!r}")
    check_positive("model 'style_transformer': width", width, integer=True)
    channels = input_shape[-1]
    if channels != 3:
        raise ZooError(f"model 'style_transformer': input must have 3 channels (RGB), not {channels}")
    check_input_side("style_transformer", input_shape, MIN_SIDE, known=False)

    def conv(x, filters, kernel, name, strides=1, activation="relu", normalise=True):
        return conv_bn_act(x, filters, kernel, strides=strides, name=name, activation=activation, use_bias=True,
                           norm=norm if normalise else None, padding="reflect")

    image = keras.Input(shape=tuple(input_shape), name="image")
    x = PadToMultiple(4, name="pad_to_4")(image)
    x = conv(x, width, 9, "enc1")
    x = conv(x, 2 * width, 3, "enc2", strides=2)
    x = conv(x, 4 * width, 3, "enc3", strides=2)
    for block in range(1, RESIDUAL_BLOCKS + 1):
        y = conv(x, 4 * width, 3, f"res{block}a")
        y = conv(y, 4 * width, 3, f"res{block}b", activation=None)
        x = keras.layers.Add(name=f"res{block}_add")([x, y])
    for stage, filters in ((1, 2 * width), (2, width)):
        x = NearestUpsampling2D(2, name=f"dec{stage}_up")(x)
        x = conv(x, filters, 3, f"dec{stage}")
    x = conv(x, 3, 9, "out", activation=None, normalise=False)
    x = keras.layers.Activation("sigmoid", name="out_sigmoid")(x)
    stylized = CropLike(name="stylized")([x, image])
    return keras.Model(image, stylized, name=f"style_transformer_{norm}")
