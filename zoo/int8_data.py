"""The data `zoo export --int8` calibrates and gates on (export/int8.py does the quantizing; it knows no datasets).

Calibration images come from the **training** split of the dataset — a seeded random subset, standardised exactly
as training saw them — and never from the test split, which the gate measures on (top-1 agreement with the fp32
model and, for a classifier of the dataset's classes, the accuracy change). The dataset defaults to the one the run
was trained on (its metrics.json); a bare `.keras` file needs `--calib-dataset`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.checks import check_positive
from zoo.errors import ZooError

WEIGHTS = ("per-channel", "per-tensor")  # --int8-weights
GATE_IMAGES = 2000  # test images the gate runs on, at most (the whole test split when smaller)


def int8_settings(keras_path: Path, *, dataset: str | None, run_dataset: str | None, images: int = 512,
                  method: str = "minmax", keep_float: tuple[str, ...] = (), min_agreement: float = 0.99,
                  max_drop: float = 0.005, size: tuple[int, int] | None = None, seed: int = 0,
                  run_metrics: dict | None = None, bias_correction: bool = False, weights: str = "per-channel"):
    """export.int8.Int8Settings for the model at `keras_path`: `images` calibration images from the training split
    of `dataset` (or of `run_dataset`, the run's own), up to GATE_IMAGES gate images (and labels) from its test split.
    A denoising run (its metrics.json, `run_metrics`) calibrates on noisy crops of its training photos and is gated
    on the PSNR of held-out photos instead."""
    from export.int8 import METHODS, Int8Settings
    from export.loading import load_keras
    from zoo.classifier import is_classifier_for
    from zoo.data import load_dataset
    from zoo.data.dataset import subset

    if weights not in WEIGHTS:
        raise ZooError(f"--int8-weights {weights!r}: use {' or '.join(WEIGHTS)}")
    if (run_metrics or {}).get("task") == "denoising" and dataset is None:
        if method not in METHODS:
            raise ZooError(f"--calib-method {method!r}: use {', '.join(METHODS)}")
        settings = _denoiser_settings(run_metrics, images=images, method=method, keep_float=tuple(keep_float),
                                      side=size[0] if size else DENOISE_CROP, seed=seed)
        settings.bias_correction, settings.per_channel = bias_correction, weights == "per-channel"
        return settings
    spec = dataset or run_dataset
    if spec is None:
        raise ZooError("--int8 needs --calib-dataset for a .keras file (a run folder records its own dataset): "
                       "e.g. --calib-dataset digits or --calib-dataset npz:PATH")
    if method not in METHODS:
        raise ZooError(f"--calib-method {method!r}: use {', '.join(METHODS)}")
    check_positive("--calib-images", images, integer=True)
    if not 0 <= min_agreement <= 1 or not 0 <= max_drop <= 1:
        raise ZooError("--int8-min-agreement and --int8-max-drop are percentages between 0 and 100")
    model = load_keras(keras_path)
    side, channels = _input_side(model, size)
    data = load_dataset(spec, seed=seed)
    if data.channels != channels:
        raise ZooError(f"--calib-dataset {spec} has {data.channels}-channel images; the model takes {channels}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(data.train))[:images])
    calibration, _ = _images(subset(data.train, chosen), side, channels)
    gate_split = subset(data.test, np.arange(min(len(data.test), GATE_IMAGES)))
    evaluation, labels = _images(gate_split, side, channels)
    classifier = is_classifier_for(model, data.num_classes)
    return Int8Settings(
        calibration=calibration, evaluation=evaluation, labels=labels if classifier else None, method=method,
        keep_float=tuple(keep_float), min_agreement=min_agreement, max_drop=max_drop, bias_correction=bias_correction,
        per_channel=weights == "per-channel",
        calibration_source=f"{data.name} training split, seed {seed}",
        evaluation_source=f"{data.name} test images" + ("" if classifier else " (unlabelled for this model)"),
    )


DENOISE_CROP = 64  # calibration and gate crops of a denoiser (fully convolutional: any size runs)
DENOISE_GATE_CROPS = 4  # per held-out photo


def _denoiser_settings(metrics: dict, *, images: int, method: str, keep_float: tuple[str, ...], side: int,
                       seed: int):
    from export.int8 import Int8Settings
    from zoo.denoise.data import HELD_OUT, add_noise, load_images, training_specs

    sigma = float(metrics.get("sigma", 25.0))
    channels = int(metrics.get("channels", 1))
    source = metrics.get("training_images", "")
    folder = None if not source or source.startswith("skimage:") else source
    rng = np.random.default_rng(seed)

    def crops(photos, count, noisy_seed):
        clean, noisy = [], []
        for i in range(count):
            photo = photos[i % len(photos)]
            top, left = (rng.integers(0, photo.shape[axis] - side + 1) for axis in (0, 1))
            patch = photo[top:top + side, left:left + side]
            clean.append(patch)
            noisy.append(add_noise(patch, sigma, noisy_seed + i))
        return np.stack(clean).astype(np.float32), np.stack(noisy).astype(np.float32)

    training = load_images(training_specs(folder), channels)
    held_out = load_images([f"skimage:{name}" for name in HELD_OUT], channels)
    smallest = min(min(photo.shape[:2]) for photo in training + held_out)
    if side > smallest:
        raise ZooError(f"--size {side}x{side} is larger than the smallest photo ({smallest} pixels): calibrate at "
                       f"--size {DENOISE_CROP}x{DENOISE_CROP} or anything up to {smallest}")
    _, calibration = crops(training, images, seed)
    targets, evaluation = crops(held_out, DENOISE_GATE_CROPS * len(held_out), seed + 10_000)
    return Int8Settings(calibration=calibration, evaluation=evaluation, targets=targets, method=method,
                        keep_float=keep_float, calibration_source=f"noisy {side}×{side} crops of the training photos, "
                        f"σ={sigma:g}", evaluation_source=f"noisy crops of the held-out photos {', '.join(HELD_OUT)}")


def _input_side(model, size: tuple[int, int] | None) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 3:
        raise ZooError(f"--int8 needs a model with one image input (H, W, C), not {shape or 'several inputs'}")
    if shape[0] is not None and shape[0] == shape[1]:
        return shape[0], shape[2]
    if shape[0] is None and size is not None and size[0] == size[1]:
        return size[0], shape[2]
    raise ZooError("--int8 on a model with a dynamic or non-square input size needs one square --size HxH to "
                   "calibrate at")


def _images(split, side: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from zoo.data import make_pipeline

    batches = list(make_pipeline(split, image_size=side, channels=channels, batch_size=256, training=False, seed=0))
    return (np.concatenate([x.numpy() for x, _ in batches]).astype(np.float32),
            np.concatenate([y.numpy() for _, y in batches]))

