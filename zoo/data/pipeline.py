"""tf.data input pipelines: one function for in-memory arrays and for image files.

evaluation: slices → map(decode, to float, channels, resize; parallel) → batch → prefetch.
training:   every image decoded and standardised once (kept in memory up to CACHE_LIMIT_BYTES, else redone each
            epoch) → per epoch: a permutation → gather → augment (optional) → batch → prefetch.

Training pipelines are a sequence of epochs whose randomness is a function of (seed, epoch number) only: the
permutation is drawn with a stateless op seeded with both, and augmentation uses stateless random ops seeded with
(seed, epoch, position).
So a run is reproducible under parallel map, and a run resumed at epoch k (`zoo train --resume`) sees exactly
the batches the uninterrupted run saw from epoch k on.
"""

from __future__ import annotations

import tensorflow as tf

from zoo.data.dataset import Split

AUTOTUNE = tf.data.AUTOTUNE
CACHE_LIMIT_BYTES = 2 << 30  # decoded float32 images above this are recomputed each epoch instead of kept
EPOCH_STRIDE = 1_000_003  # augmentation seeds: (seed · stride + epoch, position), distinct for distinct (seed, epoch)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601; sums to 1, so gray→RGB→gray is exact


def make_pipeline(
    split: Split,
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    training: bool,
    seed: int,
    augment: bool = False,
    flip: bool = False,
    epochs: int | None = None,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], shape (B, image_size, image_size, channels), int64 labels).

    `training` shuffles (seeded, reshuffled each epoch) and enables `augment`: a random shift by up to 1/12 of
    the side (zero-pad, random crop), plus a random horizontal flip when `flip` (only where that keeps the class:
    a mirrored digit is another symbol). A training pipeline yields epochs `first_epoch` … `epochs − 1` back to
    back (`epochs=None`: without end), each of `steps_per_epoch(split, batch_size)` batches; pass that number
    to `fit`. Evaluation pipelines are one pass in order.
    """
    prepare = _decode_file if split.from_files else tf.identity

    def standardise(x):
        return _standardise(prepare(x), image_size, channels)

    fits = len(split) * image_size * image_size * channels * 4 <= CACHE_LIMIT_BYTES
    if not training:
        dataset = tf.data.Dataset.from_tensor_slices((split.x, split.y))
        dataset = dataset.map(lambda x, y: (standardise(x), y), num_parallel_calls=AUTOTUNE)
        return dataset.batch(batch_size).prefetch(AUTOTUNE)
    # decoded once when they fit in memory, else decoded from the source in every epoch
    sources = tf.convert_to_tensor(split.x)
    images = _all_images(sources, standardise) if fits else None
    labels = tf.constant(split.y)
    count = len(split)

    def image(index):
        return tf.gather(images, index) if images is not None else standardise(tf.gather(sources, index))

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([count], seed=epoch_seed))
        picked = tf.data.Dataset.from_tensor_slices(order).enumerate().map(
            lambda position, index: (position, image(index), tf.gather(labels, index)), num_parallel_calls=AUTOTUNE
        )
        if augment:
            return picked.map(
                lambda position, x, y: (_augment(x, tf.stack([epoch_seed[0] * EPOCH_STRIDE + epoch, position]),
                                                 flip=flip), y),
                num_parallel_calls=AUTOTUNE,
            ).batch(batch_size)
        return picked.map(lambda position, x, y: (x, y)).batch(batch_size)

    numbers = tf.data.Dataset.counter(first_epoch) if epochs is None else tf.data.Dataset.range(first_epoch, epochs)
    return numbers.flat_map(one_epoch).prefetch(AUTOTUNE)


def _all_images(sources: tf.Tensor, standardise) -> tf.Tensor:
    """Every image standardised once (parallel map), as one (N, H, W, C) float32 tensor."""
    batches = tf.data.Dataset.from_tensor_slices(sources).map(standardise, num_parallel_calls=AUTOTUNE).batch(1024)
    return tf.concat(list(batches), axis=0)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return -(-len(split) // batch_size)


def _decode_file(path: tf.Tensor) -> tf.Tensor:
    """Any png/jpeg/bmp/gif (first frame) as uint8 RGB; gray files come back with three equal channels."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _standardise(image: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """uint8 0..255 or float 0..1 image (H, W, 1|3) → float32 (image_size, image_size, channels) in [0, 1]."""
    image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 → /255; float stays
    have = image.shape[-1]
    if have == 1 and channels == 3:
        image = tf.tile(image, [1, 1, 3])
    elif have == 3 and channels == 1:
        image = tf.tensordot(image, tf.constant(LUMA), axes=1)[..., None]
    if tuple(image.shape[:2]) != (image_size, image_size):
        image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def _augment(image: tf.Tensor, seed_pair: tf.Tensor, *, flip: bool) -> tf.Tensor:
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
    size, _, channels = image.shape
    pad = max(1, round(size / 12))  # 2 px at 28: on 15.7k MNIST images, 3 px slowed training more than it helped
    image = tf.image.pad_to_bounding_box(image, pad, pad, size + 2 * pad, size + 2 * pad)
    image = tf.image.stateless_random_crop(image, [size, size, channels], seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image
