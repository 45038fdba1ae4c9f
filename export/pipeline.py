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
    model.tflite         TFLite
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from export.artifacts import FOLD_REPORT, FOLDED, ONNX, ONNX_FP16, ORIGINAL, SAVEDMODEL, TFLITE, find_artifacts
from export.atomic import MANIFEST, atomic_output, check_target
from export.errors import ExportError
from export.fold_bn import FoldReport, fold_batchnorm
from export.fp16 import Fp16Report
from export.loading import load_keras
from export.version import zoo_version

EXPORT = "export"  # the kind of folder in zoo's manifest


@dataclass
class ExportResult:
    directory: Path
    written: list[Path] = field(default_factory=list)
    fold_report: FoldReport | None = None
    fp16_report: Fp16Report | None = None


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
) -> ExportResult:
    """Export the `.keras` model at `src` into `out_dir` (created, or an earlier export replaced, atomically).

    `onnx_external_data`: write the ONNX weights to model.onnx.data (None: only for models near protobuf's 2 GiB).
    `parity_sizes`: the image sizes parity will run at, checked against the model before anything is written.
    `fp16`: also write model_fp16.onnx, converted from model.onnx (after folding, so the fold is done in float32).
    `overwrite`: replace whatever is at `out_dir`, even if zoo did not write it (never `src` itself)."""
    from export.fp16 import convert_fp16
    from export.onnx import EXTERNAL_DATA_SUFFIX, export_onnx
    from export.savedmodel import export_savedmodel
    from export.tflite import export_tflite

    if fp16 and not onnx:
        raise ExportError("--fp16 converts the ONNX model: add --onnx")
    src, out_dir = Path(src), Path(out_dir).expanduser()
    destination = {"kind": EXPORT, "overwrite": overwrite, "sources": [src]}
    check_target(out_dir, **destination)  # before the model loads
    model = load_keras(src)
    if parity_sizes is not None:
        from export.parity import standard_input_sets
        from export.signature import describe

        standard_input_sets(describe(model).inputs, sizes=parity_sizes)  # raises for a fixed-size model
    result = ExportResult(out_dir)
    meta = {"zoo_version": zoo_version(), "source_model": str(src), **(metadata or {})}
    with atomic_output(out_dir, **destination) as tmp:
        tmp.mkdir()
        shutil.copyfile(src, tmp / ORIGINAL)
        target = model
        if fold_bn:
            target, result.fold_report = fold_batchnorm(model)
            target.save(tmp / FOLDED)
            (tmp / FOLD_REPORT).write_text(result.fold_report.to_json())
            meta["fold_report"] = result.fold_report.summary()
        if savedmodel or tflite:
            export_savedmodel(target, tmp / SAVEDMODEL)
        if onnx:
            export_onnx(target, tmp / ONNX, opset=opset, nchw=nchw, metadata=meta, external_data=onnx_external_data)
        if fp16:
            if (tmp / (ONNX + EXTERNAL_DATA_SUFFIX)).exists():
                raise ExportError("--fp16 is not supported for models whose ONNX weights need external data (> 1.5 GiB)")
            result.fp16_report = convert_fp16(tmp / ONNX, tmp / ONNX_FP16)
        if tflite:
            export_tflite(target, tmp / TFLITE, saved_model=tmp / SAVEDMODEL)
        if not savedmodel:
            shutil.rmtree(tmp / SAVEDMODEL, ignore_errors=True)
        result.written = [out_dir / p.name for p in sorted(tmp.iterdir()) if p.name != MANIFEST]
    return result


def is_export_dir(directory: Path) -> bool:
    """Whether `directory` holds an export (a reference model and at least one exported format)."""
    found = find_artifacts(directory)
    return ORIGINAL in found and any(k in found for k in (FOLDED, SAVEDMODEL, ONNX, ONNX_FP16, TFLITE))


def check_parity(directory: Path | str, *, device: str = "auto", atol: float = 1e-5, rtol: float = 1e-5,
                 batches: tuple[int, ...] = (1, 7), seed: int = 0, sizes: list[tuple[int, int]] | None = None,
                 ort_disabled: tuple[str, ...] = ()):
    """Run every runtime found in an export directory against the original Keras model (see export/parity.py)."""
    from export.artifacts import runners_for
    from export.parity import run_parity, standard_input_sets

    reference, candidates, notes = runners_for(Path(directory), device=device, ort_disabled=ort_disabled)
    input_sets = standard_input_sets(reference.signature.inputs, batches=batches, seed=seed, sizes=sizes)
    return run_parity(reference, candidates, input_sets, atol=atol, rtol=rtol, notes=notes)
