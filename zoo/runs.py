"""Run folders: where training writes them (`run_directory`) and where `zoo export` / `zoo parity` find their
input (a run folder, an export folder or a `.keras` file).

A run folder is written the way every zoo output is (export/atomic.py): staged in a partial folder beside it and
published only when training succeeded, so a failure, Ctrl-C or SIGTERM leaves `out` as it was. It is a zoo output
of kind "run": its manifest lets a later run replace the run's own files (and keep anything else in the folder);
a folder zoo did not write, or one of the run's files changed since, is refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from zoo.errors import ZooError

MODEL_FILE = "model.keras"
RUN = "run"


@contextlib.contextmanager
def run_directory(out: Path, files: tuple[str, ...], *, overwrite: bool = False,
                  sources: Iterable[Path | str] = ()) -> Iterator[Path]:
    """Yield a staging folder beside `out` to write a run into; on success move `files` into `out`. Checked up
    front: `out` may take the run (see the module docstring) and is none of `sources`."""
    from export.atomic import make_parents, make_partial_dir, remove_empty

    out = Path(out).expanduser()
    check_run_target(out, files, overwrite=overwrite, sources=sources)
    created = make_parents(out)
    published = False
    try:
        staging = make_partial_dir(out)
    except OSError as error:
        remove_empty(created)
        raise ZooError(f"cannot write to {out}: {error.strerror or error}; choose another --out") from None
    try:
        yield staging
        publish(staging, out, files)
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not published:
            remove_empty(created)


def check_run_target(out: Path, files: tuple[str, ...], *, overwrite: bool = False,
                     sources: Iterable[Path | str] = ()) -> None:
    """Raise unless a run may be written into `out` (see the module docstring); nothing is created."""
    from export.atomic import check_files_replaceable, check_target, refusal_reason, read_manifest

    check_target(out, kind=RUN, overwrite=True, sources=sources)  # never one of the inputs, even with overwrite
    if os.path.lexists(out) and not overwrite:
        if out.is_symlink() or not out.is_dir():
            raise ZooError(f"--out {out} is a file; a run is a folder: choose another --out or pass --overwrite "
                           f"to replace it")
        manifest = read_manifest(out)
        if manifest is None or manifest.get("kind") != RUN:
            reason = refusal_reason(out, RUN)
            if reason:
                raise ZooError(f"--out {out} is not a zoo run folder ({reason}): choose another --out or pass "
                               f"--overwrite to write the run's files into it")
        check_files_replaceable(out, files)
    if out.is_dir() and not os.access(out, os.W_OK):
        raise ZooError(f"cannot write to {out}: permission denied; choose another --out")


def publish(staging: Path, out: Path, files: tuple[str, ...]) -> None:
    """Move the finished `files` into `out` and record them as zoo's (a fresh `out` is renamed into place in one
    step, its manifest inside)."""
    from export.atomic import entry_of, record_written, write_manifest

    entries = {name: entry_of(staging / name) for name in files}
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        out.unlink()  # a file at `out` (the check allowed it: overwrite)
    if not out.exists():
        write_manifest(staging, {"kind": RUN, "entries": entries})
        staging.rename(out)
        return
    for name in files:
        (staging / name).replace(out / name)
    record_written(out / files[0], entries=entries, kind=RUN)


def plot_curves(history: dict[str, list[float]], path: Path, *, metrics: tuple[str, ...] = ("loss", "accuracy")) -> None:
    """Loss and accuracy per epoch, train and val, side by side. Uses the Agg canvas directly (no pyplot
    state, no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(metrics), 4), layout="constrained")
    epochs = range(1, len(history["loss"]) + 1)
    for axis, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="val")
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.savefig(path, dpi=100)


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """history.csv: one row per epoch (numbered from 0), one column per metric."""
    keys = sorted(history)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", *keys])
        for epoch, values in enumerate(zip(*(history[key] for key in keys))):
            writer.writerow([epoch, *values])


def write_metrics(staging: Path, metrics: dict[str, Any]) -> None:
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


@dataclass(frozen=True)
class Source:
    keras_path: Path
    default_export_dir: Path
    metadata: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # the run's metrics.json ({} for a .keras file)


def resolve_source(src: Path) -> Source:
    """A run directory (model.keras + metrics.json) or any `.keras` file, with the metadata zoo knows about it."""
    src = Path(src).expanduser()
    if src.is_dir():
        keras_path = src / MODEL_FILE
        if not keras_path.is_file():
            raise ZooError(f"{src} has no {MODEL_FILE}; pass a run directory from `zoo train` or a .keras file")
        metrics = _read_metrics(src)
        return Source(keras_path, src / "export", {"source_model": str(keras_path), **_run_metadata(metrics)},
                      metrics)
    if not src.exists():
        raise ZooError(f"{src} does not exist; pass a run directory from `zoo train` or a .keras file")
    if src.suffix != ".keras":
        raise ZooError(f"{src} is not a .keras file; pass a run directory from `zoo train` or a .keras file")
    return Source(src, src.with_name(f"{src.stem}_export"), {"source_model": str(src)})


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    """A zoo run's metrics.json (absent or unreadable: {})."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _run_metadata(metrics: dict[str, Any]) -> dict[str, str]:
    """Class names and provenance from a zoo run's metrics."""
    keys = {"model": "zoo_model", "dataset": "dataset", "test_accuracy": "test_accuracy"}
    meta = {name: str(metrics[key]) for key, name in keys.items() if key in metrics}
    if "class_names" in metrics:
        meta["class_names"] = json.dumps(metrics["class_names"])
    return meta


@contextlib.contextmanager
def resolve_export_dir(src: Path, *, fp16: bool = False, reference: bool = True) -> Iterator[Path]:
    """The export directory to check: SRC itself, SRC/export, or a temporary full export of a `.keras` file
    (with model_fp16.onnx too when `fp16`). `reference=False`: a folder of exported files will do without the
    Keras model too (`zoo bench --baseline ort-cuda` on a folder of ONNX files)."""
    from export.artifacts import ORIGINAL, find_artifacts
    from export.pipeline import export_model, is_export_dir

    def exported(folder: Path) -> bool:
        return is_export_dir(folder) if reference else any(name != ORIGINAL for name in find_artifacts(folder))

    src = Path(src).expanduser()
    for candidate in (src, src / "export"):
        if candidate.is_dir() and exported(candidate):
            yield candidate
            return
    source = resolve_source(src)
    with tempfile.TemporaryDirectory(prefix="zoo-parity-") as tmp:
        directory = Path(tmp) / "export"
        export_model(source.keras_path, directory, fold_bn=True, onnx=True, savedmodel=True, tflite=True,
                     metadata=source.metadata, fp16=fp16)
        yield directory
