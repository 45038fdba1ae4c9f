"""`folder:PATH`: one subfolder per class (PATH/<class>/<image>), or PATH/train and PATH/test laid out that way.

Files are only listed and their headers checked here (a non-image names itself now, not mid-training); the
pipeline decodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zoo.data.dataset import ImageDataset, Split, carve_val, split_pool
from zoo.errors import ZooError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_DEFAULT_IMAGE_SIZE = 224  # photos are not trained at full resolution unless --image-size asks for it
DEFAULT_EPOCHS = 10


def load_folder(path: str, *, seed: int) -> ImageDataset:
    source = f"folder:{path}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ZooError(f"{source}: no such directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_names, train = _scan(root / "train", source=source)
        _, test = _scan(root / "test", source=source, class_names=class_names)
        train, val = carve_val(train, seed, source=source)
    else:
        class_names, everything = _scan(root, source=source)
        train, val, test = split_pool(everything, seed, source=source)
    modes, sizes = zip(*(_header(p, source) for split in (train, val, test) for p in split.x))
    return ImageDataset(
        name=source,
        class_names=class_names,
        channels=1 if set(modes) <= GRAY_MODES else 3,
        default_image_size=min(max(sizes[0]), MAX_DEFAULT_IMAGE_SIZE),
        default_epochs=DEFAULT_EPOCHS,
        train=train,
        val=val,
        test=test,
    )


def _scan(directory: Path, *, source: str, class_names: list[str] | None = None) -> tuple[list[str], Split]:
    """(class names, Split of file paths). Classes are the subfolders holding images, sorted by name; with
    `class_names` given (a test folder), labels follow that list and an unknown class is an error."""
    found = {
        sub.name: sorted(str(p) for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for sub in sorted(directory.iterdir())
        if sub.is_dir()
    }
    found = {name: files for name, files in found.items() if files}
    if not found:
        raise ZooError(
            f"{source}: no class folders with images ({', '.join(IMAGE_SUFFIXES)}) in {directory}; "
            f"expected {directory}/<class>/<image>"
        )
    if class_names is None:
        class_names = sorted(found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ZooError(f"{source}: {directory} has classes not in train/: {', '.join(unknown)}")
    paths = [p for name in found for p in found[name]]
    labels = [class_names.index(name) for name in found for _ in found[name]]
    return class_names, Split(np.array(paths), np.array(labels, dtype=np.int64))


def _header(path: str, source: str) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except OSError as error:  # PIL's UnidentifiedImageError included
        raise ZooError(f"{source}: {path} is not a readable image ({error})") from None
