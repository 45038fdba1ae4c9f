"""One export run: load a `.keras`, fold BN, write every requested format into one directory, check parity.

The export directory is written atomically as a whole (complete, or the previous one untouched), and replaces only
an earlier export (export/atomic.py: zoo's manifest, `.zoo-manifest.json`, says what zoo wrote):

    model.keras          the original model (the parity reference)
    model_folded.keras   after BN folding (--fold-bn)
    fold_report.json     what was folded and what was kept, with reasons (--fold-bn)
    saved_model/         SavedModel with a `serving_default` signature
    model.onnx           ONNX, dynamic batch (and H×W for fully convolutional models)
    model.onnx.data      the ONNX weights, for models too large for one protobuf (> 1.5 GiB of weights)
    model_fp16.onnx      model.onnx converted to float16 weights and compute, float32 inputs/outputs (--fp16)
    model_int8.onnx      model.onnx quantized to int8 (QDQ), calibrated and gated (--int8; int8_report.json)
    model.tflite         TFLite
    model_int8.tflite    full-integer TFLite, same calibration and gate (--int8 with --tflite)

What each option writes, and in which order, is the runtime table's (export/runtime_table.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.artifacts import ORIGINAL, find_artifacts
from export.atomic import MANIFEST, atomic_output, check_target
from export.errors import ExportError
from export.loading import load_keras
from export.runtime_table import ARTIFACTS, ExportContext, to_write, writers
from export.version import zoo_version

EXPORT = "export"  # the kind of folder in zoo's manifest


@dataclass
class ExportResult:
    directory: Path
    written: list[Path] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)  # option -> what its writer reported (has summary())

    @property
    def fold_report(self):  # export.fold_bn.FoldReport, with fold_bn
        return self.reports.get("fold_bn")

    @property
    def fp16_report(self):  # export.fp16.Fp16Report, with fp16
        return self.reports.get("fp16")


def export_model(
    src: Path | str,
    out_dir: Path | str,
    *,
    fold_bn: bool = True,
    onnx: bool = True,
    savedmodel: bool = True,
    tflite: bool = False,
    opset: int = 17,
    nchw: bool = False,
    metadata: dict[str, str] | None = None,
    onnx_external_data: bool | None = None,
    parity_sizes: list[tuple[int, int]] | None = None,
    fp16: bool = False,
    overwrite: bool = False,
    int8_settings: Any = None,
    **formats: bool,
) -> ExportResult:
    """Export the `.keras` model at `src` into `out_dir` (created, or an earlier export replaced, atomically).

    `fold_bn`, `onnx`, `savedmodel`, `tflite`, `fp16` and `formats` (any other option of the runtime table,
    export/runtime_table.py): which artifacts to write; they are written in table order.
    `onnx_external_data`: write the ONNX weights to model.onnx.data (None: only for models near protobuf's 2 GiB).
    `parity_sizes`: the image sizes parity will run at, checked against the model before anything is written.
    `fp16`: also write model_fp16.onnx, converted from model.onnx (after folding, so the fold is done in float32).
    `overwrite`: replace whatever is at `out_dir`, even if zoo did not write it (never `src` itself).
    `int8_settings` (export.int8.Int8Settings): calibration and gate data for `int8=True` (model_int8.onnx)."""
    requested = {"fold_bn": fold_bn, "savedmodel": savedmodel, "onnx": onnx, "fp16": fp16, "tflite": tflite,
                 **formats}
    unknown = [option for option in requested if option not in {r.option for r in writers()}]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}")
    writing = to_write(option for option, on in requested.items() if on)
    src, out_dir = Path(src), Path(out_dir).expanduser()
    destination = {"kind": EXPORT, "overwrite": overwrite, "sources": [src]}
    check_target(out_dir, **destination)  # before the model loads
    model = load_keras(src)
    if parity_sizes is not None:
        from export.parity import standard_input_sets
        from export.signature import describe

        standard_input_sets(describe(model).inputs, sizes=parity_sizes)  # raises for a fixed-size model
    result = ExportResult(out_dir)
    with atomic_output(out_dir, **destination) as tmp:
        tmp.mkdir()
        shutil.copyfile(src, tmp / ORIGINAL)
        context = ExportContext(tmp, model, {"zoo_version": zoo_version(), "source_model": str(src),
                                             **(metadata or {})}, opset=opset, nchw=nchw,
                                onnx_external_data=onnx_external_data, int8=int8_settings)
        for runtime in writing:
            report = runtime.writer(context)
            if report is not None:
                result.reports[runtime.option] = report
        result.written = [out_dir / p.name for p in sorted(tmp.iterdir()) if p.name != MANIFEST]
    return result


def is_export_dir(directory: Path) -> bool:
    """Whether `directory` holds an export (a reference model and at least one exported format)."""
    found = find_artifacts(directory)
    return ORIGINAL in found and any(name in found for name in ARTIFACTS if name != ORIGINAL)


def check_parity(directory: Path | str, *, device: str = "auto", atol: float = 1e-5, rtol: float = 1e-5,
                 batches: tuple[int, ...] = (1, 7), seed: int = 0, sizes: list[tuple[int, int]] | None = None,
                 ort_disabled: tuple[str, ...] = ()):
    """Run every runtime found in an export directory against the original Keras model (see export/parity.py).
    An int8 model runs on the held-out images its export kept (export/int8.py), every other runtime on parity's
    seeded inputs."""
    from export.artifacts import runners_for
    from export.parity import run_parity
    from export.runtime_table import parity_tolerances

    reference, candidates, notes = runners_for(Path(directory), device=device, ort_disabled=ort_disabled)
    plan = parity_plan(Path(directory), reference, candidates, batches=batches, seed=seed, sizes=sizes)
    parts = [run_parity(reference, runners, input_sets, atol=atol, rtol=rtol, notes=[*notes, *extra],
                        tolerances=parity_tolerances([runner.name for runner in runners], atol, rtol))
             for runners, input_sets, extra in plan]
    for part in parts[1:]:
        parts[0].extend(part)
    return parts[0]


def parity_plan(directory: Path, reference, candidates, *, batches: tuple[int, ...] = (1, 7), seed: int = 0,
                sizes: list[tuple[int, int]] | None = None) -> list[tuple[list, list, list[str]]]:
    """[(runners, input sets, notes)]: parity's seeded inputs for every runtime but int8, and for int8 the held-out
    images its export kept (falling back to the seeded inputs, with a note, when there are none)."""
    from export.int8 import gate_note, sample_input_set
    from export.parity import standard_input_sets

    input_sets = standard_input_sets(reference.signature.inputs, batches=batches, seed=seed, sizes=sizes)
    quantized = [r for r in candidates if getattr(r, "precision", None) == "int8"]
    plan = [([r for r in candidates if r not in quantized], input_sets, [])]
    if quantized:
        sample = sample_input_set(directory, reference.signature.input_names[0])
        note = gate_note(directory)
        if sample is None:
            plan.append((quantized, input_sets, ["ort-cpu-int8 on parity's synthetic inputs: the export kept no "
                                                 "held-out images (int8_sample.npz)"]))
        else:
            plan.append((quantized, [sample], [note] if note else []))
    return plan
