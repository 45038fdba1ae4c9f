"""What a loaded dataset is (ImageDataset, Split), and the checks and splits every source shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo.errors import ZooError

VAL_FRACTION = 0.1  # held out of a given train split for validation
POOL_FRACTIONS = (0.15, 0.15)  # test and val shares of a source that comes as one pool (the rest trains)


@dataclass(frozen=True)
class Split:
    """One split. `x` is either images, (N, H, W, C) uint8 in 0..255 or float32 in 0..1, or (N,) file paths;
    `y` is (N,) int64 class indices. The pipeline turns either kind into the same float batches."""

    x: np.ndarray
    y: np.ndarray

    @property
    def from_files(self) -> bool:
        return self.x.ndim == 1

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ImageDataset:
    name: str
    class_names: list[str]
    channels: int
    default_image_size: int
    default_epochs: int
    train: Split
    val: Split
    test: Split
    mirror_invariant: bool = False  # True only where a horizontal flip is known to keep the class (photos)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices of `y` into len(fractions)+1 parts (the last gets the rest), each with the class mix of `y`.

    Every sample gets its quantile within its class (in a seeded random order); sorting by it interleaves the
    classes proportionally, so any prefix — and so each part — is stratified, even for tiny classes.
    Indices come back sorted; shuffling is the pipeline's job.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    quantile = np.empty(len(y))
    for label in np.unique(y):
        members = order[y[order] == label]
        quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = order[np.argsort(quantile[order], kind="stable")]
    bounds = np.cumsum([round(f * len(y)) for f in fractions])
    return [np.sort(part) for part in np.split(order, bounds)]


def subset(split: Split, indices: np.ndarray) -> Split:
    return Split(split.x[indices], split.y[indices])


def split_pool(everything: Split, seed: int, *, source: str) -> tuple[Split, Split, Split]:
    """(train, val, test), 70/15/15 by class, for sources that come as one pool of labelled images."""
    test_idx, val_idx, train_idx = stratified_split(everything.y, POOL_FRACTIONS, seed)
    if not (len(train_idx) and len(val_idx) and len(test_idx)):
        raise ZooError(f"{source}: {len(everything)} images are too few to split into train/val/test")
    return subset(everything, train_idx), subset(everything, val_idx), subset(everything, test_idx)


def carve_val(train: Split, seed: int, *, source: str) -> tuple[Split, Split]:
    """(train, val): hold out a stratified VAL_FRACTION of a given train split for validation."""
    val_idx, train_idx = stratified_split(train.y, (VAL_FRACTION,), seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ZooError(f"{source}: {len(train)} training samples are too few to hold out a validation split")
    return subset(train, train_idx), subset(train, val_idx)


def images_array(x: np.ndarray, *, source: str, array: str) -> np.ndarray:
    """Validate an image array and bring it to the Split convention: (N, H, W, C), C in 1/3, uint8 0..255 or
    float32 0..1 (float input with max <= 1 is taken as 0..1, otherwise as 0..255)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ZooError(
            f"{source}: {array} has shape {x.shape}; expected (N, H, W) grayscale or (N, H, W, C) with C 1 or 3"
        )
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ZooError(f"{source}: {array} has dtype {x.dtype}; expected uint8 or float images")
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if low < 0 or high > 255 or not np.isfinite(high):
        raise ZooError(f"{source}: {array} values span {low:g}..{high:g}; expected 0..1 or 0..255")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.uint8)
    return (x if high <= 1 else x / 255.0).astype(np.float32)


def labels_array(y: np.ndarray, n: int, *, source: str, array: str) -> np.ndarray:
    """(N,) or (N, 1) non-negative integer labels, as int64."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ZooError(f"{source}: {array} has shape {y.shape}; expected ({n},), one label per image")
    whole = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y % 1 == 0))
    if y.size and (not whole or y.min() < 0):
        raise ZooError(f"{source}: {array} must hold class indices 0, 1, 2, ...")
    return y.astype(np.int64)
