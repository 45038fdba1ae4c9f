"""Where `zoo export` / `zoo parity` find their input: a run directory, an export directory or a `.keras` file."""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from zoo.errors import ZooError

MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class Source:
    keras_path: Path
    default_export_dir: Path
    metadata: dict[str, str] = field(default_factory=dict)


def resolve_source(src: Path) -> Source:
    """A run directory (model.keras + metrics.json) or any `.keras` file, with the metadata zoo knows about it."""
    src = Path(src).expanduser()
    if src.is_dir():
        keras_path = src / MODEL_FILE
        if not keras_path.is_file():
            raise ZooError(f"{src} has no {MODEL_FILE}; pass a run directory from `zoo train` or a .keras file")
        return Source(keras_path, src / "export", {"source_model": str(keras_path), **_run_metadata(src)})
    if not src.exists():
        raise ZooError(f"{src} does not exist; pass a run directory from `zoo train` or a .keras file")
    if src.suffix != ".keras":
        raise ZooError(f"{src} is not a .keras file; pass a run directory from `zoo train` or a .keras file")
    return Source(src, src.with_name(f"{src.stem}_export"), {"source_model": str(src)})


def _run_metadata(run_dir: Path) -> dict[str, str]:
    """Class names and provenance from a zoo run's metrics.json (absent or unreadable: nothing)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = {"model": "zoo_model", "dataset": "dataset", "test_accuracy": "test_accuracy"}
    meta = {name: str(metrics[key]) for key, name in keys.items() if key in metrics}
    if "class_names" in metrics:
        meta["class_names"] = json.dumps(metrics["class_names"])
    return meta


@contextlib.contextmanager
def resolve_export_dir(src: Path, *, fp16: bool = False) -> Iterator[Path]:
    """The export directory to check: SRC itself, SRC/export, or a temporary full export of a `.keras` file
    (with model_fp16.onnx too when `fp16`)."""
    from export.pipeline import export_model, is_export_dir

    src = Path(src).expanduser()
    for candidate in (src, src / "export"):
        if candidate.is_dir() and is_export_dir(candidate):
            yield candidate
            return
    source = resolve_source(src)
    with tempfile.TemporaryDirectory(prefix="zoo-parity-") as tmp:
        directory = Path(tmp) / "export"
        export_model(source.keras_path, directory, fold_bn=True, onnx=True, savedmodel=True, tflite=True,
                     metadata=source.metadata, fp16=fp16)
        yield directory
