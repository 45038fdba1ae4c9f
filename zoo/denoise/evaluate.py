"""Denoising: applying a model to image files, and PSNR/SSIM against classic baselines on held-out images.

Baselines (scikit-image, same noisy images, same seeds): `denoise_nl_means` (h = 0.8σ, σ given, fast mode, 5×5
patches, 13×13 search window: the settings of scikit-image's own example) and `denoise_tv_chambolle`
(weight = 0.004·σ, i.e. 0.1 at σ = 25). The noisy input is scored clipped to [0, 1]; every output is clipped too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo.denoise.data import HELD_OUT, add_noise, check_sigma, load_images, to_channels
from zoo.errors import ZooError
from zoo.images import DEFAULT_MAX_PIXELS, output_paths, read_image, save_image

SIGMAS = (15, 25, 50)
METHODS = ("noisy", "dncnn", "nl_means", "tv_chambolle")


def _open(model, device: str):
    from zoo.image_model import ImageModel

    runner = ImageModel(model, device=device)
    if runner.channels not in (1, 3):
        raise ZooError(f"{model} takes {runner.channels} channels; a denoiser takes 1 (gray) or 3 (RGB)")
    return runner


def denoise_files(model, images: list[str], out: Path, *, sigma: float | None = None, device: str = "auto",
                  seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, overwrite: bool = False) -> tuple[list[Path], str]:
    """Denoise each image into OUT/<stem>.png. With `sigma`, Gaussian noise of that σ is added first (seeded) and
    the noisy input is written too (OUT/<stem>_noisy.png), to see what the model removes. Every output is planned
    and checked before the model runs (zoo/images.py `output_paths`)."""
    if not images:
        raise ZooError("give at least one image after the model: zoo denoise MODEL IMAGE...")
    if sigma is not None:
        check_sigma(sigma)
    variants, roles = (("_noisy", ""), ("the noisy copy of", "")) if sigma is not None else (("",), ("",))
    targets = output_paths(images, Path(out).expanduser(), variants=variants, what=roles, overwrite=overwrite)
    runner = _open(model, device)
    clean = [to_channels(read_image(spec, max_pixels=max_pixels), runner.channels) for spec in images]
    inputs = [add_noise(c, sigma, seed + i) for i, c in enumerate(clean)] if sigma is not None else clean
    outputs = runner(inputs, batch_size=1)  # save_image creates the folder (export/atomic.py make_parents)
    written = []
    for noisy, image, paths in zip(inputs, outputs, targets):
        images_out = (noisy, image) if sigma is not None else (image,)
        written += [save_image(_rgb(x), path, overwrite=overwrite) for x, path in zip(images_out, paths)]
    return written, runner.detail


def evaluate_denoising(model, *, sigmas=SIGMAS, device: str = "auto", seed: int = 0,
                       images: tuple[str, ...] = HELD_OUT) -> dict[str, Any]:
    """Mean PSNR (dB) and SSIM over the held-out images, per σ and method, plus seconds per image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    sigmas = [check_sigma(s) for s in sigmas]
    runner = _open(model, device)
    clean_images = load_images([f"skimage:{n}" for n in images], runner.channels)
    methods = {
        "noisy": lambda x, s: x,
        "dncnn": lambda x, s: runner([x], batch_size=1)[0],
        "nl_means": lambda x, s: denoise_nl_means(x, h=0.8 * s / 255, sigma=s / 255, fast_mode=True, patch_size=5,
                                                  patch_distance=6, channel_axis=-1),
        "tv_chambolle": lambda x, s: denoise_tv_chambolle(x, weight=0.004 * s, channel_axis=-1),
    }
    rows = []
    for sigma in sigmas:
        scores = {m: {"psnr": [], "ssim": [], "seconds": []} for m in methods}
        for index, clean in enumerate(clean_images):
            noisy = add_noise(clean, sigma, seed + index)
            for name, method in methods.items():
                started = time.perf_counter()
                result = np.asarray(method(noisy, sigma), dtype=np.float32).reshape(clean.shape)  # nl_means drops a
                result = np.clip(result, 0.0, 1.0)  # single channel axis
                scores[name]["seconds"].append(time.perf_counter() - started)
                scores[name]["psnr"].append(peak_signal_noise_ratio(clean, result, data_range=1.0))
                scores[name]["ssim"].append(structural_similarity(clean, result, data_range=1.0, channel_axis=-1))
        for name, values in scores.items():
            rows.append({"sigma": sigma, "method": name, **{k: float(np.mean(v)) for k, v in values.items()}})
    return {"model": str(model), "runtime": runner.detail, "images": list(images), "seed": seed, "rows": rows}


def table(report: dict[str, Any]) -> str:
    lines = ["sigma  method        PSNR dB  SSIM    s/image"]
    for row in report["rows"]:
        lines.append(f"{row['sigma']:<5g}  {row['method']:<12}  {row['psnr']:7.2f}  {row['ssim']:.4f}  "
                     f"{row['seconds']:.2f}")
    return "\n".join(lines)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
