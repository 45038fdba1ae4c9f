"""Load any user `.keras` file safely, turning Keras' failures into one actionable line.

Two guards run before Keras sees the file. The archive is inspected from its central directory alone (bounded
time and memory, nothing decompressed): entry count, names (absolute or with `..`), the declared sizes against the
file's own size, and each member's compression ratio. Keras stores its members uncompressed, so a member that
inflates more than MAX_RATIO times is a zip bomb, not a model (Keras' own guard starts only at 4 GiB per member; a
1.1 MB file whose config.json inflated to 1 GiB took 2.85 GB and 39 s to load before this check). Python's zipfile
never returns more than a member's declared size, so the declared sizes checked here bound what is read. Then
Keras loads with safe_mode=True: no Lambda bytecode, only registered layers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from export.errors import ExportError, first_line

MAX_ENTRIES = 10_000
MAX_JSON_BYTES = 64 * 2**20  # config.json / metadata.json; a ResNet152's config is ~1 MB
MAX_RATIO = 100  # uncompressed / stored, for members above RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 2**20
JSON_MEMBERS = ("config.json", "metadata.json")


def load_keras(path: Path | str):
    """The model in `path`, loaded with safe_mode (no arbitrary code); ExportError naming the problem otherwise."""
    import keras

    import export.layers  # noqa: F401 - registers the layers an export may hold (NearestUpsampling2D)

    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"{path} does not exist; pass a .keras file saved with model.save()")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a .keras archive (corrupt or another format); re-save it with model.save()")
    check_archive(path)
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; the user needs the first line of one
        raise ExportError(f"cannot load {path}: {_first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ExportError(f"{path} holds a {type(model).__name__}, not a model")
    return model


def check_archive(path: Path) -> None:
    """Refuse, in one line, a `.keras` archive that is not a plausible Keras 3 model or could exhaust memory."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExportError(f"{path} is a corrupt .keras archive ({exc}); re-save it with model.save()") from None
    refuse = f"{path} is not a safe .keras archive: {{}}; re-save the model with model.save()"
    if len(members) > MAX_ENTRIES:
        raise ExportError(refuse.format(f"it has {len(members)} entries (a model has a handful; limit {MAX_ENTRIES})"))
    names = set()
    for member in members:
        name = member.filename
        if name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts or ":" in name.split("/")[0]:
            raise ExportError(refuse.format(f"entry {name[:80]!r} has an absolute or parent ('..') path"))
        names.add(name)
        if name in JSON_MEMBERS and member.file_size > MAX_JSON_BYTES:
            raise ExportError(refuse.format(f"{name} declares {member.file_size / 2**20:.0f} MiB (limit "
                                            f"{MAX_JSON_BYTES / 2**20:.0f} MiB)"))
        if member.file_size > RATIO_FLOOR_BYTES and member.file_size > MAX_RATIO * max(member.compress_size, 1):
            raise ExportError(refuse.format(
                f"{name} inflates from {member.compress_size:,} to {member.file_size:,} bytes "
                f"({member.file_size / max(member.compress_size, 1):.0f}×; Keras stores members uncompressed), "
                f"which is what a zip bomb looks like"))
    stored = sum(member.compress_size for member in members)
    if stored > path.stat().st_size:
        raise ExportError(refuse.format(f"its entries claim {stored:,} stored bytes but the file has "
                                        f"{path.stat().st_size:,}"))
    if "config.json" not in names:
        raise ExportError(f"{path} has no config.json, so it is not a Keras 3 model; re-save it with model.save()")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    if "Lambda" in text and "safe_mode" in text:
        return "it contains a Python lambda, which safe_mode refuses to load; replace the Lambda layer with a registered layer"
    if "could not be deserialized" in text or "Could not locate" in text:
        return "it uses a custom layer that is not registered; import the module that defines it (@keras.saving.register_keras_serializable)"
    return f"{type(exc).__name__}: {first_line(exc)[:200]}"
