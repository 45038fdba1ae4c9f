"""The one table of zoo's runtimes. Each entry says what one runtime runs (its artifact: a file or folder of an
export directory), what writes that artifact, how to open a runner on it, where it runs and how parity judges it.
Export (what to write, in table order), parity (what to compare), bench (what to time, `--runtimes`) and export
folder discovery all read this table; no other module lists runtimes or artifact names.

    keras          model.keras          the original model, copied: the parity reference and bench baseline
    keras-folded   model_folded.keras   after BN folding (--fold-bn); later writers export the folded model
    savedmodel     saved_model/         (--savedmodel)
    ort-cpu        model.onnx           ONNX Runtime on the CPU (--onnx)
    ort-cuda       model.onnx           ONNX Runtime on CUDA, when it really runs there
    ort-cpu-fp16   model_fp16.onnx      float16 weights and compute (--fp16, made from model.onnx), parity at 1e-3
    ort-cuda-fp16  model_fp16.onnx
    ort-tensorrt   model.onnx           ONNX Runtime's TensorRT provider; only with device "tensorrt" (engine builds
    ort-tensorrt-fp16 model_fp16.onnx   take minutes, so nothing chooses TensorRT unless asked)
    ort-cpu-int8   model_int8.onnx      int8 QDQ, calibrated and accuracy-gated (--int8, made from model.onnx after
                                        folding; export/int8.py), parity relative to the output's scale
    tflite         model.tflite         (--tflite)
    tflite-int8    model_int8.tflite    full-integer TFLite, same calibration images (--int8 with --tflite)

Adding a runtime (e.g. int8: `model_int8.onnx`, runtime `ort-cpu-int8`):
1. write its writer, `write(ctx: ExportContext) -> report or None`, in its own module (e.g. export/int8.py reading
   ctx.dir / ONNX, writing ctx.dir / "model_int8.onnx"; a report with `summary()` is printed by `zoo export`), and
   a runner factory if no existing one fits (`_ort` does for any .onnx);
2. add one `Runtime(...)` entry to RUNTIMES, after what it is made from: name, artifact, runner, device, option
   (the `export_model` keyword and `zoo export` flag that write it), writer, needs, precision (a new precision
   gets its parity tolerance in export/parity.py's precision_tolerance);
3. give `zoo export` the flag (zoo/cli/export.py passes it to `export_model` by its option name).
Parity, `zoo bench --runtimes`, run/export folder discovery and the "make it with" hints follow from the entry.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import ExportError

if TYPE_CHECKING:
    from export.runtimes import Runner

ORIGINAL = "model.keras"
FOLDED = "model_folded.keras"
SAVEDMODEL = "saved_model"
ONNX = "model.onnx"
ONNX_FP16 = "model_fp16.onnx"
ONNX_INT8 = "model_int8.onnx"
TFLITE_INT8 = "model_int8.tflite"
TFLITE = "model.tflite"
FOLD_REPORT = "fold_report.json"
PARITY_REPORT = "parity.json"
REFERENCE = "keras"  # the runtime every other one is compared with (parity) and timed against (bench)


@dataclass(frozen=True)
class RunOptions:
    """How runners are opened; each runner takes what applies to it (ONNX Runtime: all of it)."""

    ort_disabled: tuple[str, ...] = ()  # ORT graph optimizers switched off by name (see OrtRunner)
    io_binding: bool = False
    allow_spinning: bool = True  # False for timing: sessions taking turns must not spin on idle cores


@dataclass
class ExportContext:
    """What writers share while one export is staged: the staging folder, the model later writers export (folding
    replaces it), the ONNX metadata and the `export_model` options writers read."""

    dir: Path
    model: Any
    metadata: dict[str, str]
    opset: int = 17
    nchw: bool = False
    onnx_external_data: bool | None = None
    int8: Any = None  # export.int8.Int8Settings, with --int8


RunnerFactory = Callable[..., "Runner"]  # (path, name, device, options) -> Runner
Writer = Callable[[ExportContext], Any]  # writes ctx.dir / artifact; returns a report (with summary()) or None


@dataclass(frozen=True)
class Runtime:
    name: str  # in parity and bench tables and `zoo bench --runtimes`
    artifact: str  # file or folder name in an export directory
    runner: RunnerFactory
    device: str | None = None  # "cpu" / "cuda" / "tensorrt" for ONNX Runtime; None: the framework places it itself
    option: str | None = None  # `export_model` keyword (and `zoo export --flag`) that writes it; None: always
    writer: Writer | None = None
    needs: str | None = None  # the option whose artifact the writer converts (fp16: onnx)
    precision: str = "float32"  # what parity's tolerance follows (export/parity.py precision_tolerance)
    marker: str | None = None  # a folder artifact is recognised by this file inside it
    libraries: tuple[str, ...] = ()  # what bench imports before timing, so no cold start pays for an import

    @property
    def flag(self) -> str | None:
        return None if self.option is None else "--" + self.option.replace("_", "-")

    def open(self, path: Path | str, options: RunOptions = RunOptions()) -> Runner:
        """A runner on `path`, named after this runtime, on its device; its `precision` is the table's unless the
        file says (ONNX metadata)."""
        runner = self.runner(Path(path), self.name, self.device, options)
        if getattr(runner, "precision", None) is None:
            runner.precision = self.precision
        return runner

    def recognises(self, path: Path) -> bool:
        """Whether `path`, under any name, is a model this runtime runs (same suffix, or a folder with the marker)."""
        if self.marker:
            return path.is_dir() and (path / self.marker).is_file()
        return path.suffix == Path(self.artifact).suffix and not path.is_dir()

    def preload(self) -> None:
        """Import this runtime's libraries ("tflite": the TFLite interpreter, ai-edge-litert or TensorFlow's)."""
        for library in self.libraries:
            if library == "tflite":
                from export.runtimes import _tflite_interpreter

                _tflite_interpreter()
            else:
                importlib.import_module(library)

    def how_to_get(self) -> str:
        """The `zoo export` command line that writes this runtime's artifact."""
        flags = [by_option(self.needs).flag] if self.needs else []
        return " ".join(["zoo export", *flags, *([self.flag] if self.flag else [])])


def _keras(path, name, device, options):
    from export.runtimes import KerasRunner

    return KerasRunner(path, name=name or "keras")


def _savedmodel(path, name, device, options):
    from export.runtimes import SavedModelRunner

    return SavedModelRunner(path, name=name or "savedmodel")


def _ort(path, name, device, options):
    from export.runtimes import OrtRunner

    return OrtRunner(path, device=device or "auto", name=name, disabled_optimizers=options.ort_disabled,
                     io_binding=options.io_binding, allow_spinning=options.allow_spinning)


def _tflite(path, name, device, options):
    from export.runtimes import TFLiteRunner

    return TFLiteRunner(path, name=name or "tflite")


def _write_folded(ctx: ExportContext):
    from export.fold_bn import fold_batchnorm

    ctx.model, report = fold_batchnorm(ctx.model)
    ctx.model.save(ctx.dir / FOLDED)
    (ctx.dir / FOLD_REPORT).write_text(report.to_json())
    ctx.metadata["fold_report"] = report.summary()
    return report


def _write_savedmodel(ctx: ExportContext) -> None:
    from export.savedmodel import export_savedmodel

    export_savedmodel(ctx.model, ctx.dir / SAVEDMODEL)


def _write_onnx(ctx: ExportContext) -> None:
    from export.onnx import export_onnx

    export_onnx(ctx.model, ctx.dir / ONNX, opset=ctx.opset, nchw=ctx.nchw, metadata=ctx.metadata,
                external_data=ctx.onnx_external_data)


def _write_fp16(ctx: ExportContext):
    from export.fp16 import convert_fp16
    from export.onnx import EXTERNAL_DATA_SUFFIX

    if (ctx.dir / (ONNX + EXTERNAL_DATA_SUFFIX)).exists():
        raise ExportError("--fp16 is not supported for models whose ONNX weights need external data (> 1.5 GiB)")
    return convert_fp16(ctx.dir / ONNX, ctx.dir / ONNX_FP16)


def _write_int8(ctx: ExportContext):
    from export.int8 import REPORT, SAMPLE, quantize, write_sample
    from export.onnx import EXTERNAL_DATA_SUFFIX

    if ctx.int8 is None:
        raise ExportError("--int8 needs calibration images (export_model's int8= settings)")
    if (ctx.dir / (ONNX + EXTERNAL_DATA_SUFFIX)).exists():
        raise ExportError("--int8 is not supported for models whose ONNX weights need external data (> 1.5 GiB)")
    report = quantize(ctx.dir / ONNX, ctx.dir / ONNX_INT8, ctx.model, ctx.int8)
    (ctx.dir / REPORT).write_text(report.to_json())
    write_sample(ctx.dir / SAMPLE, ctx.int8)
    return report


def _write_tflite_int8(ctx: ExportContext) -> None:
    from export.int8 import REPORT, check_gate
    from export.tflite import export_tflite

    saved_model = ctx.dir / SAVEDMODEL
    export_tflite(ctx.model, ctx.dir / TFLITE_INT8, saved_model=saved_model if saved_model.is_dir() else None,
                  representative=ctx.int8.calibration[:256])
    gate = check_gate(ctx.dir / ONNX, ctx.dir / TFLITE_INT8, ctx.int8)  # the same gate as model_int8.onnx
    if not gate["passed"]:
        raise ExportError(f"model_int8.tflite fails its accuracy gate: {gate['reason']}; nothing was written")
    report = json.loads((ctx.dir / REPORT).read_text())
    report["tflite_gate"] = gate
    (ctx.dir / REPORT).write_text(json.dumps(report, indent=2))


def _write_tflite(ctx: ExportContext) -> None:
    from export.tflite import export_tflite

    saved_model = ctx.dir / SAVEDMODEL  # converted from the SavedModel when --savedmodel wrote one already
    export_tflite(ctx.model, ctx.dir / TFLITE, saved_model=saved_model if saved_model.is_dir() else None)


_ONNX = {"artifact": ONNX, "runner": _ort, "option": "onnx", "writer": _write_onnx, "libraries": ("onnxruntime",)}
_ONNX_FP16 = {"artifact": ONNX_FP16, "runner": _ort, "option": "fp16", "writer": _write_fp16, "needs": "onnx",
              "precision": "float16", "libraries": ("onnxruntime",)}

RUNTIMES: tuple[Runtime, ...] = (
    Runtime(REFERENCE, ORIGINAL, _keras, libraries=("keras",)),
    Runtime("keras-folded", FOLDED, _keras, option="fold_bn", writer=_write_folded, libraries=("keras",)),
    Runtime("savedmodel", SAVEDMODEL, _savedmodel, option="savedmodel", writer=_write_savedmodel,
            marker="saved_model.pb", libraries=("tensorflow",)),
    Runtime("ort-cpu", device="cpu", **_ONNX),
    Runtime("ort-cuda", device="cuda", **_ONNX),
    Runtime("ort-cpu-fp16", device="cpu", **_ONNX_FP16),
    Runtime("ort-cuda-fp16", device="cuda", **_ONNX_FP16),
    Runtime("ort-tensorrt", device="tensorrt", **_ONNX),
    Runtime("ort-tensorrt-fp16", device="tensorrt", **_ONNX_FP16),
    Runtime("ort-cpu-int8", ONNX_INT8, _ort, device="cpu", option="int8", writer=_write_int8, needs="onnx",
            precision="int8", libraries=("onnxruntime",)),
    Runtime("tflite", TFLITE, _tflite, option="tflite", writer=_write_tflite, libraries=("tflite",)),
    # written by --int8 only when --tflite is asked for too (a second writer of one option needs its `needs`)
    Runtime("tflite-int8", TFLITE_INT8, _tflite, option="int8", writer=_write_tflite_int8, needs="tflite",
            precision="int8", libraries=("tflite",)),
)
NAMES = tuple(runtime.name for runtime in RUNTIMES)
ARTIFACTS = tuple(dict.fromkeys(runtime.artifact for runtime in RUNTIMES))
RENAMED = {"onnx": "ort-cpu or ort-cuda", "onnx-fp16": "ort-cpu-fp16 or ort-cuda-fp16"}  # zoo bench's old names


def by_name(name: str) -> Runtime:
    for runtime in RUNTIMES:
        if runtime.name == name:
            return runtime
    hint = f" (now called {RENAMED[name]})" if name in RENAMED else ""
    raise ExportError(f"unknown runtime {name!r}{hint}: choose from {', '.join(NAMES)}")


def by_option(option: str) -> Runtime:
    """The first runtime whose artifact `option` writes (e.g. "onnx" -> ort-cpu)."""
    return next(runtime for runtime in RUNTIMES if runtime.option == option)


def writers() -> list[Runtime]:
    """One runtime per written artifact, in the order they must be written."""
    first = {}
    for runtime in RUNTIMES:
        if runtime.writer is not None:
            first.setdefault(runtime.artifact, runtime)
    return list(first.values())


def to_write(options: Iterable[str]) -> list[Runtime]:
    """The writers for the requested `options`, in order. An option's first writer requires its `needs` (an
    ExportError naming the flag to add); a further writer of the same option (tflite-int8) runs only when its
    `needs` was asked for too."""
    asked = set(options)
    chosen = []
    for runtime in writers():
        if runtime.option not in asked:
            continue
        primary = by_option(runtime.option) is runtime
        if runtime.needs and runtime.needs not in asked:
            if primary:
                needed = by_option(runtime.needs)
                raise ExportError(f"{runtime.flag} converts {needed.artifact}: add {needed.flag}")
            continue
        chosen.append(runtime)
    return chosen


def check_device(device: str) -> str:
    """The one device check (auto, cpu, cuda or tensorrt): an unknown device is an ExportError, and so is "cuda"
    where ONNX Runtime cannot really run on CUDA, and "tensorrt" where it cannot run on TensorRT. Returns `device`."""
    from export.ort_session import check_device_name, cuda_unavailable_reason, tensorrt_unavailable_reason

    check_device_name(device)
    if device == "cuda" and (reason := cuda_unavailable_reason()):
        raise ExportError(f"CUDA execution provider is not usable here: {reason}")
    if device == "tensorrt" and (reason := tensorrt_unavailable_reason()):
        raise ExportError(f"TensorRT execution provider is not usable here: {reason}")
    return device


def requested(runtime: Runtime, device: str) -> bool:
    """Whether `device` asks for `runtime` at all: the TensorRT runtimes only with device "tensorrt" (their
    engines take minutes to build; choosing them is never a side effect), every other one always."""
    return runtime.device != "tensorrt" or device == "tensorrt"


def runs_on(runtime: Runtime, device: str) -> str | None:
    """None when `runtime` runs for the requested `device` (auto: CPU, plus CUDA when it really runs; cpu: CPU
    only; cuda: CPU and CUDA; tensorrt: CPU, CUDA and TensorRT), else why not."""
    from export.ort_session import cuda_unavailable_reason, tensorrt_unavailable_reason

    if runtime.device == "tensorrt":
        return tensorrt_unavailable_reason() if device == "tensorrt" else f"needs --device tensorrt, not {device}"
    if runtime.device != "cuda":
        return None
    if device == "cpu":
        return "not requested (device=cpu)"
    return cuda_unavailable_reason()


def select(present: Iterable[str], device: str) -> tuple[list[Runtime], list[str]]:
    """(runtimes to run, notes) for an export folder holding the artifacts `present`, on `device` (checked)."""
    check_device(device)
    present = set(present)
    chosen, skipped = [], {}
    for runtime in RUNTIMES:
        if runtime.artifact not in present or not requested(runtime, device):
            continue
        reason = runs_on(runtime, device)
        if reason is None:
            chosen.append(runtime)
        else:
            skipped.setdefault(reason, []).append(runtime.name)
    return chosen, [f"{', '.join(names)} skipped: {reason}" for reason, names in skipped.items()]


def parity_tolerances(names: Iterable[str], atol: float, rtol: float) -> dict[str, tuple[float, float]]:
    """{runtime: (atol, rtol)} for the runtimes among `names` whose precision parity judges more loosely."""
    from export.parity import precision_tolerance

    precisions = {runtime.name: runtime.precision for runtime in RUNTIMES}
    chosen = {name: precision_tolerance(precisions[name], atol, rtol) for name in names if name in precisions}
    return {name: tolerance for name, tolerance in chosen.items() if tolerance != (atol, rtol)}
