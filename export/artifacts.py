"""Export folders: which artifacts one holds, and the runners that check it. The artifacts (model.keras,
model_folded.keras, saved_model/, model.onnx, …), their runtimes and what writes them are listed once, in
export/runtime_table.py; this module reads that table.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from export.errors import ExportError, first_line
from export.runtime_table import (  # noqa: F401 - the artifact names are re-exported
    ARTIFACTS,
    FOLD_REPORT,
    FOLDED,
    ONNX,
    ONNX_FP16,
    ORIGINAL,
    PARITY_REPORT,
    REFERENCE,
    RUNTIMES,
    SAVEDMODEL,
    TFLITE,
    RunOptions,
    by_name,
    check_device,
    select,
)
from export.runtimes import Runner

FOLDER_MODELS = (ORIGINAL, ONNX, SAVEDMODEL)  # what open_runner runs from a run or export folder, first found


def find_artifacts(export_dir: Path | str) -> dict[str, Path]:
    """{artifact name: path} for each artifact present, keyed by the names above (ORIGINAL, FOLDED, …).
    A `.keras` file instead of a folder counts as the original alone."""
    export_dir = Path(export_dir)
    if export_dir.is_file() and export_dir.suffix == ".keras":
        return {ORIGINAL: export_dir}
    if not export_dir.is_dir():
        raise ExportError(f"{export_dir} is neither an export folder nor a .keras file")
    return {name: export_dir / name for name in ARTIFACTS if (export_dir / name).exists()}


def open_runner(path: Path | str, *, device: str = "auto") -> Runner:
    """A runner for one model file, by kind: `.keras`, `.onnx` (ONNX Runtime on `device`), `.tflite`, a SavedModel
    folder, or a folder holding one of model.keras / model.onnx / saved_model (a run or export folder; the first
    found in that order). The runner names itself (ONNX Runtime: ort-cpu, ort-cuda or ort-tensorrt, by where it
    runs)."""
    path = Path(path).expanduser()
    if path.is_dir() and not any(runtime.recognises(path) for runtime in RUNTIMES):
        for name in FOLDER_MODELS:
            if (path / name).exists():
                return open_runner(path / name, device=device)
        raise ExportError(f"{path} holds no {', '.join(FOLDER_MODELS[:-1])} or {FOLDER_MODELS[-1]}; pass a model "
                          f"file or folder")
    if not path.exists():
        raise ExportError(f"model {path} does not exist")
    runtime = next((runtime for runtime in RUNTIMES if runtime.recognises(path)), None)
    if runtime is None:
        raise ExportError(f"model {path} is not a .keras, .onnx or .tflite file or a SavedModel folder")
    if runtime.device:  # a model file given directly runs on `device` and its runner names itself by where it runs
        return runtime.runner(path, None, check_device(device), RunOptions())
    return runtime.open(path)


def runners_for(export_dir: Path | str, *, device: str = "auto",
                ort_disabled: tuple[str, ...] = ()) -> tuple[Runner, list[Runner], list[str]]:
    """(reference, candidates, notes) for every runtime of the table whose artifact `export_dir` holds.

    device "auto": ORT on CPU, plus ORT on CUDA when it really runs (else a note says why not); "cpu": CPU only;
    "cuda": CPU and CUDA, and an ExportError when CUDA cannot run; "tensorrt": CPU, CUDA and TensorRT, and an
    ExportError when TensorRT cannot run. `ort_disabled` names ORT graph optimizers to
    switch off (see OrtRunner). A candidate whose artifact fails to load
    becomes a runner that fails, so parity shows it as a FAIL row rather than stopping; the reference must load.
    """
    found = find_artifacts(export_dir)
    runtimes, notes = select(found, device)
    if ORIGINAL not in found:
        raise ExportError(f"no {ORIGINAL} in {export_dir}: export the model first (zoo export) or pass a .keras file")
    options = RunOptions(ort_disabled=ort_disabled)
    reference = by_name(REFERENCE).open(found[ORIGINAL], options)
    candidates = [_build(runtime.name, lambda runtime=runtime: runtime.open(found[runtime.artifact], options))
                  for runtime in runtimes if runtime.name != REFERENCE]
    return reference, candidates, notes


class UnavailableRunner:
    """Stands in for a runtime whose artifact could not be loaded: every call fails with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.input_shapes: dict = {}
        self.detail = f"not loaded: {reason}"
        self.reason = reason

    def __call__(self, feeds):
        raise ExportError(self.reason)


def _build(name: str, make: Callable[[], Runner]) -> Runner:
    try:
        return make()
    except ExportError as e:
        return UnavailableRunner(name, first_line(e))
