"""Domain shifts for in-memory datasets: `digits+invert`, `mnist+noise`, `digits+brightness`, …

A shift is applied to every split's images (not the labels), deterministically (seeded), so a model trained on
`digits` can be measured on `digits+invert` — the target domain of BN recalibration (AdaBN). Images stay in the
Split convention (uint8 0..255 or float32 0..1); shifted images come back as float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from zoo.data.dataset import ImageDataset, Split
from zoo.errors import ZooError

NOISE_SIGMA = 0.3  # additive Gaussian noise, std in [0, 1] units
BRIGHTNESS = 0.4  # added to every pixel, then clipped (faint strokes on a bright ground)
CONTRAST = 0.4  # pixels squeezed into [0.3, 0.7]: the same digits at 40 % contrast


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - _as_float(x)


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(_as_float(x) + rng.normal(0.0, NOISE_SIGMA, x.shape).astype(np.float32), 0.0, 1.0)


def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(_as_float(x) + BRIGHTNESS, 0.0, 1.0)


def contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.5 + (_as_float(x) - 0.5) * CONTRAST


SHIFTS = {"invert": invert, "noise": noise, "brightness": brightness, "contrast": contrast}


def apply_shift(data: ImageDataset, name: str, *, seed: int) -> ImageDataset:
    """`data` with shift `name` (one of SHIFTS; zoo/data/modifiers.py checks and names it) applied to the images of
    every split."""
    if data.train.from_files:
        raise ZooError(f"domain shifts apply to in-memory datasets, not to {data.name} (image files)")
    rng = np.random.default_rng(seed)
    shifted = {part: Split(SHIFTS[name](getattr(data, part).x, rng), getattr(data, part).y)
               for part in ("train", "val", "test")}
    return replace(data, **shifted)
