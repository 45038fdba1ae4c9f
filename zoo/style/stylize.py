"""Stylizing images: with a trained feed-forward network (any format), or by Gatys-style optimisation of pixels.

`stylize_files` reads every image first (so a bad file fails before anything is written), runs the model, and
writes OUT/<stem>.png per input, each file atomically. `optimize_image` starts from the content image and runs
Adam on its pixels against the loss network's content and style losses (zoo/style/losses.py; VGG19 layers of
Gatys et al. by default), clipping to [0, 1] after each step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ZooError
from zoo.images import (DEFAULT_MAX_PIXELS, MIN_SIDE, fit_long_side, output_paths, read_image,
                        resize_short_side, save_image)


def stylize_files(model: Path | str, images: list[str], out: Path, *, device: str = "auto", batch_size: int = 4,
                  max_pixels: int = DEFAULT_MAX_PIXELS, overwrite: bool = False) -> tuple[list[Path], str]:
    """Stylize each image with `model`; returns (written paths, what ran). Outputs are checked before the model
    runs (zoo/images.py `output_paths`)."""
    from zoo.image_model import ImageModel

    if not images:
        raise ZooError("give at least one image after the model: zoo stylize MODEL IMAGE...")
    targets = [paths[0] for paths in output_paths(images, Path(out).expanduser(), overwrite=overwrite)]
    pixels = [read_image(spec, max_pixels=max_pixels) for spec in images]
    runner = ImageModel(model, device=device)
    outputs = runner(pixels, batch_size=batch_size)  # save_image creates the folder (export/atomic.py make_parents)
    return [save_image(image, path, overwrite=overwrite) for image, path in zip(outputs, targets)], runner.detail


def optimize_image(
    content: str,
    style: str,
    *,
    steps: int = 300,
    image_size: int = 256,
    content_weight: float = 1.0,
    style_weight: float = 10.0,
    tv_weight: float = 1.0,
    lr: float = 0.02,
    loss_net: str = "vgg19",
    vgg_weights: Path | str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Gatys et al.: the image whose loss-network features match `content`'s and whose Gram matrices match
    `style`'s. The content image is scaled so its longer side is `image_size`. Returns (image, record)."""
    import keras
    import tensorflow as tf

    from zoo.style.losses import build_loss_network, content_loss, gram, style_loss, total_variation

    if steps < 1 or image_size < MIN_SIDE:
        raise ZooError(f"steps must be >= 1 and image size >= {MIN_SIDE}, not {steps} and {image_size}")
    started = time.perf_counter()
    content_pixels = fit_long_side(read_image(content, what="content image"), image_size)
    style_pixels = resize_short_side(read_image(style, what="style image"), min(content_pixels.shape[:2]))
    keras.utils.set_random_seed(seed)
    net = build_loss_network(loss_net, weights_path=vgg_weights, seed=seed)
    content_features = net.features(tf.constant(content_pixels[None]))["content"]
    style_grams = [gram(f) for f in net.features(tf.constant(style_pixels[None]))["style"]]
    image = tf.Variable(content_pixels[None])
    optimizer = keras.optimizers.Adam(lr)
    weights = tf.constant([content_weight, style_weight, tv_weight], tf.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            features = net.features(image)
            parts = tf.stack([
                content_loss(features["content"], content_features)[0],
                style_loss([gram(f) for f in features["style"]], style_grams)[0],
                total_variation(image)[0],
            ])
            total = tf.reduce_sum(weights * parts)
        optimizer.apply_gradients([(tape.gradient(total, image), image)])
        image.assign(tf.clip_by_value(image, 0.0, 1.0))
        return total, parts

    names = ("total", "content", "style", "tv")
    progress = keras.utils.Progbar(steps, stateful_metrics=names, verbose=1 if verbose else 0)
    first = last = None
    for index in range(1, steps + 1):
        total, parts = step()
        values = [float(total), *map(float, parts.numpy())]
        first = first or values
        last = values
        progress.update(index, list(zip(names, values)))
    record = {"loss_net": net.description, "loss_net_random": net.random, "steps": steps,
              "size": list(content_pixels.shape[:2]), "first_losses": dict(zip(names, first)),
              "final_losses": dict(zip(names, last)), "wall_time_s": round(time.perf_counter() - started, 2)}
    return image.numpy()[0], record
