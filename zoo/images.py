"""Reading and writing single images for the image-to-image commands (stylize, style training, denoise).

An image is given as a file path or as `skimage:NAME`, one of scikit-image's bundled photos (offline, real):
`skimage:astronaut`, `skimage:coffee`, `skimage:brick`, … Every image comes back as float32 H×W×3 RGB in [0, 1]:
grayscale is repeated to three channels, an alpha channel is composited over white, palette and 16-bit images are
converted. Problems are ZooErrors naming the file and the fix.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from zoo.errors import ZooError

MIN_SIDE = 16
# 4096×4096: a style transformer at that size needs several GiB of activations on the CPU already
DEFAULT_MAX_PIXELS = 4096 * 4096
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "colorwheel", "brick", "grass", "gravel", "moon", "clock", "coins", "motorcycle")


def read_image(spec: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> np.ndarray:
    """The image at `spec` (a path or `skimage:NAME`) as float32 H×W×3 in [0, 1]."""
    text = str(spec)
    if text.startswith("skimage:"):
        array = _skimage_photo(text.partition(":")[2])
    else:
        array = _read_file(Path(text).expanduser(), max_pixels=max_pixels, what=what)
    image = to_rgb(array)
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ZooError(f"{what} {text} is {width}×{height} px; it must be at least {MIN_SIDE} px on each side")
    if height * width > max_pixels:
        raise ZooError(_too_large(text, width, height, max_pixels, what))
    return image


def to_rgb(array: np.ndarray) -> np.ndarray:
    """float32 H×W×3 in [0, 1] from uint8/uint16/bool/float arrays that are H×W, H×W×1, ×2 (gray+alpha), ×3, ×4."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    else:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ZooError(f"an image must be H×W with 1–4 channels, not shape {array.shape}")
    if array.shape[-1] in (2, 4):  # composite over white
        alpha = array[..., -1:]
        array = array[..., :-1] * alpha + (1.0 - alpha)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array, dtype=np.float32)


def list_images(folder: Path | str, *, option: str) -> list[str]:
    """Every image file under `folder` (recursively, sorted); `option` names the flag in errors."""
    from zoo.data.folder import IMAGE_SUFFIXES

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ZooError(f"{option} {folder} is not a folder; give a folder of images (PNG, JPEG, …)")
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ZooError(f"{option} {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def output_paths(images: list[str], out: Path, *, variants: tuple[str, ...] = ("",), what: tuple[str, ...] = ("",),
                 overwrite: bool = False) -> list[list[Path]]:
    """OUT/<stem><variant>.png for each input (a file or skimage:NAME) and each variant, checked before anything
    runs: no two outputs share a path, none is an input, and none replaces a file zoo did not write (export/atomic.py)
    unless `overwrite`. `what` describes each variant in the collision error ("the noisy copy of")."""
    from export.atomic import check_target

    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file; give a folder")
    stems = [Path(spec.partition(":")[2] if spec.startswith("skimage:") else spec).stem for spec in images]
    planned = [[out / f"{stem}{variant}.png" for variant in variants] for stem in stems]
    seen: dict[Path, str] = {}
    for spec, paths in zip(images, planned):
        for path, role in zip(paths, what or ("",) * len(paths)):
            described = f"{role + ' ' if role else 'the result of '}{spec}"
            if path in seen:
                raise ZooError(f"{path} would be written twice, for {seen[path]} and for {described}; rename an "
                               f"input or run them apart")
            seen[path] = described
    files = [spec for spec in images if not spec.startswith("skimage:")]
    for path in seen:
        check_target(path, overwrite=overwrite, sources=files)
    return planned


def save_image(image: np.ndarray, path: Path, *, overwrite: bool = False) -> Path:
    """Write float [0, 1] H×W×3 as an 8-bit PNG (or the format the suffix names), atomically; an existing file is
    replaced only if zoo wrote it (export/atomic.py) or `overwrite`."""
    from PIL import Image

    from export.atomic import atomic_output

    fmt = _format(path)
    pixels = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    with atomic_output(path, overwrite=overwrite) as tmp:
        Image.fromarray(pixels).save(tmp, format=fmt)
    return path


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of a float [0, 1] image (through 8 bits, as the images came)."""
    from PIL import Image

    pixels = Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    return np.asarray(pixels.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Scale so the shorter side is `size`."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    return resize(image, max(size, round(width * scale)), max(size, round(height * scale)))


def fit_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Scale so the longer side is `size` (the shorter one at least MIN_SIDE)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    return resize(image, max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central size×size square after scaling the shorter side to `size`."""
    image = resize_short_side(image, size)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def _format(path: Path) -> str:
    from PIL import Image

    Image.init()
    try:
        return Image.EXTENSION[path.suffix.lower()]
    except KeyError:
        raise ZooError(f"cannot write {path}: unknown image format {path.suffix!r}; use .png or .jpg") from None


def _read_file(path: Path, *, max_pixels: int, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        raise ZooError(f"{what} {path} is a folder; give an image file (PNG, JPEG, …)")
    if not path.is_file():
        raise ZooError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ZooError(f"{what} {path} is not readable (permissions)")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours is --max-pixels, checked from the header
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:  # checked from the header, before decoding
                raise ZooError(_too_large(str(path), width, height, max_pixels, what))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            if image.mode == "P":
                image = image.convert("RGBA")
            elif image.mode in ("I", "I;16", "I;16B", "I;16L"):
                return np.asarray(image, dtype=np.float32) / 65535.0
            elif image.mode not in ("1", "L", "LA", "RGB", "RGBA"):
                image = image.convert("RGB")
            return np.asarray(image)
    except ZooError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ZooError(f"{what} {path} is not a readable image ({type(exc).__name__}); give a PNG or JPEG file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _skimage_photo(name: str) -> np.ndarray:
    if name not in SKIMAGE_PHOTOS:
        raise ZooError(f"unknown bundled image skimage:{name}; use one of: {', '.join(SKIMAGE_PHOTOS)}")
    import skimage.data

    if name == "motorcycle":  # the left view of scikit-image's stereo pair
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _too_large(name: str, width: int, height: int, max_pixels: int, what: str) -> str:
    return (f"{what} {name} is {width}×{height} ({width * height / 1e6:.1f} MP), above the limit of "
            f"{max_pixels / 1e6:.1f} MP; downscale it or raise --max-pixels if the memory is there")
