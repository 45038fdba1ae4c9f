"""The layout of an export directory and the runners that can check it.

    model.keras          copy of the original model: the parity reference
    model_folded.keras   BatchNorm folded (export/fold_bn.py)
    saved_model/         SavedModel, signature serving_default
    model.onnx           ONNX
    model_fp16.onnx      ONNX with float16 weights and compute, float32 inputs/outputs (export/fp16.py)
    model.tflite         TFLite
    fold_report.json     what folding did
    parity.json          the last parity report
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from export.errors import ExportError, first_line
from export.runtimes import (
    KerasRunner,
    OrtRunner,
    Runner,
    SavedModelRunner,
    TFLiteRunner,
    cuda_unavailable_reason,
)

ORIGINAL = "model.keras"
FOLDED = "model_folded.keras"
SAVEDMODEL = "saved_model"
ONNX = "model.onnx"
ONNX_FP16 = "model_fp16.onnx"
TFLITE = "model.tflite"
FOLD_REPORT = "fold_report.json"
PARITY_REPORT = "parity.json"

ARTIFACTS = (ORIGINAL, FOLDED, SAVEDMODEL, ONNX, ONNX_FP16, TFLITE)


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
    found in that order)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SavedModelRunner(path)
        for name in (ORIGINAL, ONNX, SAVEDMODEL):
            if (path / name).exists():
                return open_runner(path / name, device=device)
        raise ExportError(f"{path} holds no model.keras, model.onnx or saved_model; pass a model file or folder")
    if not path.exists():
        raise ExportError(f"model {path} does not exist")
    if path.suffix == ".keras":
        return KerasRunner(path)
    if path.suffix == ".onnx":
        return OrtRunner(path, device=device)
    if path.suffix == ".tflite":
        return TFLiteRunner(path)
    raise ExportError(f"model {path} is not a .keras, .onnx or .tflite file or a SavedModel folder")


def runners_for(export_dir: Path | str, *, device: str = "auto",
                ort_disabled: tuple[str, ...] = ()) -> tuple[Runner, list[Runner], list[str]]:
    """(reference, candidates, notes) for every artifact in `export_dir`.

    device "auto": ORT on CPU, plus ORT on CUDA when it really runs (else a note says why not); "cpu": CPU only;
    "cuda": CPU and CUDA, and an ExportError when CUDA cannot run. `ort_disabled` names ORT graph optimizers to
    switch off (see OrtRunner). A candidate whose artifact fails to load
    becomes a runner that fails, so parity shows it as a FAIL row rather than stopping; the reference must load.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ExportError(f"unknown device {device!r}: use auto, cpu or cuda")
    found = find_artifacts(export_dir)
    if ORIGINAL not in found:
        raise ExportError(f"no {ORIGINAL} in {export_dir}: export the model first (zoo export) or pass a .keras file")
    reference = KerasRunner(found[ORIGINAL], name="keras")
    makers: dict[str, Callable[[], Runner]] = {}
    notes = []
    if FOLDED in found:
        makers["keras-folded"] = lambda: KerasRunner(found[FOLDED], name="keras-folded")
    if SAVEDMODEL in found:
        makers["savedmodel"] = lambda: SavedModelRunner(found[SAVEDMODEL])
    if ONNX in found:
        makers["ort-cpu"] = lambda: OrtRunner(found[ONNX], device="cpu", name="ort-cpu",
                                              disabled_optimizers=ort_disabled)
        reason = "not requested (device=cpu)" if device == "cpu" else cuda_unavailable_reason()
        if reason is None:
            makers["ort-cuda"] = lambda: OrtRunner(found[ONNX], device="cuda", name="ort-cuda",
                                                   disabled_optimizers=ort_disabled)
        elif device == "cuda":
            raise ExportError(f"CUDA execution provider is not usable here: {reason}")
        else:
            notes.append(f"ort-cuda skipped: {reason}")
    if ONNX_FP16 in found:  # parity compares it at float16 tolerances (its runner's precision is "float16")
        makers["ort-cpu-fp16"] = lambda: OrtRunner(found[ONNX_FP16], device="cpu", name="ort-cpu-fp16",
                                                   disabled_optimizers=ort_disabled)
        if device != "cpu" and cuda_unavailable_reason() is None:
            makers["ort-cuda-fp16"] = lambda: OrtRunner(found[ONNX_FP16], device="cuda", name="ort-cuda-fp16",
                                                        disabled_optimizers=ort_disabled)
    if TFLITE in found:
        makers["tflite"] = lambda: TFLiteRunner(found[TFLITE])
    return reference, [_build(name, make) for name, make in makers.items()], notes


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
