"""The loss network (VGG16/VGG19 from keras.applications) and the perceptual losses of style transfer.

Loss networks:
* "vgg16" / "vgg19" with ImageNet weights — from the Keras cache (~/.keras/models/) or a file given with
  `weights_path`. zoo never downloads them implicitly (it must work offline): if they are missing, one line says
  how to get them.
* "random": VGG16 with seeded He-normal weights. Runs offline; random conv features still carry texture
  statistics, but this is NOT the perceptual loss of the papers, and every output made with it says so.

Losses (on images in [0, 1] RGB; the network's own Caffe-style preprocessing is applied inside):
* style: for each style layer, ‖G(x) − G(s)‖² / ‖G(s)‖², G the Gram matrix F·Fᵀ / (H·W·C), averaged over layers;
* content: ‖F(x) − F(c)‖² / ‖F(c)‖² at the content layer;
* total variation: mean squared difference of neighbouring pixels.
Style and content are relative (normalised by the target's own energy), so the default weights carry over between
ImageNet and random loss networks and between layers of very different scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ZooError

# layer choices: Johnson et al. (VGG16) and Gatys et al. / the Keras example (VGG19)
LAYERS = {
    "vgg16": {"content": "block2_conv2", "style": ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")},
    "vgg19": {"content": "block5_conv2",
              "style": ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")},
}
LOSS_NETS = ("vgg16", "vgg19", "random")
WEIGHT_FILES = {  # the names keras.applications caches the no-top ImageNet weights under
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass
class LossNetwork:
    """`features(images)` → {"content": tensor, "style": [tensors]}; `description` says which weights it has."""

    model: object
    kind: str
    description: str
    random: bool

    def features(self, images):
        import keras

        x = images[..., ::-1] * 255.0 - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=images.dtype)
        outputs = self.model(x, training=False)
        return {"content": outputs[0], "style": list(outputs[1:])}


def build_loss_network(kind: str = "vgg16", *, weights_path: Path | str | None = None, seed: int = 0) -> LossNetwork:
    import keras

    if kind not in LOSS_NETS:
        raise ZooError(f"unknown loss network {kind!r}; use one of: {', '.join(LOSS_NETS)}")
    arch = "vgg16" if kind == "random" else kind
    builder = keras.applications.VGG16 if arch == "vgg16" else keras.applications.VGG19
    base = builder(include_top=False, weights=None, input_shape=(None, None, 3))
    if kind == "random":
        if weights_path is not None:
            raise ZooError("--vgg-weights is for --loss-net vgg16/vgg19, not random")
        _he_init(base, seed)
        description = "vgg16 with RANDOM weights (--loss-net random): not the ImageNet perceptual loss"
    else:
        path = _weights_file(arch, weights_path)
        try:
            base.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001 - h5py/Keras raise several kinds for a wrong file
            raise ZooError(f"cannot load {arch} weights from {path}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160]}; give the no-top ImageNet weights file") from None
        description = f"{arch} with ImageNet weights ({path.name})"
    names = (LAYERS[arch]["content"], *LAYERS[arch]["style"])
    model = keras.Model(base.input, [base.get_layer(n).output for n in names], name=f"{arch}_features")
    model.trainable = False
    return LossNetwork(model, kind, description, random=kind == "random")


def _weights_file(arch: str, weights_path: Path | str | None) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ZooError(f"--vgg-weights {path} does not exist; give the {WEIGHT_FILES[arch]} file")
        return path
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / WEIGHT_FILES[arch]
    if cache.is_file():
        return cache
    raise ZooError(
        f"{arch} ImageNet weights are not in the Keras cache ({cache}); download them once with "
        f"`python -c \"import keras; keras.applications.{arch.upper()}(include_top=False)\"`, pass "
        f"--vgg-weights PATH, or use --loss-net random for an offline run (not a perceptual loss)"
    )


def _he_init(model, seed: int) -> None:
    """He-normal kernels and zero biases: keeps the activations' scale through 13 ReLU convs (Glorot shrinks it)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = layer.kernel
            fan_in = int(np.prod(kernel.shape[:-1]))
            kernel.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), tuple(kernel.shape)).astype("float32"))
            layer.bias.assign(np.zeros(tuple(layer.bias.shape), "float32"))


def gram(features):
    """Batch of Gram matrices F·Fᵀ / (H·W·C) from N×H×W×C features."""
    import keras.ops as ops

    shape = ops.shape(features)
    flat = ops.reshape(features, (shape[0], -1, shape[3]))
    size = ops.cast(shape[1] * shape[2] * shape[3], features.dtype)
    return ops.matmul(ops.transpose(flat, (0, 2, 1)), flat) / size


def style_loss(grams, target_grams):
    """Mean over layers of ‖G − G_s‖² / ‖G_s‖², per image (shape N). `target_grams` broadcast over the batch."""
    import keras.ops as ops

    terms = [ops.sum(ops.square(g - t), axis=(1, 2)) / ops.sum(ops.square(t)) for g, t in zip(grams, target_grams)]
    return ops.mean(ops.stack(terms), axis=0)


def content_loss(features, target):
    """‖F − F_c‖² / ‖F_c‖² per image (shape N)."""
    import keras.ops as ops

    axes = (1, 2, 3)
    return ops.sum(ops.square(features - target), axis=axes) / (ops.sum(ops.square(target), axis=axes) + 1e-12)


def total_variation(images):
    """Mean squared difference of vertically and horizontally neighbouring pixels, per image (shape N)."""
    import keras.ops as ops

    dy = ops.mean(ops.square(images[:, 1:, :, :] - images[:, :-1, :, :]), axis=(1, 2, 3))
    dx = ops.mean(ops.square(images[:, :, 1:, :] - images[:, :, :-1, :]), axis=(1, 2, 3))
    return dy + dx
