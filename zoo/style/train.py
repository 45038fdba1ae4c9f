"""`train_style(...)`: train a feed-forward style network (Johnson et al.) on content photos with tf.data.

Content: scikit-image's bundled photos by default (TRAIN_PHOTOS; COFFEE and ROCKET are held out for the
evaluation and the picture grid), or every image in a folder. Each step takes a batch of random crops (random
scale, so the shorter side is 1–2× the crop, and random horizontal flips) and minimises
    content_weight · content + style_weight · style + tv_weight · total variation
through the loss network (zoo/style/losses.py). Adam, constant learning rate.

The run directory gets model.keras (the transformer alone), losses.csv, losses.png, grid.png (style image, then
each held-out content image beside its stylized version) and metrics.json, written as one unit like `zoo train`.
metrics.json["evaluation"] measures what the network learnt on the held-out images: the style loss of the
stylized images relative to the content images' own style loss (how far the Gram statistics moved towards the
style's), and the content loss that cost.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

import zoo
from zoo.errors import ZooError
from zoo.images import MIN_SIDE, center_crop, list_images, read_image, resize_short_side
from zoo.runs import run_directory, write_metrics
from zoo.checks import check_positive

TRAIN_PHOTOS = ("astronaut", "camera", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina", "clock")
HELD_OUT_PHOTOS = ("coffee", "rocket")
RUN_FILES = ("model.keras", "losses.csv", "losses.png", "grid.png", "metrics.json")
CACHE_LIMIT = 64  # content sets up to this many images are decoded once and kept in memory
DEFAULTS = {"steps": 400, "image_size": 128, "batch_size": 4, "lr": 1e-3,
            "content_weight": 1.0, "style_weight": 10.0, "tv_weight": 1.0}


def train_style(
    *,
    style: str,
    out: Path,
    content: str | Path | None = None,
    norm: str = "batch",
    steps: int = DEFAULTS["steps"],
    image_size: int = DEFAULTS["image_size"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    content_weight: float = DEFAULTS["content_weight"],
    style_weight: float = DEFAULTS["style_weight"],
    tv_weight: float = DEFAULTS["tv_weight"],
    loss_net: str = "vgg16",
    vgg_weights: Path | str | None = None,
    seed: int = 0,
    width: int = 32,
    verbose: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and write the run into `out`; returns the metrics (also in metrics.json)."""
    started = time.perf_counter()
    for name, value in (("steps", steps), ("image_size", image_size), ("batch_size", batch_size)):
        check_positive(name, value, integer=True)
    for name, value in (("lr", lr), ("style_weight", style_weight)):
        check_positive(name, value)
    for name, value in (("content_weight", content_weight), ("tv_weight", tv_weight)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ZooError(f"{name} must be a number >= 0, not {value!r}")
    if image_size < MIN_SIDE:
        raise ZooError(f"image_size must be at least {MIN_SIDE}, not {image_size}")
    style_image = read_image(style, what="style image")
    train_specs, eval_specs = _content_specs(content)
    eval_images = [center_crop(read_image(spec, what="content image"), image_size) for spec in eval_specs]

    import keras
    import tensorflow as tf

    from zoo.registry import create_model
    from zoo.style.losses import build_loss_network, content_loss, gram, style_loss, total_variation

    out = Path(out).expanduser()
    inputs = [spec for spec in (style, content) if spec is not None and not str(spec).startswith("skimage:")]
    with run_directory(out, RUN_FILES, overwrite=overwrite, sources=inputs) as staging:
        keras.utils.set_random_seed(seed)
        net = build_loss_network(loss_net, weights_path=vgg_weights, seed=seed)
        model = create_model("style_transformer", norm=norm, width=width)
        style_target = resize_short_side(style_image, image_size)[None]
        style_grams = [gram(f) for f in net.features(tf.constant(style_target))["style"]]
        dataset = _content_pipeline(train_specs, image_size, batch_size, seed)
        optimizer = keras.optimizers.Adam(lr)
        weights = tf.constant([content_weight, style_weight, tv_weight], tf.float32)

        @tf.function
        def train_step(images):
            with tf.GradientTape() as tape:
                stylized = model(images, training=True)
                got, want = net.features(stylized), net.features(images)
                parts = tf.stack([
                    tf.reduce_mean(content_loss(got["content"], want["content"])),
                    tf.reduce_mean(style_loss([gram(f) for f in got["style"]], style_grams)),
                    tf.reduce_mean(total_variation(stylized)),
                ])
                total = tf.reduce_sum(weights * parts)
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return total, parts

        names = ("total", "content", "style", "tv")
        progress = keras.utils.Progbar(steps, stateful_metrics=names, verbose=1 if verbose else 0)
        rows = []
        for step, images in enumerate(dataset.take(steps), start=1):
            total, parts = train_step(images)
            values = [float(total), *map(float, parts.numpy())]
            if not np.isfinite(values[0]):
                raise ZooError(f"the loss became {values[0]} at step {step}; lower --lr or the loss weights")
            rows.append((step, *values))
            progress.update(step, list(zip(names, values)))

        def evaluate(images: np.ndarray) -> dict[str, float]:
            batch = tf.constant(images)
            stylized = model(batch, training=False)
            got, want = net.features(stylized), net.features(batch)
            content_style = style_loss([gram(f) for f in want["style"]], style_grams)
            stylized_style = style_loss([gram(f) for f in got["style"]], style_grams)
            return {
                "content_images_style_loss": float(tf.reduce_mean(content_style)),
                "stylized_style_loss": float(tf.reduce_mean(stylized_style)),
                "style_loss_ratio": float(tf.reduce_mean(stylized_style / content_style)),
                "stylized_content_loss": float(tf.reduce_mean(content_loss(got["content"], want["content"]))),
                "stylized_tv": float(tf.reduce_mean(total_variation(stylized))),
                "content_images_tv": float(tf.reduce_mean(total_variation(batch))),
            }, keras.ops.convert_to_numpy(stylized)

        evaluation, stylized = evaluate(np.stack(eval_images))
        model.save(staging / "model.keras")
        _write_losses(rows, names, staging / "losses.csv")
        tail = rows[-max(1, len(rows) // 10):]
        final = {name: float(np.mean([r[i + 1] for r in tail])) for i, name in enumerate(names)}
        _plot_losses(rows, names, staging / "losses.png", title=f"style_transformer ({norm}), loss: {net.description}")
        _plot_grid(style_target[0], eval_images, stylized, staging / "grid.png",
                   title=f"norm={norm}, {steps} steps, loss network: {net.description}")
        metrics = {
            "model": "style_transformer",
            "task": "style_transfer",
            "norm": norm,
            "width": width,
            "style": str(style),
            "content": str(content) if content else "skimage:" + ",".join(TRAIN_PHOTOS),
            "held_out": [str(s) for s in eval_specs],
            "loss_net": net.description,
            "loss_net_random": net.random,
            "steps": steps,
            "image_size": image_size,
            "batch_size": batch_size,
            "lr": lr,
            "weights": {"content": content_weight, "style": style_weight, "tv": tv_weight},
            "final_losses": final,
            "evaluation": evaluation,
            "params": int(model.count_params()),
            "seed": seed,
            "zoo_version": zoo.__version__,
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        write_metrics(staging, metrics)
    return metrics


def _content_specs(content: str | Path | None) -> tuple[list[str], list[str]]:
    """(training images, held-out images) as read_image specs."""
    if content is None:
        return [f"skimage:{n}" for n in TRAIN_PHOTOS], [f"skimage:{n}" for n in HELD_OUT_PHOTOS]
    files = list_images(content, option="--content")
    for path in files[:CACHE_LIMIT]:  # a broken file names itself now, not mid-training
        read_image(path, what="content image")
    held_out = files[-2:] if len(files) >= 4 else [f"skimage:{n}" for n in HELD_OUT_PHOTOS]
    return (files[:-2] if len(files) >= 4 else files), held_out


def _content_pipeline(specs: list[str], size: int, batch_size: int, seed: int):
    """tf.data: decode (PIL) → random scale so the shorter side is 1–2× `size` → random crop → random flip."""
    import tensorflow as tf

    def images():
        for spec in specs:
            yield read_image(spec, what="content image")

    dataset = tf.data.Dataset.from_generator(images, output_signature=tf.TensorSpec((None, None, 3), tf.float32))
    if len(specs) <= CACHE_LIMIT:
        dataset = dataset.cache()
    dataset = dataset.shuffle(min(len(specs), 256), seed=seed, reshuffle_each_iteration=True).repeat()

    def augment(image):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        short = tf.random.uniform([], float(size), 2.0 * size, seed=seed)
        new = tf.maximum(tf.cast(tf.round(shape * short / tf.reduce_min(shape)), tf.int32), size)
        image = tf.image.resize(image, new, antialias=True)
        image = tf.image.random_crop(image, (size, size, 3), seed=seed)
        return tf.clip_by_value(tf.image.random_flip_left_right(image, seed=seed), 0.0, 1.0)

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def _write_losses(rows: list[tuple], names: tuple[str, ...], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("step", *names))
        writer.writerows((r[0], *(f"{v:.6g}" for v in r[1:])) for r in rows)


def _plot_losses(rows: list[tuple], names: tuple[str, ...], path: Path, *, title: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    axis = figure.subplots()
    steps = [r[0] for r in rows]
    for i, name in enumerate(names, start=1):
        axis.plot(steps, [r[i] for r in rows], label=name)
    axis.set(xlabel="step", ylabel="loss (unweighted parts, weighted total)", yscale="log", title=title)
    axis.title.set_fontsize(9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(path, dpi=100)


def _plot_grid(style: np.ndarray, contents: list[np.ndarray], stylized: np.ndarray, path: Path, *, title: str) -> None:
    from matplotlib.figure import Figure

    rows = len(contents)
    figure = Figure(figsize=(9, 3 * rows), layout="constrained")
    axes = figure.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        for col, (image, label) in enumerate(((style, "style"), (contents[row], "content"),
                                              (stylized[row], "stylized"))):
            axes[row][col].imshow(np.clip(image, 0, 1))
            axes[row][col].set_title(label if row == 0 or col else "")
            axes[row][col].axis("off")
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100)
