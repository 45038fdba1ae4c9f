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
BN_EPSILON = 1e-3


def batch_norm(name: str, **options) -> keras.layers.BatchNormalization:
    """The one BatchNormalization every zoo model builds: momentum BN_MOMENTUM (above), Keras' epsilon 1e-3.
    `options` are further BatchNormalization arguments (e.g. center=False, scale=False)."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name, **options)


def norm_layer(kind: str, name: str) -> keras.layers.Layer:
    """A normalisation layer over the channel axis (NHWC).

    "instance" is zoo's InstanceNormalization (below): per-sample, per-channel statistics, no running averages
    (what feed-forward style transfer wants); unlike BN it cannot be folded into the conv.
    """
    if kind == "batch":
        return batch_norm(name)
    if kind == "instance":
        return InstanceNormalization(name=name)
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
    norm: str | None = "batch",
    padding: str = "same",
):
    """Conv2D → norm → activation, named f"{name}_conv", f"{name}_bn" (or _in), f"{name}_{activation}".

    `use_bias` defaults to False because the norm's shift makes a conv bias redundant; pass True to model nets
    trained with one (BN folding must cope with non-zero biases). `padding="reflect"` mirror-pads by
    kernel_size // 2 (layer f"{name}_pad") before a 'valid' conv, as image-to-image nets do; `norm=None` skips
    the norm.
    """
    if padding == "reflect":
        x = ReflectionPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    elif padding != "same":
        raise ValueError(f"padding must be 'same' or 'reflect', not {padding!r}")
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid" if padding == "reflect" else "same",
        use_bias=use_bias, name=f"{name}_conv",
    )(x)
    if norm is not None:
        x = norm_layer(norm, f"{name}_{NORM_KINDS.get(norm, 'norm')}")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


# --- Layers the fully convolutional image-to-image models need (registered, so a saved `.keras` loads in
# safe_mode wherever `zoo.layers` is imported). Each is a handful of tensor ops that tf2onnx and the TFLite
# converter lower to builtin Pad / Slice / Resize ops, with the H×W kept dynamic.


@keras.saving.register_keras_serializable(package="zoo")
class ReflectionPadding2D(keras.layers.Layer):
    """Mirror-pad H and W by `padding` pixels on each side (no border artefacts, unlike zero padding)."""

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, x):
        p = self.padding
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, shape):
        grow = lambda d: None if d is None else d + 2 * self.padding  # noqa: E731
        return (shape[0], grow(shape[1]), grow(shape[2]), shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="zoo")
class PadToMultiple(keras.layers.Layer):
    """Mirror-pad the bottom and right edges so H and W become multiples of `multiple`.

    Lets a net with two stride-2 stages and two ×2 upsamplings take any H×W: pad here, crop back with
    `CropLike` at the end, and the output has exactly the input's size.
    """

    def __init__(self, multiple: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def call(self, x):
        shape = keras.ops.shape(x)
        pad_h = (self.multiple - shape[1] % self.multiple) % self.multiple
        pad_w = (self.multiple - shape[2] % self.multiple) % self.multiple
        x = keras.ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="reflect")
        # a pad by computed amounts loses the static channel count, which the TFLite converter needs
        return keras.ops.reshape(x, (shape[0], shape[1] + pad_h, shape[2] + pad_w, self._channels))

    def build(self, shape):
        self._channels = shape[-1]

    def compute_output_shape(self, shape):
        up = lambda d: None if d is None else -(-d // self.multiple) * self.multiple  # noqa: E731
        return (shape[0], up(shape[1]), up(shape[2]), shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="zoo")
class CropLike(keras.layers.Layer):
    """`CropLike()([x, reference])`: the top-left H×W of `x`, where H×W is the reference's size."""

    def call(self, inputs):
        x, reference = inputs
        shape = keras.ops.shape(reference)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, shapes):
        x, reference = shapes
        return (x[0], reference[1], reference[2], x[3])


@keras.saving.register_keras_serializable(package="zoo")
class InstanceNormalization(keras.layers.Layer):
    """Per-sample, per-channel normalisation over H×W with a learnt scale and shift (Ulyanov et al.).

    (x − mean) · γ/√(var + ε) + β, with both statistics reduced in two stages (over H, then over W). One float32
    sum over all H×W pixels (65k at 256², what Keras' GroupNormalization does) accumulates rounding that differs
    between runtimes: ONNX Runtime and TFLite, which sum sequentially, were 3e-5 away from a float64 reference on a
    trained style network while TensorFlow was 9e-6 away, so parity at 1e-5 failed. Summing rows first keeps every
    accumulation within max(H, W) terms in every runtime. The math is the same (all rows have W pixels).
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, shape):
        channels = shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        ops = keras.ops
        def spatial_mean(t):
            return ops.mean(ops.mean(t, axis=1, keepdims=True), axis=2, keepdims=True)

        centered = x - spatial_mean(x)
        variance = spatial_mean(ops.square(centered))
        return centered * (ops.rsqrt(variance + self.epsilon) * self.gamma) + self.beta

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="zoo")
class ZeroPadChannels(keras.layers.Layer):
    """Append `extra` all-zero channels (NHWC): the parameter-free 'option A' shortcut of He et al.'s CIFAR ResNets,
    which widens the identity to the next stage's channel count. One Pad op in every runtime."""

    def __init__(self, extra: int, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def compute_output_shape(self, shape):
        return (*shape[:-1], None if shape[-1] is None else shape[-1] + self.extra)

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}
