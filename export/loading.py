"""Load any user `.keras` file safely (safe_mode=True), turning Keras' failures into one actionable line."""

from __future__ import annotations

import zipfile
from pathlib import Path

from export.errors import ExportError, first_line


def load_keras(path: Path | str):
    """The model in `path`, loaded with safe_mode (no arbitrary code); ExportError naming the problem otherwise."""
    import keras

    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"{path} does not exist; pass a .keras file saved with model.save()")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a .keras archive (corrupt or another format); re-save it with model.save()")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{path} is a corrupt .keras archive ({exc}); re-save it with model.save()") from None
    if "config.json" not in names:
        raise ExportError(f"{path} has no config.json, so it is not a Keras 3 model; re-save it with model.save()")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; the user needs the first line of one
        raise ExportError(f"cannot load {path}: {_first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ExportError(f"{path} holds a {type(model).__name__}, not a model")
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    if "Lambda" in text and "safe_mode" in text:
        return "it contains a Python lambda, which safe_mode refuses to load; replace the Lambda layer with a registered layer"
    if "could not be deserialized" in text or "Could not locate" in text:
        return "it uses a custom layer that is not registered; import the module that defines it (@keras.saving.register_keras_serializable)"
    return f"{type(exc).__name__}: {first_line(exc)[:200]}"
